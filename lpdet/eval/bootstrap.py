"""Is a gain in AP noise? A paired bootstrap over val images of the AP difference of two prediction sets.

Both prediction sets are scored on the same images. pycocotools matches every detection to the
ground truth once per (category, image) (`COCOeval.evaluate`); a resample draws images with
replacement and re-accumulates AP from those stored per-image matches, without matching again.
That is what makes 200 resamples cheap: `accumulate_metric` re-implements pycocotools'
`COCOeval.accumulate` + `summarize` for one metric on any multiset of images, and equals it
exactly on the full set (tested, and on a resample against pycocotools run on the duplicated images).
The same resample of images is applied to both sets (paired), so the interval is that of the
difference, not of two separate APs. It says how much the difference depends on which val images
were drawn; it does not cover the spread between trainings with other seeds.

We write the accumulation by hand because pycocotools has no way to weight or repeat images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lpdet.errors import LpdetError
from lpdet.eval.coco_eval import METRIC_NAMES, evaluate_per_image

# (IoU threshold or None for the 0.50:0.95 mean, area range label): COCOeval.summarize's first six stats.
_METRICS = {"AP": (None, "all"), "AP50": (0.5, "all"), "AP75": (0.75, "all"),
            "AP_small": (None, "small"), "AP_medium": (None, "medium"), "AP_large": (None, "large")}
_MAX_DETS = 100  # COCOeval.summarize's maxDets for every AP figure


@dataclass(frozen=True)
class PredictionSet:
    """COCO result entries and the images they were predicted on (an image without detections still counts)."""

    results: list[dict] = field(repr=False)
    image_ids: list[int]


@dataclass(frozen=True)
class BootstrapInterval:
    """`difference` = metric(b) − metric(a) on all images; [low, high] its paired bootstrap interval;
    `within_noise`: the interval contains 0."""

    metric: str
    difference: float
    low: float
    high: float
    resamples: int
    confidence: float
    within_noise: bool


@dataclass
class _CategoryMatches:
    """One category's detections over all images, image by image (images in sorted-id order)."""

    scores: np.ndarray      # [D] float, each image's detections by descending score (pycocotools' order)
    true_positive: np.ndarray   # [T, D] bool, matched to a counted ground-truth object at each IoU threshold
    false_positive: np.ndarray  # [T, D] bool, unmatched and not ignored (ignored: matched to an ignored
    #                             object, or unmatched and outside the area range)
    offsets: np.ndarray     # [I + 1] int, image i's detections are [offsets[i], offsets[i+1])
    objects: np.ndarray     # [I] int, non-ignored ground-truth objects per image


@dataclass
class ImageMatches:
    """pycocotools' per-image evaluation of one prediction set, kept for re-accumulation."""

    metric: str
    image_ids: list[int]
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    categories: list[_CategoryMatches]
    # (seed, resamples) -> the metric on each of those draws: a baseline compared with several
    # candidates (same seed, so the same draws) is re-accumulated once
    resampled: dict = field(default_factory=dict, repr=False, compare=False)


