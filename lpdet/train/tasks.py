"""What a training run needs to know about its task, behind one small interface (`TrainTask`):
its data, its loss and its validation metric. The loop (`lpdet.train.loop`) is the same for
detectors (COCO data, multibox loss, COCO AP) and classifiers (ImageFolder data, cross-entropy,
top-1 / top-5), and so are QAT, checkpoints, resume and the logs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lpdet.data.classification import ImageFolderDataset, is_classification_data, resolve_classification_data
from lpdet.data.coco import CocoDetection
from lpdet.data.spec import resolve_dataset
from lpdet.data.transforms import eval_transforms, train_transforms
from lpdet.errors import LpdetError
from lpdet.eval.accuracy import evaluate_accuracy
from lpdet.eval.coco_eval import detector_predictor, evaluate
from lpdet.models.config import ModelConfig
from lpdet.models.loss import multibox_loss
from lpdet.models.registry import is_classifier
from lpdet.train.config import TrainConfig


@dataclass(frozen=True)
class TrainTask:
    name: str
    loss_fields: tuple[str, ...]  # the losses `loss` returns, the total ("loss") first
    val_fields: tuple[str, ...]  # the metrics `validate` returns
    selection_metric: str  # the metric `best/` is chosen by (higher is better)
    datasets: Callable[[TrainConfig], tuple]  # (train set, val set); each has class_names, category_ids, num_classes
    # (model outputs, targets, model, cfg, count_everywhere) -> losses; count_everywhere sums a count
    # (the loss's normaliser) over the ranks of a data-parallel run (identity for one process), so the
    # loss of a rank's share is its part of the global batch's loss
    loss: Callable[[object, list, nn.Module, TrainConfig, Callable[[Tensor], Tensor]], dict[str, Tensor]]
    # (model, val set, cfg, before_batch, progress, desc) -> (metrics, seconds); before_batch() runs before each batch
    validate: Callable[..., tuple[dict[str, float], float]]


def task_for(model: ModelConfig) -> TrainTask:
    return CLASSIFICATION if is_classifier(model) else DETECTION


# ----------------------------------------------------------------------------- detection
def _detection_datasets(cfg: TrainConfig) -> tuple[CocoDetection, CocoDetection]:
    spec = resolve_dataset(cfg.data)
    if spec.train is None:
        raise LpdetError(f"--data {cfg.data}: the dataset has no train: split; add one to the dataset YAML")
    train_set = CocoDetection(spec.train.annotations, spec.train.images,
                              transform=train_transforms(cfg.model.resolution, cfg.augment), seed=cfg.seed)
    val_set = CocoDetection(spec.val.annotations, spec.val.images, transform=eval_transforms(cfg.model.resolution))
    if train_set.category_ids != val_set.category_ids:
        raise LpdetError(f"{spec.val.annotations}: its categories differ from the train split's; "
                         f"both splits must list the same categories")
    return train_set, val_set


def _detection_loss(outputs, targets: list[dict], model: nn.Module, cfg: TrainConfig,
                    count_everywhere: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
    cls_logits, box_deltas = outputs
    norm_targets = [{"boxes": t["boxes"] / cfg.model.resolution, "labels": t["labels"]} for t in targets]
    # The loss (softmax, hard-negative mining, smooth L1) stays in fp32; divided by the global batch's positives.
    return multibox_loss(cls_logits.float(), box_deltas.float(), norm_targets, model.anchors,
                         count_positives=count_everywhere)


def _detection_validate(model, val_set, cfg: TrainConfig, before_batch, progress: bool, desc: str):
    predictor = detector_predictor(model)

    def predict(images):
        before_batch()
        return predictor(images)

    result = evaluate(predict, val_set, batch_size=16, workers=cfg.workers, max_images=cfg.max_val_images,
                      progress=progress, desc=desc)
    return result.metrics, result.seconds


DETECTION = TrainTask(
    name="detection", loss_fields=("loss", "cls_loss", "box_loss"),
    val_fields=("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"), selection_metric="AP",
    datasets=_detection_datasets, loss=_detection_loss, validate=_detection_validate)


# ----------------------------------------------------------------------------- classification
def _classification_datasets(cfg: TrainConfig) -> tuple[ImageFolderDataset, ImageFolderDataset]:
    if not is_classification_data(cfg.data):
        raise LpdetError(f"--data {cfg.data}: not a classification dataset; a classifier trains on 'synth-cls' or "
                         f"a dataset YAML with 'task: classification' (README: Classification)")
    spec = resolve_classification_data(cfg.data)
    if spec.train is None:
        raise LpdetError(f"--data {cfg.data}: the dataset has no train: folder; add one to the dataset YAML")
    train_set = ImageFolderDataset(spec.train, train_transforms(cfg.model.resolution, cfg.augment), seed=cfg.seed)
    val_set = ImageFolderDataset(spec.val, eval_transforms(cfg.model.resolution), class_names=train_set.class_names)
    return train_set, val_set


def _classification_loss(logits: Tensor, labels: list[int], model: nn.Module, cfg: TrainConfig,
                         count_everywhere: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
    """Cross-entropy, the mean over the global batch: this share's sum over the images of every rank's share."""
    summed = F.cross_entropy(logits.float(), torch.as_tensor(labels, device=logits.device), reduction="sum")
    images = count_everywhere(torch.tensor(len(labels), device=logits.device))
    return {"loss": summed / images.clamp(min=1).to(summed.dtype)}


def _classification_validate(model, val_set, cfg: TrainConfig, before_batch, progress: bool, desc: str):
    device = next(model.parameters()).device

    @torch.no_grad()
    def predict(images: Tensor) -> Tensor:
        before_batch()
        return model(images.to(device)).float().cpu()

    result = evaluate_accuracy(predict, val_set, batch_size=64, workers=cfg.workers, max_images=cfg.max_val_images,
                               progress=progress, desc=desc)
    return result.metrics, result.seconds


CLASSIFICATION = TrainTask(
    name="classification", loss_fields=("loss",), val_fields=("top1", "top5"), selection_metric="top1",
    datasets=_classification_datasets, loss=_classification_loss, validate=_classification_validate)
