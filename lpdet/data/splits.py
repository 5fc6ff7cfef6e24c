"""A dataset split ready for a model: `eval_split` (val, select or train, eval transforms at the model's
resolution, its categories checked against the model's) and `calibration_split` (the images
post-training quantization calibrates on)."""

from __future__ import annotations

from pathlib import Path

from lpdet.data.classification import ImageFolderDataset, is_classification_data, resolve_classification_data
from lpdet.data.coco import CocoDetection
from lpdet.data.spec import DatasetSpec, SplitSpec, resolve_dataset
from lpdet.data.transforms import eval_transforms
from lpdet.errors import LpdetError


def split_of(data: str | Path, split: str = "val") -> tuple[DatasetSpec, SplitSpec]:
    """The dataset `data` names (``--data``) and its `split` ("val", "select" or "train"); LpdetError if absent."""
    spec = resolve_dataset(str(data))
    chosen = spec.val if split == "val" else spec.select if split == "select" else spec.train
    if chosen is None:
        raise LpdetError(f"--data {data}: has no {split}: split")
    return spec, chosen


def eval_split(data: str | Path, resolution: int, category_ids: list[int] | None = None, *, split: str = "val",
               where: str = "the model") -> CocoDetection:
    """`split` of `data` at `resolution` (eval transforms); checks that its categories are those
    `where` (the model) was trained on, when `category_ids` are given."""
    _, chosen = split_of(data, split)
    dataset = CocoDetection(chosen.annotations, chosen.images, transform=eval_transforms(resolution))
    if category_ids is not None and dataset.category_ids != list(category_ids):
        raise LpdetError(f"{chosen.annotations}: its categories differ from those {where} was trained on; "
                         f"use a dataset with the same categories")
    return dataset


def calibration_split(data: str | Path, resolution: int) -> CocoDetection:
    """The images calibration draws from: the train split (the val split when there is none),
    with eval transforms at `resolution`; for a classification dataset (`synth-cls`, `task:
    classification`) an `ImageFolderDataset`."""
    if is_classification_data(str(data)):
        spec = resolve_classification_data(str(data))
        return ImageFolderDataset(spec.train or spec.val, eval_transforms(resolution))
    spec = resolve_dataset(str(data))
    split = spec.train or spec.val
    return CocoDetection(split.annotations, split.images, transform=eval_transforms(resolution))
