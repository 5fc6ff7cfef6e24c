"""YOLO (one ``.txt`` per image: ``class cx cy w h`` normalised to the image size) -> converted splits.

Layouts, tried in this order:

- a dataset YAML in SRC (``data.yaml``, or the only ``*.yaml``) whose ``train:`` / ``val:`` name
  image folders (relative to its ``path:``, the YAML's folder or SRC, else the longest tail of the
  path that exists under SRC, as in exports written from another folder: ``../train/images``);
- ``SRC/images/{train,val}`` with ``SRC/labels/{train,val}``;
- ``SRC/{train,valid}/images`` with ``SRC/{train,valid}/labels`` (``val``/``test`` also accepted);
- ``SRC/images`` + ``SRC/labels`` without splits, carved with ``--val-fraction``.

An image's label file is its path with the last ``images`` folder replaced by ``labels`` and the
suffix by ``.txt`` (the Ultralytics rule), else the ``.txt`` beside the image. Class names:
``--classes FILE``, else the YAML's ``names:`` (list or ``{index: name}``), else ``classes.txt``
or ``obj.names`` in SRC. An image without a label file, or with an empty one, is a background
image (the YOLO convention) and is kept; a label file without an image is a counted skip.

A line ``c cx cy w h`` is the box ``x = (cx - w/2) * W`` etc. in continuous pixels of the image
as displayed (size from the file header, EXIF orientation applied); a segment line
``c x1 y1 x2 y2 ...`` becomes its bounding box. Why our own code: a few lines per format,
and the libraries checked (see `lpdet.data.convert.voc`) do not do the counted skips we need.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from lpdet.data.coco import UNKNOWN_CATEGORY
from lpdet.data.convert.common import (
    IMAGE_SUFFIXES, ConvertedImage, ConvertedObject, ConvertedSplit, SkipLog, carve_val, check_class_names,
    open_image, place_box, read_class_names,
)
from lpdet.data.spec import find_yaml
from lpdet.errors import LpdetError

__all__ = ["read_yolo", "yolo_box_to_corners"]

MALFORMED_LINE = "malformed line"
LABEL_WITHOUT_IMAGE = "label file without image"
UNREADABLE_LABEL = "unreadable label file"
_VAL_NAMES = ("val", "valid", "validation", "test")


def yolo_box_to_corners(cx: float, cy: float, w: float, h: float, size: tuple[int, int]) -> tuple[float, ...]:
    """Normalised centre box -> continuous pixel corners ``x1, y1, x2, y2`` of an image of `size` (w, h)."""
    iw, ih = size
    return (cx - w / 2) * iw, (cy - h / 2) * ih, (cx + w / 2) * iw, (cy + h / 2) * ih


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise LpdetError(f"{path}: cannot read this dataset YAML ({str(e).splitlines()[0]}); fix it") from None
    if not isinstance(data, dict):
        raise LpdetError(f"{path}: expected a mapping (train:, val:, names:); fix the file")
    return data


def _names_from_yaml(path: Path, names) -> list[str]:
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise LpdetError(f"{path}: 'names' keys must be the class indexes 0..{len(names) - 1}; fix the file")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list):
        raise LpdetError(f"{path}: 'names' must be a list of class names or {{index: name}}; fix the file")
    return check_class_names(names, f"{path}: 'names'")


def _class_names(src: Path, classes: list[str] | None, meta: dict, meta_path: Path | None) -> list[str]:
    if classes is not None:
        return classes
    if meta_path is not None and meta.get("names") is not None:
        return _names_from_yaml(meta_path, meta["names"])
    for name in ("classes.txt", "obj.names"):
        if (src / name).is_file():
            return read_class_names(src / name, option="class names file")
    raise LpdetError(f"{src}: no class names (no 'names:' in a dataset YAML, no classes.txt or obj.names); "
                     "pass --classes FILE with one class name per line, in class-index order")


def _yaml_split_dir(src: Path, meta: dict, meta_path: Path, value) -> Path | None:
    if not isinstance(value, str) or not value.strip():
        return None
    if value.endswith(".txt"):
        raise LpdetError(f"{meta_path}: image lists ({value}) are not supported; point train:/val: at image folders")
    bases = [meta_path.parent, src]
    if isinstance(meta.get("path"), str) and meta["path"]:
        bases.insert(0, meta_path.parent / meta["path"])
    rel = Path(value)
    # then ever shorter tails of the path under SRC: exports often write paths relative to another
    # working folder ("../train/images", "./project/data/train/images")
    tails = [src / Path(*rel.parts[k:]) for k in range(1, len(rel.parts))]
    for candidate in [b / rel for b in bases] + tails:
        if candidate.is_dir():
            return candidate
    raise LpdetError(f"{meta_path}: image folder {value!r} not found (looked in {', '.join(str(b) for b in bases)}); "
                     "fix the path in the YAML")


def _split_dirs(src: Path, meta: dict, meta_path: Path | None) -> dict[str, Path] | None:
    """train/val image folders, or None when the source has one unsplit images/ folder."""
    if meta_path is not None:
        train = _yaml_split_dir(src, meta, meta_path, meta.get("train"))
        val = next((d for k in _VAL_NAMES if (d := _yaml_split_dir(src, meta, meta_path, meta.get(k))) is not None), None)
        if train is not None and val is not None:
            return {"train": train, "val": val}
    for pattern in ("images/{}", "{}/images"):
        train = src / pattern.format("train")
        val = next((src / pattern.format(k) for k in _VAL_NAMES if (src / pattern.format(k)).is_dir()), None)
        if train.is_dir() and val is not None:
            return {"train": train, "val": val}
    if (src / "images").is_dir():
        return None
    raise LpdetError(f"{src}: not a YOLO dataset folder: no images/{{train,val}}, {{train,valid}}/images or images/ "
                     "(nor a data.yaml naming them); point SRC at the dataset's root folder")


def _label_path(image: Path) -> Path:
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _parse_line(fields: list[str], n_classes: int) -> tuple[int, tuple[float, float, float, float]] | str:
    """(class index, normalised cx, cy, w, h) of a label line, or why it is skipped."""
    if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
        return MALFORMED_LINE
    try:
        values = [float(v) for v in fields[1:]]
        cls = int(fields[0])
    except ValueError:
        return MALFORMED_LINE
    if not all(math.isfinite(v) for v in values):
        return MALFORMED_LINE
    if not 0 <= cls < n_classes:
        return UNKNOWN_CATEGORY
    if len(values) > 4:  # a segment: its bounding box
        xs, ys = values[0::2], values[1::2]
        x1, x2, y1, y2 = min(xs), max(xs), min(ys), max(ys)
        return cls, ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
    return cls, tuple(values)


def _convert_image(path: Path, root: Path, n_classes: int, skips: SkipLog) -> ConvertedImage | None:
    image = open_image(path, root, skips)
    if image is None:
        return None
    size = (image.width, image.height)
    label = _label_path(path)
    if not label.is_file():
        skips.note("images without a label file (kept as background)")
        return image
    try:
        lines = [line.split() for line in label.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        skips.skip(UNREADABLE_LABEL, label)
        return None
    if not lines:
        skips.note("empty label files (kept as background)")
    for fields in lines:
        parsed = _parse_line(fields, n_classes)
        box = parsed if isinstance(parsed, str) else place_box(*yolo_box_to_corners(*parsed[1], size), size)
        if isinstance(box, str):
            skips.skip(box, label)
            continue
        image.objects.append(ConvertedObject(parsed[0], box))
    return image


def _orphan_labels(images_dirs: list[Path], images: set[Path], skips: SkipLog) -> None:
    expected = {_label_path(p) for p in images}
    for d in images_dirs:
        labels = _label_path(d / "x.jpg").parent
        for txt in sorted(labels.rglob("*.txt")) if labels.is_dir() else []:
            if txt not in expected and txt.name not in ("classes.txt", "obj.names"):
                skips.skip(LABEL_WITHOUT_IMAGE, txt)


def read_yolo(src: Path, classes: list[str] | None, val_fraction: float | None,
              skips: SkipLog) -> tuple[list[str], dict[str, ConvertedSplit]]:
    """Class names and the train/val splits of the YOLO folder `src` (see the module docstring)."""
    meta_path = find_yaml(src)
    meta = _read_yaml(meta_path) if meta_path is not None else {}
    class_names = _class_names(src, classes, meta, meta_path)
    dirs = _split_dirs(src, meta, meta_path)
    if dirs is None:  # one images/ folder: carve val by the fixed hash of the file names
        root = src / "images"
        names = [p.relative_to(root).as_posix() for p in _images_under(root)]
        train, val = carve_val(names, val_fraction, f"{src} (images/ without train/val folders)")
        listed = {"train": (root, [root / n for n in train]), "val": (root, [root / n for n in val])}
    else:
        listed = {split: (d, _images_under(d)) for split, d in dirs.items()}
    _orphan_labels(sorted({root for root, _ in listed.values()}), {p for _, ps in listed.values() for p in ps}, skips)
    splits = {}
    for split, (root, paths) in listed.items():
        converted = [_convert_image(p, root, len(class_names), skips) for p in paths]
        splits[split] = ConvertedSplit(root, [c for c in converted if c is not None])
    return class_names, splits
