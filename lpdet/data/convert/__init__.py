"""`lpdet data convert`: Pascal VOC or YOLO datasets -> COCO JSON + a dataset YAML.

Output (the source is only read; images are referenced where they are unless ``copy_images``)::

    out/
      annotations/instances_{train,val}.json   # COCO; categories 1..K in the source's class order
      convert_report.json                      # classes, counts per split, skips per reason with files
      data.yaml                                # for --data; written last
      images/{train,val}/...                   # only with copy_images

Bad input follows `CocoDetection`: what cannot be used is skipped and counted, with one warning
per reason naming the files (unknown class names, boxes without area or outside the image,
empty or malformed files, missing images); what leaves nothing to convert is an `LpdetError`.
"""

from __future__ import annotations

from pathlib import Path

from lpdet.data.convert.common import SkipLog, check_out_dir, read_class_names, write_converted
from lpdet.data.convert.voc import read_voc
from lpdet.data.convert.yolo import read_yolo
from lpdet.errors import LpdetError

__all__ = ["convert_dataset", "FORMATS"]

FORMATS = {"voc": read_voc, "yolo": read_yolo}


def convert_dataset(fmt: str, src: Path, out: Path, *, classes: Path | None = None, copy_images: bool = False,
                    val_fraction: float | None = None) -> Path:
    """Convert the `fmt` dataset in folder `src` into `out`; return the dataset YAML's path.

    `classes`: a text file of class names, one per line, in label order (needed for YOLO sources
    that do not name their classes; for VOC it fixes the order and drops other names).
    `val_fraction`: the share of images held out as val when the source has no split.
    """
    if fmt not in FORMATS:
        raise LpdetError(f"--from {fmt}: unknown format; use one of {sorted(FORMATS)}")
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if not src.is_dir():
        raise LpdetError(f"{src}: source folder not found; give the dataset's root folder")
    check_out_dir(src, out)
    names = read_class_names(classes) if classes is not None else None
    skips = SkipLog()
    class_names, splits = FORMATS[fmt](src, names, val_fraction, skips)
    return write_converted(fmt, src, out, class_names, splits, skips, copy_images=copy_images)