def per_image_matches(coco_gt, predictions: PredictionSet, metric: str = "AP") -> ImageMatches:
    """Match `predictions` to `coco_gt` once (pycocotools), keeping what `metric` needs per image."""
    if metric not in _METRICS:
        raise LpdetError(f"unknown metric {metric!r} for the bootstrap; choose one of {', '.join(METRIC_NAMES)}")
    image_ids = sorted(set(int(i) for i in predictions.image_ids))
    unknown = set(image_ids) - set(coco_gt.getImgIds())
    if not image_ids or unknown:
        raise LpdetError(f"a prediction set must name images of the ground truth: got {len(image_ids)} image id(s), "
                         f"{len(unknown)} unknown to it (e.g. {sorted(unknown)[:3]}); pass the evaluated val image ids")
    evaluator = evaluate_per_image(coco_gt, predictions.results, image_ids)
    params = evaluator.params
    area = list(params.areaRngLbl).index(_METRICS[metric][1])
    n_images, n_areas = len(params.imgIds), len(params.areaRng)
    n_thresholds = len(params.iouThrs)
    categories = []
    for k in range(len(params.catIds)):
        start = (k * n_areas + area) * n_images
        entries = evaluator.evalImgs[start:start + n_images]
        counts = [0 if e is None else min(len(e["dtScores"]), _MAX_DETS) for e in entries]
        empty = np.zeros((n_thresholds, 0))
        matched = np.concatenate([empty] + [e["dtMatches"][:, :_MAX_DETS] for e in entries if e is not None],
                                 axis=1).astype(bool)
        ignored = np.concatenate([empty] + [e["dtIgnore"][:, :_MAX_DETS] for e in entries if e is not None],
                                 axis=1).astype(bool)
        categories.append(_CategoryMatches(
            scores=np.concatenate([[]] + [e["dtScores"][:_MAX_DETS] for e in entries if e is not None]),
            true_positive=matched & ~ignored, false_positive=~matched & ~ignored,
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            objects=np.array([0 if e is None else int(np.count_nonzero(e["gtIgnore"] == 0)) for e in entries],
                             dtype=np.int64)))
    return ImageMatches(metric=metric, image_ids=list(params.imgIds), iou_thresholds=np.asarray(params.iouThrs),
                        recall_thresholds=np.asarray(params.recThrs), categories=categories)


def _gather(category: _CategoryMatches, images: np.ndarray) -> np.ndarray:
    """Indices of the detections of `images` (a sorted multiset of image indices), image after image."""
    lengths = category.offsets[images + 1] - category.offsets[images]
    total = int(lengths.sum())
    block_starts = np.cumsum(lengths) - lengths
    return np.repeat(category.offsets[images] - block_starts, lengths) + np.arange(total)


def _precision_at_recalls(category: _CategoryMatches, images: np.ndarray, thresholds: np.ndarray,
                          recall_thresholds: np.ndarray) -> np.ndarray | None:
    """Interpolated precision [T, R] of one category over `images`, as COCOeval.accumulate computes it;
    None where the images hold no non-ignored object of it (pycocotools' -1)."""
    objects = int(category.objects[images].sum())
    if objects == 0:
        return None
    index = _gather(category, images)
    index = index[np.argsort(-category.scores[index], kind="mergesort")]  # pycocotools' sort, ties included
    # Integer counts (exact), then the float divisions pycocotools makes, all thresholds at once.
    tp_sum = np.cumsum(category.true_positive[thresholds][:, index], axis=1, dtype=np.int64)
    fp_sum = np.cumsum(category.false_positive[thresholds][:, index], axis=1, dtype=np.int64)
    recall = tp_sum / objects
    curve = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    curve = np.maximum.accumulate(curve[:, ::-1], axis=1)[:, ::-1]  # the precision envelope
    precision = np.zeros((len(thresholds), len(recall_thresholds)))
    n_dets = tp_sum.shape[1]
    for t in range(len(thresholds)):
        at = np.searchsorted(recall[t], recall_thresholds, side="left")
        reached = at < n_dets  # beyond the last recall reached, precision stays 0
        precision[t, reached] = curve[t, at[reached]]
    return precision


def accumulate_metric(matches: ImageMatches, images: np.ndarray | None = None) -> float:
    """`matches.metric` (COCOeval.summarize's value, -1 when no object counts) over `images`, a
    multiset of indices into `matches.image_ids` (default: every image once)."""
    iou, _area = _METRICS[matches.metric]
    images = np.arange(len(matches.image_ids)) if images is None else np.sort(np.asarray(images))
    thresholds = (np.arange(len(matches.iou_thresholds)) if iou is None
                  else np.where(matches.iou_thresholds == iou)[0])
    per_category = [_precision_at_recalls(c, images, thresholds, matches.recall_thresholds)
                    for c in matches.categories]
    # summarize's mean over precision[T, R, K] of the values > -1, in its memory order.
    stacked = np.stack([-np.ones((len(thresholds), len(matches.recall_thresholds))) if p is None else p
                        for p in per_category], axis=-1)
    kept = stacked[stacked > -1]
    return float(np.mean(kept)) if kept.size else -1.0


