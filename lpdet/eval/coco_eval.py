"""COCO evaluation through pycocotools: detections → results JSON → AP, AP50, ... AP_large.

The model side is any `predict(images) -> list[dict(boxes, scores, labels)]` with boxes
normalised xyxy and labels 1..K, so checkpoints and exported models share this path.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lpdet.data.loader import make_loader
from lpdet.models.postprocess import PostprocessConfig, postprocess
from lpdet.progress import progress_bar

# COCOeval.stats[0:6] in order.
METRIC_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")

Predictor = Callable[[torch.Tensor], list[dict]]


@dataclass
class EvalResult:
    metrics: dict[str, float]
    results: list[dict] = field(repr=False)
    num_images: int = 0  # the images scored, unreadable ones (`skipped_images`, all objects missed) included
    # The images scored (an image without detections still counts): what a paired comparison pairs.
    image_ids: list[int] = field(default_factory=list, repr=False)
    skipped_images: int = 0
    seconds: float = 0.0


def detector_predictor(detector: torch.nn.Module, postprocess_config=None) -> Predictor:
    """A predictor that runs a torch detector and its post-processing."""
    config = postprocess_config or PostprocessConfig()
    anchors = detector.anchors

    @torch.no_grad()
    def predict(images: torch.Tensor) -> list[dict]:
        cls_logits, box_deltas = detector(images.to(anchors.device))
        return postprocess(cls_logits, box_deltas, anchors, config)

    return predict


def detections_to_coco(detections: list[dict], targets: list[dict], category_ids: list[int]) -> list[dict]:
    """COCO result entries (original-image pixels, xywh, COCO category ids) for a batch."""
    lookup = np.asarray(category_ids)
    entries = []
    for det, target in zip(detections, targets):
        height, width = target["orig_size"]
        boxes = det["boxes"].detach().cpu().numpy().astype(np.float64) * [width, height, width, height]
        scores = det["scores"].detach().cpu().numpy()
        labels = det["labels"].detach().cpu().numpy()
        for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels):
            entries.append({
                "image_id": int(target["image_id"]),
                "category_id": int(lookup[int(label) - 1]),
                "bbox": [round(float(x1), 2), round(float(y1), 2), round(float(x2 - x1), 2), round(float(y2 - y1), 2)],
                "score": round(float(score), 5),
            })
    return entries


def evaluate_per_image(coco_gt, results: list[dict], image_ids: list[int] | None = None):
    """pycocotools' `COCOeval` after `evaluate()`: the per-image matches in `evalImgs`, not yet accumulated.

    `results` are COCO result entries; they are copied, since `loadRes` writes into them. With no
    results at all every ground-truth object is a miss (pycocotools' `loadRes` cannot load [])."""

    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            coco_dt = coco_gt.loadRes([dict(entry) for entry in results])
        else:
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                               "categories": list(coco_gt.dataset["categories"])}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
    return evaluator


def coco_metrics(coco_gt, results: list[dict], image_ids: list[int] | None = None) -> dict[str, float]:
    """AP figures from pycocotools' COCOeval (its own printout silenced); with no results at all,
    pycocotools' own values too (0, and -1 for a size bucket without ground truth)."""
    evaluator = evaluate_per_image(coco_gt, results, image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(METRIC_NAMES, evaluator.stats[:6])}


def evaluate(predict: Predictor, dataset, *, batch_size: int = 16, workers: int = 0,
             max_images: int = 0, progress: bool = True, desc: str = "eval") -> EvalResult:
    """Run `predict` over `dataset` (a CocoDetection with eval transforms) and score it with pycocotools."""
    start = time.perf_counter()
    subset = dataset
    if max_images and max_images < len(dataset):
        subset = torch.utils.data.Subset(dataset, range(max_images))
    loader = make_loader(subset, batch_size, shuffle=False, seed=0, epoch=0, workers=workers)
    results: list[dict] = []
    skipped = 0
    for images, targets, dropped in progress_bar(loader, enabled=progress, desc=desc, leave=False, unit="batch"):
        skipped += dropped
        if not targets:
            continue
        detections = predict(images)
        results.extend(detections_to_coco(detections, targets, dataset.category_ids))
    # An image that failed to load is scored as an image without detections (its objects missed):
    # leaving it out would raise the AP of a model for images it never saw.
    scored = [int(i) for i in dataset.image_ids[:len(subset)]]
    metrics = coco_metrics(dataset.coco, results, image_ids=scored)
    return EvalResult(metrics=metrics, results=results, num_images=len(scored), image_ids=scored,
                      skipped_images=skipped, seconds=time.perf_counter() - start)


def format_metrics(metrics: dict[str, float]) -> str:
    """One table row per metric; pycocotools' -1 (no ground truth of that size) shows as n/a."""
    lines = []
    for name in METRIC_NAMES:
        value = metrics.get(name, float("nan"))
        lines.append(f"{name:<10} {'n/a' if value < 0 else f'{value:.4f}'}")
    return "\n".join(lines)
