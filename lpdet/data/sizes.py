"""COCO object-size buckets (small / medium / large) and per-dataset size statistics.

Area of an object
    The annotation's ``area`` field when it is a finite number ``>= 0``, else the bbox ``w * h``.
    This is what pycocotools' ``COCOeval`` uses for its small/medium/large split: the ground
    truth's ``area`` (the *segmentation* area for COCO itself, usually smaller than the box),
    not the box. Annotations with neither a usable ``area`` nor a usable ``bbox`` cannot be
    bucketed and are counted in `DatasetStats.skipped`.

Buckets (half-open, every area in exactly one bucket)
    ``small: area < 32²``, ``medium: 32² <= area < 96²``, ``large: area >= 96²``.
    pycocotools' ranges are closed on both sides (``areaRng = [0, 32²], [32², 96²],
    [96², 1e10]``, an object being ignored when ``area < lo or area > hi``), so an area of
    *exactly* 32² (or 96²) counts in both adjacent ranges there. We follow the usual half-open
    reading of the COCO definition: exactly 32² is medium, exactly 96² is large.

Crowd regions (``iscrowd`` true) are counted separately (`DatasetStats.crowd`), never in a
bucket: they are not training targets and COCOeval only uses them to ignore detections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from lpdet.data.coco import CocoDetection
from lpdet.errors import LpdetError
from lpdet.serialize import is_number

__all__ = [
    "BUCKETS", "SizeThresholds", "size_bucket", "object_area", "DatasetStats", "compute_stats",
    "dataset_stats", "format_stats", "read_coco_json",
]

BUCKETS: tuple[str, ...] = ("small", "medium", "large")


@dataclass
class SizeThresholds:
    """Area thresholds (pixels²): ``small`` < `small` <= ``medium`` < `large` <= ``large``."""

    small: float = 32**2
    large: float = 96**2

    def __post_init__(self) -> None:
        for name in ("small", "large"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise LpdetError(f"size thresholds: '{name}' must be a finite area >= 0, got {v!r}")
        if self.small > self.large:
            raise LpdetError(f"size thresholds: small ({self.small}) must not exceed large ({self.large})")

    def describe(self) -> str:
        return (f"small: area < {self.small:g}, medium: {self.small:g} <= area < {self.large:g}, "
                f"large: area >= {self.large:g}")


def size_bucket(area: float, t: SizeThresholds = SizeThresholds()) -> str:
    """``"small"`` | ``"medium"`` | ``"large"`` for an object area (see the module docstring)."""
    if area < t.small:
        return "small"
    if area < t.large:
        return "medium"
    return "large"


def object_area(ann: dict) -> float | None:
    """The area COCOeval buckets an annotation by: ``area`` if usable, else bbox ``w*h``; None if neither."""
    a = ann.get("area")
    if is_number(a) and a >= 0:
        return float(a)
    bbox = ann.get("bbox")
    if isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(is_number(v) for v in bbox):
        w, h = float(bbox[2]), float(bbox[3])
        if w >= 0 and h >= 0:
            return w * h
    return None


def _zero() -> dict[str, int]:
    return {b: 0 for b in BUCKETS}


@dataclass
class DatasetStats:
    """Object-size statistics of one COCO annotation file (non-crowd objects only in buckets)."""

    images: int
    images_without_objects: int  # images with no bucketed (non-crowd) object
    objects: dict[str, int]  # bucket -> non-crowd objects
    images_with: dict[str, int]  # bucket -> images with >= 1 non-crowd object of that bucket
    per_class: dict[str, dict[str, int]]  # class name -> bucket -> count (categories in id order)
    crowd: int  # crowd regions (not in any bucket)
    skipped: int = 0  # annotations not counted: no usable area/bbox, unknown image or category
    thresholds: SizeThresholds = field(default_factory=SizeThresholds)

    @property
    def total_objects(self) -> int:
        return sum(self.objects.values())


def read_coco_json(path: Path) -> dict:
    """A COCO detection file as a dict (top level checked); `LpdetError` if missing or malformed."""
    return CocoDetection._read_json(Path(path))  # its checks: missing file, bad JSON, top-level keys


def _class_names(data: dict, where: str) -> dict[int, str]:
    cats: dict[int, str] = {}
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or isinstance(c.get("id"), bool):
            raise LpdetError(f"{where}: categories[{i}]: needs an integer 'id'; fix the annotation file")
        cats[c["id"]] = str(c.get("name", f"class{c['id']}"))
    names = list(cats.values())
    # duplicate names would merge classes in `per_class`: disambiguate with the id
    return {cid: (f"{n} (id {cid})" if names.count(n) > 1 else n) for cid, n in sorted(cats.items())}


def compute_stats(data: dict, t: SizeThresholds = SizeThresholds(), where: str = "annotations") -> DatasetStats:
    """`DatasetStats` of an already-loaded COCO dict (`where` names it in error messages)."""
    names = _class_names(data, where)
    per_class = {n: _zero() for n in names.values()}
    image_ids = set()
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im:
            raise LpdetError(f"{where}: images[{i}]: needs an 'id'; fix the annotation file")
        image_ids.add(im["id"])
    objects, crowd, skipped = _zero(), 0, 0
    buckets_of: dict = {}  # image id -> set of buckets present
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            raise LpdetError(f"{where}: annotations[{i}]: expected an object, got {type(a).__name__}; "
                             "fix the annotation file")
        if a.get("iscrowd", 0):
            crowd += 1
            continue
        area = object_area(a)
        cid = a.get("category_id")
        name = names.get(cid) if isinstance(cid, int) and not isinstance(cid, bool) else None
        img = a.get("image_id")
        try:
            known_image = img in image_ids
        except TypeError:  # unhashable id
            known_image = False
        if area is None or name is None or not known_image:
            skipped += 1
            continue
        b = size_bucket(area, t)
        objects[b] += 1
        per_class[name][b] += 1
        buckets_of.setdefault(img, set()).add(b)
    images_with = {b: sum(b in s for s in buckets_of.values()) for b in BUCKETS}
    return DatasetStats(images=len(image_ids), images_without_objects=len(image_ids) - len(buckets_of),
                        objects=objects, images_with=images_with, per_class=per_class, crowd=crowd,
                        skipped=skipped, thresholds=t)


def dataset_stats(annotations_path: Path, t: SizeThresholds = SizeThresholds()) -> DatasetStats:
    """Object-size statistics of a COCO annotation file (see the module docstring for the rules)."""
    path = Path(annotations_path)
    return compute_stats(read_coco_json(path), t, where=str(path))


def _pct(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f}%" if total else "—"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths)))
    return [fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]


def format_stats(s: DatasetStats) -> str:
    """A readable plain-text report: objects and images per bucket (with %), then per class."""
    n_obj = s.total_objects
    lines = [f"images: {s.images} ({s.images_without_objects} without objects)   objects: {n_obj}   "
             f"crowd regions: {s.crowd} (not in buckets)"
             + (f"   not counted: {s.skipped} (no area/bbox, unknown image or category)" if s.skipped else ""),
             f"buckets by COCO area ({s.thresholds.describe()})", ""]
    rows = [[b, s.objects[b], _pct(s.objects[b], n_obj), s.images_with[b], _pct(s.images_with[b], s.images)]
            for b in BUCKETS]
    rows.append(["total", n_obj, _pct(n_obj, n_obj), s.images - s.images_without_objects,
                 _pct(s.images - s.images_without_objects, s.images)])
    lines += _table(["bucket", "objects", "% objects", "images with", "% images"], rows)
    if s.per_class:
        lines += ["", "per class:"]
        rows = []
        for name, c in s.per_class.items():
            tot = sum(c.values())
            rows.append([name, *(c[b] for b in BUCKETS), tot, _pct(c["small"], tot)])
        lines += _table(["class", *BUCKETS, "total", "% small"], rows)
    return "\n".join(lines)
