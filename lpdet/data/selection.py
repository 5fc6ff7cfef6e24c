"""The selection split: held-out images on which the design makes its choices; val is only reported.

Resolution, NMS setting, filtering, best epoch and the search's pick are chosen on a *selection*
split. A dataset YAML may give one (``select: {annotations, images}``, see `lpdet.data.spec`);
otherwise `with_selection_split` carves it from train, writing *no images* and touching no user
file::

    out_dir/
      annotations/instances_train.fit.json   # train minus the selection images and their annotations
      annotations/instances_select.json      # the selection images and only their annotations
      selection.json                         # fraction, seed, source, counts and the selected image ids
      data.yaml                              # train: the fit part; select:; val: the ORIGINAL val

Why two COCO files rather than image-id lists the loader filters on: every consumer already
takes a dataset YAML or a `SplitSpec` (`CocoDetection`, the training loop, ``lpdet eval``,
the design's trials and their cache identities, `filter_dataset`), so the split needs no change
in any of them, and the COCO evaluation ground truth of the select split holds exactly its
images by construction. With id lists, every `COCOeval` on the split would have to restrict
``params.imgIds`` as well, and one forgotten call would silently score the wrong images. The
cost is one copy of the train annotations (the YAML points at the original image folder).

Which images: all train image ids ranked by a fixed hash (BLAKE2b of the seed and the id), the
first ``round(fraction * N)`` (at least 1, and at least 1 left to train on). The choice depends
only on the set of ids, the fraction and the seed: not on file order, the machine or Python's
hash seed; and a smaller fraction's selection is part of a larger one's. Both files keep the
source's order of images and annotations; annotations naming no image stay in the fit part, so
its loader counts and reports them exactly as before.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

from lpdet.data.sizes import read_coco_json
from lpdet.data.spec import DatasetSpec, SplitSpec, dataset_yaml_text, load_dataset_yaml
from lpdet.errors import LpdetError
from lpdet.serialize import atomic_write_text

__all__ = [
    "SELECT_FRACTION", "SELECTION_YAML", "SELECTION_REPORT", "check_select_fraction", "select_image_ids",
    "split_coco", "with_selection_split", "selection_yaml",
]

SELECT_FRACTION = 0.10  # the default share of train held out (`--select-fraction`)
SELECTION_YAML = "data.yaml"
SELECTION_REPORT = "selection.json"
FIT_ANNOTATIONS = "annotations/instances_train.fit.json"
SELECT_ANNOTATIONS = "annotations/instances_select.json"


def check_select_fraction(fraction: object) -> float:
    """`fraction` as a float strictly between 0 and 1, or an `LpdetError` naming the option."""
    ok = isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and math.isfinite(fraction)
    if not ok or not 0 < fraction < 1:
        raise LpdetError(f"--select-fraction: must be a number between 0 and 1 (exclusive), got {fraction!r}; "
                         "e.g. 0.1 holds out 10% of the training images for the design's choices")
    return float(fraction)


def _rank(image_id: int, seed: int) -> tuple[int, int]:
    digest = hashlib.blake2b(f"lpdet-select:{seed}:{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little"), image_id


def select_image_ids(image_ids: Iterable[int], fraction: float, seed: int = 0, *, where: str = "train") -> list[int]:
    """The held-out image ids (ascending) for `fraction` of `image_ids`; see the module docstring."""
    fraction = check_select_fraction(fraction)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise LpdetError(f"selection seed: must be an integer, got {seed!r}")
    ids = sorted(set(image_ids))
    if len(ids) < 2:
        raise LpdetError(f"{where}: {len(ids)} image(s) cannot be split into training and selection images; "
                         "add training images, or give the dataset YAML its own 'select:' split")
    n_select = min(max(round(fraction * len(ids)), 1), len(ids) - 1)
    return sorted(sorted(ids, key=lambda i: _rank(i, seed))[:n_select])


def _image_ids(data: dict, where: str) -> list[int]:
    """The integer image ids of a COCO dict, checked as `CocoDetection` checks them."""
    ids: list[int] = []
    seen: set[int] = set()
    for i, im in enumerate(data["images"]):
        image_id = im.get("id") if isinstance(im, dict) else None
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise LpdetError(f"{where}: images[{i}]: needs an integer 'id'; fix the annotation file")
        if image_id in seen:
            raise LpdetError(f"{where}: images[{i}]: duplicate image id {image_id}; fix the annotation file")
        seen.add(image_id)
        ids.append(image_id)
    return ids


def _image_of(annotation) -> object:
    image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
    return image_id if isinstance(image_id, int) and not isinstance(image_id, bool) else None


def split_coco(data: dict, select_ids: Iterable[int]) -> tuple[dict, dict]:
    """(fit, select): copies of COCO dict `data` without / with only the images `select_ids`.

    Each keeps the annotations of its images in file order; annotations naming no image stay in
    the fit part; all other top-level keys (categories, info, licenses, ...) are kept in both.
    """
    chosen = set(select_ids)
    fit_images = [im for im in data["images"] if im["id"] not in chosen]
    select_images = [im for im in data["images"] if im["id"] in chosen]
    fit_anns = [a for a in data["annotations"] if _image_of(a) not in chosen]
    select_anns = [a for a in data["annotations"] if _image_of(a) in chosen]
    return (dict(data, images=fit_images, annotations=fit_anns),
            dict(data, images=select_images, annotations=select_anns))


def _check_out_dir(spec: DatasetSpec, out_dir: Path) -> None:
    """Refuse a folder where writing would replace a user's file."""
    if out_dir.exists() and not out_dir.is_dir():
        raise LpdetError(f"{out_dir}: exists and is not a folder; choose another folder for the selection split")
    inputs = {Path(os.path.abspath(s.annotations)) for s in (spec.train, spec.val) if s is not None}
    for rel in (FIT_ANNOTATIONS, SELECT_ANNOTATIONS, SELECTION_YAML, SELECTION_REPORT):
        if Path(os.path.abspath(out_dir / rel)) in inputs:
            raise LpdetError(f"{out_dir}: the selection split would overwrite the input {out_dir / rel}; "
                             "choose another folder (e.g. inside the run directory)")
    if (out_dir / SELECTION_REPORT).exists():  # written first: the folder is a selection split's
        return
    for rel in (FIT_ANNOTATIONS, SELECT_ANNOTATIONS, SELECTION_YAML):
        if (out_dir / rel).exists():
            raise LpdetError(f"{out_dir / rel} exists and was not written by the selection split; "
                             "choose another folder (e.g. inside the run directory)")