def paired_bootstrap(coco_gt, a: PredictionSet, b: PredictionSet, *, metric: str = "AP", resamples: int = 200,
                     confidence: float = 0.95, seed: int = 0) -> BootstrapInterval:
    """Paired bootstrap interval of metric(b) − metric(a) over the images both sets were predicted on."""
    if sorted(set(a.image_ids)) != sorted(set(b.image_ids)):
        _refuse_different_images(a.image_ids, b.image_ids)
    for name, predictions in (("first", a), ("second", b)):
        stray = {int(r["image_id"]) for r in predictions.results} - set(predictions.image_ids)
        if stray:
            raise LpdetError(f"the {name} prediction set has detections on {len(stray)} image(s) outside its "
                             f"image_ids (e.g. {sorted(stray)[:3]}); pass every image it was predicted on")
    return bootstrap_difference(per_image_matches(coco_gt, a, metric), per_image_matches(coco_gt, b, metric),
                                resamples=resamples, confidence=confidence, seed=seed)


def _refuse_different_images(ids_a, ids_b) -> None:
    only_a, only_b = set(ids_a) - set(ids_b), set(ids_b) - set(ids_a)
    raise LpdetError(f"a paired bootstrap needs both prediction sets on the same images: {len(only_a)} "
                     f"image(s) only in the first (e.g. {sorted(only_a)[:3]}), {len(only_b)} only in the "
                     f"second (e.g. {sorted(only_b)[:3]}); evaluate both on the same val images")


def bootstrap_difference(a: ImageMatches, b: ImageMatches, *, resamples: int = 200, confidence: float = 0.95,
                         seed: int = 0) -> BootstrapInterval:
    """Percentile bootstrap interval of metric(b) − metric(a): `resamples` draws of the images with
    replacement, the same draw for both sets. Takes matches (`per_image_matches`), so a baseline
    compared with many candidates is matched once. Draws where the metric is undefined (no object of
    that size) are dropped; `resamples` in the result counts those kept."""
    if a.metric != b.metric:
        raise LpdetError(f"cannot compare {a.metric} with {b.metric}; match both prediction sets for one metric")
    if a.image_ids != b.image_ids:
        _refuse_different_images(a.image_ids, b.image_ids)
    if resamples < 1 or not 0.0 < confidence < 1.0:
        raise LpdetError(f"bootstrap needs resamples >= 1 (got {resamples}) and 0 < confidence < 1 (got {confidence})")
    difference = accumulate_metric(b) - accumulate_metric(a)
    differences = [value_b - value_a for value_a, value_b in zip(_resampled(a, seed, resamples),
                                                                 _resampled(b, seed, resamples))
                   if value_a >= 0 and value_b >= 0]
    if not differences:
        raise LpdetError(f"{a.metric} is undefined on these images (no ground-truth object counts for it); "
                         f"bootstrap another metric")
    tail = (1.0 - confidence) / 2
    low, high = (float(q) for q in np.quantile(np.asarray(differences), [tail, 1.0 - tail]))
    return BootstrapInterval(metric=a.metric, difference=float(difference), low=low, high=high,
                             resamples=len(differences), confidence=confidence, within_noise=low <= 0.0 <= high)


def _resampled(matches: ImageMatches, seed: int, resamples: int) -> list[float]:
    """The metric on each of `resamples` draws of the images with replacement (the draws depend only on
    `seed` and the number of images, so two sets on the same images get the same draws); kept on `matches`."""
    key = (seed, resamples)
    if key not in matches.resampled:
        rng = np.random.default_rng(seed)
        n_images = len(matches.image_ids)
        matches.resampled[key] = [accumulate_metric(matches, np.sort(rng.integers(0, n_images, n_images)))
                                  for _ in range(resamples)]
    return matches.resampled[key]


def format_interval(interval: BootstrapInterval, digits: int = 3) -> str:
    """E.g. "+0.012 [−0.004, +0.027], within noise" (or "…, beyond noise" when the interval excludes 0)."""
    def signed(value: float) -> str:
        text = f"{value:+.{digits}f}"
        return "\N{MINUS SIGN}" + text[1:] if text.startswith("-") else text

    verdict = "within noise" if interval.within_noise else "beyond noise"
    return f"{signed(interval.difference)} [{signed(interval.low)}, {signed(interval.high)}], {verdict}"
