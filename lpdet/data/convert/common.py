"""What the VOC and YOLO readers share: records, counted skips, image sizes, class lists, writing.

A reader turns its source into `ConvertedSplit`s of `ConvertedImage`s whose boxes are COCO
``x, y, w, h`` in 0-based continuous pixels of the image as displayed (EXIF orientation
applied, as `lpdet.data.images.load_rgb_image` returns it), already clipped by
`lpdet.data.coco.clip_to_image`, the loader's own rule. `write_converted` writes them.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image

from lpdet.data.coco import clip_to_image
from lpdet.data.selection import select_image_ids
from lpdet.data.spec import SplitSpec, write_dataset_yaml
from lpdet.errors import LpdetError
from lpdet.serialize import atomic_write_text

__all__ = ["ConvertedObject", "ConvertedImage", "ConvertedSplit", "SkipLog", "image_size", "read_class_names",
           "place_box", "carve_val", "open_image", "check_out_dir", "write_converted", "IMAGE_SUFFIXES", "REPORT", "DATA_YAML"]

log = logging.getLogger("lpdet.data")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
REPORT = "convert_report.json"
DATA_YAML = "data.yaml"
_TOOL = "lpdet data convert"
_EXIF_ORIENTATION = 0x0112
UNREADABLE_IMAGE = "unreadable image"
_FILES_NAMED = 5  # files named per reason in a warning (the report lists up to 50)


@dataclass
class ConvertedObject:
    category: int  # index into the class names (0-based); COCO category id = category + 1
    box: tuple[float, float, float, float]  # COCO x, y, w, h in pixels, clipped to the image
    ignore: bool = False  # written as iscrowd: 1 (an evaluation ignore region, not a training target)


@dataclass
class ConvertedImage:
    path: Path  # the source image file
    file_name: str  # relative to the split's image folder (POSIX separators)
    width: int
    height: int
    objects: list[ConvertedObject] = field(default_factory=list)


@dataclass
class ConvertedSplit:
    images_root: Path  # the folder `file_name`s are relative to
    images: list[ConvertedImage] = field(default_factory=list)


class SkipLog:
    """Counts of what was skipped (or noted) per reason, with the files it happened in."""

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.files: dict[str, list[str]] = collections.defaultdict(list)
        self.notes: collections.Counter = collections.Counter()  # kept, but worth knowing (clipped, ...)

    def skip(self, reason: str, file: Path, n: int = 1) -> None:
        self.counts[reason] += n
        if str(file) not in self.files[reason][-1:]:
            self.files[reason].append(str(file))

    def note(self, what: str, n: int = 1) -> None:
        if n:
            self.notes[what] += n

    def log(self, src: Path) -> None:
        """One warning per skip reason naming the first files, one info line for the notes."""
        for reason, n in sorted(self.counts.items()):
            files = self.files[reason]
            named = ", ".join(Path(f).name for f in files[:_FILES_NAMED])
            more = f" (+{len(files) - _FILES_NAMED} more files)" if len(files) > _FILES_NAMED else ""
            log.warning("%s: %d skipped (%s) in %d file(s): %s%s; see %s", src, n, reason, len(files), named, more, REPORT)
        if self.notes:
            log.info("%s: %s", src, ", ".join(f"{k}: {v}" for k, v in sorted(self.notes.items())))

    def to_dict(self) -> dict:
        return {"skipped": {r: {"count": n, "files": self.files[r][:50]} for r, n in sorted(self.counts.items())},
                "notes": dict(sorted(self.notes.items()))}


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of the image as displayed, from the file header only (no decoding).

    Raises OSError / PIL errors for a missing or unreadable file."""
    with PIL.Image.open(path) as im:
        w, h = im.size
        try:
            rotated = im.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8)
        except Exception:  # a malformed EXIF block: load_rgb_image keeps the stored orientation too
            rotated = False
    return (h, w) if rotated else (w, h)


def open_image(path: Path, images_root: Path, skips: SkipLog) -> ConvertedImage | None:
    """A `ConvertedImage` without objects for image file `path`, or None (a counted skip) when its
    header cannot be read."""
    try:
        size = image_size(path)
    except Exception:  # PIL raises many types for unreadable headers
        skips.skip(UNREADABLE_IMAGE, path)
        return None
    return ConvertedImage(path, path.relative_to(images_root).as_posix(), *size)


