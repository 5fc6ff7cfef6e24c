"""Pascal VOC (one XML file per image) -> converted splits.

Layout: ``SRC/Annotations/*.xml`` (or ``annotations/``) and ``SRC/JPEGImages/`` (or ``images/``),
splits from ``SRC/ImageSets/Main/{train,val}.txt``, else ``{trainval,test}.txt``, else carved
with ``--val-fraction``. The image is ``<filename>`` in the images folder, else the XML's stem
with a common image suffix.

Coordinates: VOC's ``xmin ymin xmax ymax`` are 1-based *inclusive* pixel indices (the devkit's
``(1, 1)`` is the top-left pixel), so the box covers the continuous 0-based range
``[xmin - 1, xmax]``: COCO ``x = xmin - 1``, ``w = xmax - xmin + 1`` (likewise y, h). Fractional
values, written by some tools, follow the same rule.

``difficult`` objects become ``iscrowd: 1`` ignore regions: pycocotools' evaluation then neither
rewards nor penalises detections on them (as the VOC evaluation ignores them), and `CocoDetection`
does not train on them (as the VOC references do). ``truncated`` objects are ordinary objects.

Class names: ``--classes FILE`` in its order (objects of other names are counted skips), else the
sorted names found in the split's files (for the 20 VOC classes this is the devkit's order).

Why our own code: the VOC readers of the converter libraries checked (globox's
``BoundingBox.from_xml``, supervision's ``load_pascal_voc_annotations``) take ``xmin`` etc. as
0-based continuous coordinates, which moves every box's left and top edges one pixel in
(one pixel too narrow and too short), and ignore ``difficult`` (supervision also fails on fractional values).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from lpdet.data.coco import UNKNOWN_CATEGORY
from lpdet.data.convert.common import (
    IMAGE_SUFFIXES, ConvertedImage, ConvertedObject, ConvertedSplit, SkipLog, carve_val, open_image, place_box,
)
from lpdet.errors import LpdetError

__all__ = ["read_voc", "voc_box_to_coco"]

MALFORMED_XML = "malformed XML"
MALFORMED_OBJECT = "malformed object"
EMPTY_FILE = "empty file"
MISSING_XML = "missing annotation file"
MISSING_IMAGE = "missing image"


@dataclass
class _VocObject:
    name: str
    corners: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax as written (1-based inclusive)
    difficult: bool


@dataclass
class _VocFile:
    xml: Path
    filename: str | None
    objects: list[_VocObject]


def voc_box_to_coco(xmin: float, ymin: float, xmax: float, ymax: float) -> tuple[float, float, float, float]:
    """1-based inclusive VOC corners -> continuous 0-based corners ``x1, y1, x2, y2``."""
    return xmin - 1.0, ymin - 1.0, float(xmax), float(ymax)


def _folder(src: Path, names: tuple[str, ...], what: str) -> Path:
    for n in names:
        if (src / n).is_dir():
            return src / n
    raise LpdetError(f"{src}: not a Pascal VOC folder: no {' or '.join(n + '/' for n in names)} ({what}); "
                     "point SRC at the folder holding Annotations/ and JPEGImages/ (e.g. VOCdevkit/VOC2007)")


def _read_list(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def _split_stems(src: Path, ann_dir: Path, val_fraction: float | None) -> dict[str, list[str]]:
    main = src / "ImageSets" / "Main"
    for train, val in (("train", "val"), ("trainval", "test")):
        if (main / f"{train}.txt").is_file() and (main / f"{val}.txt").is_file():
            return {"train": _read_list(main / f"{train}.txt"), "val": _read_list(main / f"{val}.txt")}
    stems = sorted(p.stem for p in ann_dir.glob("*.xml"))
    if not stems:
        raise LpdetError(f"{ann_dir}: no .xml annotation files; point SRC at a Pascal VOC folder")
    train, val = carve_val(stems, val_fraction, f"{src} (no ImageSets/Main/{{train,val}}.txt)")
    return {"train": train, "val": val}


def _number(node: ET.Element, tag: str) -> float:
    value = float((node.findtext(tag) or "").strip())
    if not math.isfinite(value):
        raise ValueError(tag)
    return value


def _parse_object(node: ET.Element) -> _VocObject | None:
    name = (node.findtext("name") or "").strip()
    box = node.find("bndbox")
    if not name or box is None:
        return None
    try:
        corners = tuple(_number(box, t) for t in ("xmin", "ymin", "xmax", "ymax"))
        difficult = bool(int(float((node.findtext("difficult") or "0").strip() or 0)))
    except ValueError:
        return None
    return _VocObject(name, corners, difficult)


def _parse_file(xml: Path, skips: SkipLog) -> _VocFile | None:
    if not xml.is_file():
        skips.skip(MISSING_XML, xml)
        return None
    if xml.stat().st_size == 0:
        skips.skip(EMPTY_FILE, xml)
        return None
    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, UnicodeDecodeError):
        root = None
    if root is None or root.tag != "annotation":
        skips.skip(MALFORMED_XML, xml)
        return None
    objects = []
    for node in root.iter("object"):
        obj = _parse_object(node)
        if obj is None:
            skips.skip(MALFORMED_OBJECT, xml)
        else:
            objects.append(obj)
    filename = (root.findtext("filename") or "").strip() or None
    return _VocFile(xml, filename, objects)


def _find_image(images: Path, f: _VocFile) -> Path | None:
    # <filename> is a bare name in VOC; tools sometimes write a path (taken by its last part)
    name = Path(f.filename.replace("\\", "/")).name if f.filename else ""
    if name and (images / name).is_file():
        return images / name
    for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
        if (images / (f.xml.stem + suffix)).is_file():
            return images / (f.xml.stem + suffix)
    return None


def _convert_file(f: _VocFile, images: Path, label_of: dict[str, int], skips: SkipLog) -> ConvertedImage | None:
    path = _find_image(images, f)
    if path is None:
        skips.skip(MISSING_IMAGE, f.xml)
        return None
    image = open_image(path, images, skips)
    if image is None:
        return None
    size = (image.width, image.height)
    for obj in f.objects:
        if obj.name not in label_of:
            skips.skip(UNKNOWN_CATEGORY, f.xml)
            continue
        box = place_box(*voc_box_to_coco(*obj.corners), size)
        if isinstance(box, str):
            skips.skip(box, f.xml)
            continue
        image.objects.append(ConvertedObject(label_of[obj.name], box, ignore=obj.difficult))
        skips.note("difficult objects (iscrowd: 1)", int(obj.difficult))
    return image


def read_voc(src: Path, classes: list[str] | None, val_fraction: float | None,
             skips: SkipLog) -> tuple[list[str], dict[str, ConvertedSplit]]:
    """Class names and the train/val splits of the VOC folder `src` (see the module docstring)."""
    ann_dir = _folder(src, ("Annotations", "annotations"), "the .xml files")
    images = _folder(src, ("JPEGImages", "images"), "the images")
    parsed = {split: [f for stem in stems if (f := _parse_file(ann_dir / f"{stem}.xml", skips)) is not None]
              for split, stems in _split_stems(src, ann_dir, val_fraction).items()}
    if classes is None:
        classes = sorted({o.name for files in parsed.values() for f in files for o in f.objects})
        if not classes:
            raise LpdetError(f"{ann_dir}: no usable <object> in the annotation files; check the files or pass --classes")
    label_of = {n: i for i, n in enumerate(classes)}
    splits = {}
    for split, files in parsed.items():
        converted = [_convert_file(f, images, label_of, skips) for f in files]
        splits[split] = ConvertedSplit(images, [c for c in converted if c is not None])
    return classes, splits
