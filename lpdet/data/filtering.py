"""Dataset filtering: drop the training images that contain objects of some size buckets.

The seed paper (section 11.3.6) found that training a low-resolution detector without the
images that contain small objects improved AP: objects too small to be detected at the
network's input resolution mostly teach the model noise. `filter_dataset` writes such a
filtered copy of one split *without copying images*::

    out_dir/
      annotations/instances_train.filtered.json   # the split minus the dropped images and their annotations
      filter_report.json                          # before/after counts
      data.yaml                                   # filtered split + the ORIGINAL other splits (val, select unchanged)

The YAML points at the original image folders (paths relative to the YAML, absolute when no
relative path exists, e.g. another drive on Windows). Object sizes follow `lpdet.data.sizes`
(COCO ``area``, half-open buckets); only non-crowd objects make an image dropped, and
everything else in the file (categories, info, licenses, other keys) is kept unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from lpdet.data.sizes import BUCKETS, SizeThresholds, compute_stats, object_area, read_coco_json, size_bucket
from lpdet.data.spec import SPLIT_KEYS, DatasetSpec, SplitSpec, write_dataset_yaml
from lpdet.errors import LpdetError
from lpdet.serialize import atomic_write_text, to_dict

__all__ = ["filter_dataset", "filter_coco", "FILTERED_YAML", "FILTER_REPORT"]

FILTERED_YAML = "data.yaml"
FILTER_REPORT = "filter_report.json"
SPLITS = ("train", "val")


def _buckets(drop_images_with: Sequence[str] | str) -> list[str]:
    if isinstance(drop_images_with, str):
        drop_images_with = [drop_images_with]
    drop = [str(b) for b in drop_images_with]
    unknown = sorted(set(drop) - set(BUCKETS))
    if unknown:
        raise LpdetError(f"drop_images_with: unknown size bucket(s) {unknown}; valid: {list(BUCKETS)}")
    return [b for b in BUCKETS if b in drop]  # canonical order, no duplicates


def _ann_key(a: dict):
    i = a.get("id")
    return (0, i, "") if isinstance(i, int) and not isinstance(i, bool) else (1, 0, str(i))


def filter_coco(data: dict, drop: Sequence[str], thresholds: SizeThresholds = SizeThresholds(),
                where: str = "annotations") -> dict:
    """A copy of COCO dict `data` without the images holding a non-crowd object in a `drop` bucket.

    An annotation is removed exactly when its image is; images are sorted by id, annotations by
    id (integers before other ids); all other top-level keys are kept as they are.
    """
    drop = set(_buckets(drop))
    dropped: set = set()
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            raise LpdetError(f"{where}: annotations[{i}]: expected an object, got {type(a).__name__}; "
                             "fix the annotation file")
        if a.get("iscrowd", 0):
            continue
        area = object_area(a)
        if area is not None and size_bucket(area, thresholds) in drop:
            try:
                dropped.add(a.get("image_id"))
            except TypeError:  # unhashable image id: belongs to no image
                pass
    images = []
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) or isinstance(im.get("id"), bool):
            raise LpdetError(f"{where}: images[{i}]: needs an integer 'id'; fix the annotation file")
        if im["id"] not in dropped:
            images.append(im)
    images.sort(key=lambda im: im["id"])

    def kept(a: dict) -> bool:
        try:
            return a.get("image_id") not in dropped
        except TypeError:
            return True

    anns = sorted((a for a in data["annotations"] if kept(a)), key=_ann_key)
    return dict(data, images=images, annotations=anns)


def _counts(stats) -> dict:
    return {"images": stats.images, "images_without_objects": stats.images_without_objects,
            "objects": dict(stats.objects), "images_with": dict(stats.images_with), "crowd": stats.crowd}


def filter_dataset(spec: DatasetSpec, out_dir: Path, *, drop_images_with: Sequence[str] = ("small",),
                   thresholds: SizeThresholds = SizeThresholds(), split: str = "train") -> Path:
    """Write a copy of `spec` whose `split` lacks the images with objects in `drop_images_with`.

    Returns the new dataset YAML (``out_dir/data.yaml``); the other split is the original one,
    unchanged. See the module docstring for the layout. Raises `LpdetError` for an unknown bucket
    name, a missing split, or a filter that would remove every image.
    """
    drop = _buckets(drop_images_with)
    if split not in SPLITS:
        raise LpdetError(f"split: unknown split {split!r}; valid: {list(SPLITS)}")
    src = getattr(spec, split)
    if src is None:
        raise LpdetError(f"dataset {spec.name!r} has no '{split}' split to filter; add '{split}:' to its YAML")
    out_dir = Path(out_dir).expanduser()
    yaml_path = out_dir / FILTERED_YAML
    ann_path = out_dir / "annotations" / f"instances_{split}.filtered.json"
    inputs = {Path(os.path.abspath(s.annotations)) for s in (spec.train, spec.val, spec.select) if s is not None}
    if Path(os.path.abspath(ann_path)) in inputs:
        raise LpdetError(f"{out_dir}: the filtered file would overwrite the input {ann_path}; "
                         "choose another output folder")
    if yaml_path.exists() and not (out_dir / FILTER_REPORT).exists():
        raise LpdetError(f"{yaml_path} exists and was not written by a dataset filter; choose another output folder")

    data = read_coco_json(src.annotations)
    where = str(src.annotations)
    filtered = filter_coco(data, drop, thresholds, where=where)
    before = compute_stats(data, thresholds, where=where)
    after = compute_stats(filtered, thresholds, where=where)
    if not filtered["images"]:
        n = len(data["images"])
        why = f"all {n} images contain {'/'.join(drop)} objects" if n else "it has no images"
        raise LpdetError(f"{src.annotations}: filtering would leave no {split} images ({why}); "
                         "drop fewer size buckets or lower the size thresholds")

    other = "val" if split == "train" else "train"
    name = f"{spec.name}-no-{'-'.join(drop)}" if drop else f"{spec.name}-filtered"
    splits = {key: getattr(spec, key) for key in SPLIT_KEYS if getattr(spec, key) is not None}
    splits[split] = SplitSpec(annotations=ann_path, images=src.images)  # a held-out select split is kept as is
    report = {
        "source": {"dataset": spec.name, "split": split, "annotations": str(Path(os.path.abspath(src.annotations))),
                   "images": str(Path(os.path.abspath(src.images)))},
        "drop_images_with": drop,
        "thresholds": to_dict(thresholds),
        "area": "COCO 'area' field when present, else bbox w*h; buckets half-open (exactly small is medium)",
        "removed_images": before.images - after.images,
        "removed_annotations": len(data["annotations"]) - len(filtered["annotations"]),
        "before": _counts(before),
        "after": _counts(after),
        "unchanged_split": other if getattr(spec, other) is not None else None,
    }
    # the YAML last: its presence means the folder is complete
    atomic_write_text(ann_path, json.dumps(filtered, separators=(",", ":")) + "\n")
    atomic_write_text(out_dir / FILTER_REPORT, json.dumps(report, indent=2) + "\n")
    return write_dataset_yaml(yaml_path, name, splits)
