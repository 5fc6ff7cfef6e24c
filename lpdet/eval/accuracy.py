"""Classification accuracy: top-1 and top-5 of a predictor over an ImageFolder split."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lpdet.data.loader import make_loader
from lpdet.progress import progress_bar

TOP_K = (1, 5)


@dataclass
class AccuracyResult:
    metrics: dict[str, float]  # top1, top5 (fractions; top5 is top-K for K < 5 classes: 1.0)
    num_images: int
    skipped_images: int = 0
    seconds: float = 0.0
    predictions: list[int] = field(default_factory=list, repr=False)  # top-1 label per evaluated image, in order


def topk_correct(scores: Tensor, labels: Tensor, k: int) -> Tensor:
    """Per image: whether `labels` is among the `k` highest `scores` ``[B, K]`` (ties: lowest index first)."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return (top == labels.view(-1, 1)).any(dim=1)


def evaluate_accuracy(predict: Callable[[Tensor], Tensor], dataset, *, batch_size: int = 32, workers: int = 0,
                      max_images: int = 0, progress: bool = False, desc: str = "eval") -> AccuracyResult:
    """Top-1 / top-5 of ``predict(images [B, 3, R, R]) -> scores [B, K]`` on `dataset` (items
    ``(image, label)``; unreadable images are skipped and counted); `max_images` > 0: the first N."""
    start = time.perf_counter()
    subset = dataset if not max_images else torch.utils.data.Subset(dataset, range(min(max_images, len(dataset))))
    loader = make_loader(subset, batch_size, shuffle=False, seed=0, epoch=0, workers=workers)
    correct = {k: 0 for k in TOP_K}
    predictions, skipped = [], 0
    for images, labels, dropped in progress_bar(loader, enabled=progress, desc=desc, unit="batch"):
        skipped += dropped
        if not labels:
            continue
        scores = predict(images)
        labels = torch.as_tensor(labels)
        for k in TOP_K:
            correct[k] += int(topk_correct(scores, labels, k).sum())
        predictions += scores.argmax(dim=1).tolist()
    n = len(predictions)
    metrics = {f"top{k}": correct[k] / n if n else 0.0 for k in TOP_K}
    return AccuracyResult(metrics, n, skipped, time.perf_counter() - start, predictions)


def format_accuracy(metrics: dict[str, float]) -> str:
    return "  ".join(f"{name} {value * 100:.2f}%" for name, value in metrics.items())