def _write_files(out_dir: Path, texts: dict[str, str]) -> None:
    """Write `texts` (relative path -> content) into `out_dir`: the report first (it marks the folder
    as ours), the dataset YAML last (its presence means a complete folder); nothing is rewritten
    when every file already holds its text."""
    def unchanged(rel: str) -> bool:
        try:
            return (out_dir / rel).read_bytes() == texts[rel].encode("utf-8")
        except OSError:
            return False

    if all(unchanged(rel) for rel in texts):
        return
    (out_dir / SELECTION_YAML).unlink(missing_ok=True)
    for rel in sorted(texts, key=lambda rel: (rel != SELECTION_REPORT, rel == SELECTION_YAML)):
        if rel == SELECTION_YAML or not unchanged(rel):
            atomic_write_text(out_dir / rel, texts[rel])


def with_selection_split(spec: DatasetSpec, out_dir: Path, fraction: float = SELECT_FRACTION,
                         seed: int = 0) -> DatasetSpec:
    """`spec` with a selection split: its own ``select:`` if the YAML gives one (nothing written),
    else one carved from train into `out_dir` (see the module docstring); train becomes the rest.

    Deterministic: the same inputs give byte-identical files, and a repeated call rewrites nothing.
    Raises `LpdetError` for a bad fraction, no train split, fewer than 2 train images, or an
    `out_dir` where a file not written here would be replaced.
    The result's ``root / SELECTION_YAML`` is the dataset YAML to pass on as ``--data``.
    """
    fraction = check_select_fraction(fraction)
    if spec.select is not None:
        return spec
    if spec.train is None:
        raise LpdetError(f"dataset {spec.name!r} has no 'train' split to carve a selection split from; "
                         "add 'train:' or 'select:' to its YAML")
    out_dir = Path(out_dir).expanduser()
    _check_out_dir(spec, out_dir)
    where = str(spec.train.annotations)
    data = read_coco_json(spec.train.annotations)
    chosen = select_image_ids(_image_ids(data, where), fraction, seed, where=where)
    fit, select = split_coco(data, chosen)
    report = {
        "source": {"dataset": spec.name, "annotations": str(Path(os.path.abspath(spec.train.annotations))),
                   "images": str(Path(os.path.abspath(spec.train.images)))},
        "fraction": fraction, "seed": seed,
        "method": "image ids ranked by BLAKE2b(seed, id); the first round(fraction * images) are held out",
        "images": {"fit": len(fit["images"]), "select": len(select["images"])},
        "annotations": {"fit": len(fit["annotations"]), "select": len(select["annotations"])},
        "select_image_ids": chosen,
    }
    splits = {"train": SplitSpec(out_dir / FIT_ANNOTATIONS, spec.train.images),
              "select": SplitSpec(out_dir / SELECT_ANNOTATIONS, spec.train.images), "val": spec.val}
    _write_files(out_dir, {
        FIT_ANNOTATIONS: json.dumps(fit, separators=(",", ":")) + "\n",
        SELECT_ANNOTATIONS: json.dumps(select, separators=(",", ":")) + "\n",
        SELECTION_REPORT: json.dumps(report, indent=2) + "\n",
        SELECTION_YAML: dataset_yaml_text(out_dir / SELECTION_YAML, spec.name, splits),
    })
    return load_dataset_yaml(out_dir / SELECTION_YAML)


def selection_yaml(data_yaml: Path, out_dir: Path, fraction: float = SELECT_FRACTION, seed: int = 0) -> Path:
    """The dataset YAML to train and choose with: `data_yaml` itself when it has ``select:``, else
    the YAML of the split `with_selection_split` writes into `out_dir`."""
    data_yaml = Path(data_yaml)
    spec = load_dataset_yaml(data_yaml)
    result = with_selection_split(spec, out_dir, fraction, seed)
    return data_yaml if result is spec else result.root / SELECTION_YAML