def read_class_names(path: Path, option: str = "--classes") -> list[str]:
    """Class names from a text file, one per line (blank lines and surrounding spaces ignored)."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except FileNotFoundError:
        raise LpdetError(f"{option} {path}: file not found; give a text file with one class name per line") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LpdetError(f"{option} {path}: cannot read it ({e}); give a UTF-8 text file, one class name per line") from None
    return check_class_names([n for n in names if n], f"{option} {path}")


def check_class_names(names: list, where: str) -> list[str]:
    if not names:
        raise LpdetError(f"{where}: no class names; list one class name per line")
    dupes = sorted({str(n) for n in names if names.count(n) > 1})
    if dupes:
        raise LpdetError(f"{where}: duplicate class name(s) {dupes}; each class must appear once")
    return [str(n) for n in names]


def place_box(x1: float, y1: float, x2: float, y2: float, size: tuple[int, int]) -> tuple | str:
    """Continuous pixel corners -> clipped COCO ``x, y, w, h``, or the skip reason (`clip_to_image`)."""
    box = clip_to_image(x1, y1, x2 - x1, y2 - y1, size)
    if isinstance(box, str):
        return box
    cx1, cy1, cx2, cy2 = box
    return cx1, cy1, cx2 - cx1, cy2 - cy1


def carve_val(names: list[str], fraction: float | None, where: str) -> tuple[list[str], list[str]]:
    """(train, val) parts of a sorted list of names: val is the `fraction` picked by the fixed hash of
    `lpdet.data.selection` (the same images for the same names, on any machine)."""
    if fraction is None:
        raise LpdetError(f"{where}: the source has no train/val split; pass --val-fraction F (e.g. 0.2) to hold "
                         "out a fixed, hash-chosen share of the images for validation")
    if not 0 < fraction < 1:
        raise LpdetError(f"--val-fraction {fraction}: must be between 0 and 1 (exclusive)")
    if len(names) < 2:
        raise LpdetError(f"{where}: {len(names)} annotated image(s); need at least 2 to split into train and val")
    picked = {i - 1 for i in select_image_ids(range(1, len(names) + 1), fraction, where=where)}
    return ([n for i, n in enumerate(names) if i not in picked], [n for i, n in enumerate(names) if i in picked])


def _inside(path: Path, folder: Path) -> bool:
    path, folder = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return path == folder or folder in path.parents


def check_out_dir(src: Path, out: Path) -> None:
    """--out must be outside SRC, and new, empty or an earlier output of this converter."""
    if _inside(out, src) or _inside(src, out):
        raise LpdetError(f"--out {out}: overlaps the source {src}; the source is never written to, "
                         "choose an output folder outside it")
    if out.exists() and not out.is_dir():
        raise LpdetError(f"--out {out}: is a file; name a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        try:
            mine = json.loads((out / REPORT).read_text()).get("tool") == _TOOL
        except (OSError, ValueError, AttributeError):
            mine = False
        if not mine:
            raise LpdetError(f"--out {out}: folder is not empty and was not written by '{_TOOL}'; "
                             "choose a new or empty folder")


def _coco_dict(split: ConvertedSplit, class_names: list[str], description: str) -> dict:
    images, annotations = [], []
    for image_id, im in enumerate(split.images, start=1):
        images.append({"id": image_id, "file_name": im.file_name, "width": im.width, "height": im.height})
        for obj in im.objects:
            x, y, w, h = (round(float(v), 4) for v in obj.box)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": obj.category + 1,
                                "bbox": [x, y, w, h], "area": round(w * h, 4), "iscrowd": int(obj.ignore),
                                "segmentation": []})
    return {"info": {"description": description}, "images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]}


def _copy_images(split: ConvertedSplit, dest: Path) -> ConvertedSplit:
    for im in split.images:
        target = dest / im.file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(im.path, target)
    return ConvertedSplit(images_root=dest, images=split.images)


def write_converted(fmt: str, src: Path, out: Path, class_names: list[str], splits: dict[str, ConvertedSplit],
                    skips: SkipLog, copy_images: bool = False) -> Path:
    """Write ``annotations/instances_{split}.json``, `REPORT` and `DATA_YAML` (last) under `out`."""
    for name, split in splits.items():
        if not split.images:
            raise LpdetError(f"{src}: no usable image in the {name} split ({_summary(skips)}); check the source "
                             "against the layout in 'lpdet data convert --help'")
    out.mkdir(parents=True, exist_ok=True)
    (out / DATA_YAML).unlink(missing_ok=True)  # an interrupted re-run must not look complete
    specs = {}
    for name, split in splits.items():
        if copy_images:
            split = _copy_images(split, out / "images" / name)
        ann = out / "annotations" / f"instances_{name}.json"
        data = _coco_dict(split, class_names, f"converted by {_TOOL} from {fmt}: {src}")
        atomic_write_text(ann, json.dumps(data, separators=(",", ":")) + "\n")
        specs[name] = SplitSpec(annotations=ann, images=split.images_root)
    report = {"tool": _TOOL, "format": fmt, "source": str(Path(os.path.abspath(src))), "copied_images": copy_images,
              "classes": class_names,
              "splits": {n: {"images": len(s.images), "objects": sum(len(i.objects) for i in s.images),
                             "ignore_regions": sum(o.ignore for i in s.images for o in i.objects)}
                         for n, s in splits.items()},
              **skips.to_dict()}
    atomic_write_text(out / REPORT, json.dumps(report, indent=2) + "\n")
    skips.log(src)
    return write_dataset_yaml(out / DATA_YAML, Path(os.path.abspath(src)).name, specs)


def _summary(skips: SkipLog) -> str:
    return ", ".join(f"{r}: {n}" for r, n in sorted(skips.counts.items())) or "nothing found"
