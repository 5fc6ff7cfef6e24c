"""Raw detector outputs → final detections: softmax, decode, threshold, NMS (per class or class-agnostic), top-k.

Two steps, so that exported graphs (which end in softmax + box decoding) share the second:
    decode(cls_logits, box_deltas, anchors) -> (scores [B, A, K], boxes [B, A, 4])
    select_detections(scores, boxes, cfg)   -> per-image detections
`postprocess` is the two together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import nms

from lpdet.models.box_coder import decode as decode_boxes


@dataclass
class PostprocessConfig:
    score_threshold: float = 0.01  # drop class scores at or below this
    nms_iou: float = 0.6  # suppress same-class boxes overlapping a better one by more than this
    top_k: int = 100  # detections kept per image
    pre_nms_top_k: int = 100  # candidates kept per class before NMS (bounds NMS cost; TF OD API: 100)
    # NMS across classes on each anchor's best class only (TF Lite's default "fast NMS"): cheaper,
    # and one box per object, but two objects of different classes on one spot suppress each other.
    # `pre_nms_top_k` does not apply (its NMS stops at `top_k` kept boxes).
    class_agnostic: bool = False


def postprocess_from_metadata(meta: dict) -> PostprocessConfig:
    """The settings an exported model carries in its metadata (``"postprocess"``; written by
    `lpdet design` for the model it picks), else the defaults. Unknown keys are ignored."""
    saved = meta.get("postprocess") if isinstance(meta, dict) else None
    if not isinstance(saved, dict):
        return PostprocessConfig()
    defaults = PostprocessConfig()
    known = {k: v for k, v in saved.items() if k in PostprocessConfig.__dataclass_fields__}
    return PostprocessConfig(**{k: type(getattr(defaults, k))(v) for k, v in known.items()})


def decode(cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
    """Class probabilities without background `[B, A, K]` and boxes normalised xyxy clipped
    to [0, 1] `[B, A, 4]` from the raw head outputs (what an exported graph outputs)."""
    scores = torch.softmax(cls_logits.float(), dim=-1)[..., 1:]  # background dropped
    boxes = decode_boxes(box_deltas.float(), anchors.to(box_deltas.device)).clamp(0.0, 1.0)
    return scores, boxes


def select_detections(scores: Tensor, boxes: Tensor, cfg: PostprocessConfig | None = None) -> list[dict[str, Tensor]]:
    """Per image: score threshold, NMS, top-k over `scores [B, A, K]` (probabilities, background
    removed) and `boxes [B, A, 4]` (decoded, normalised xyxy). Returns `boxes [N, 4]` clipped to
    [0, 1], `scores [N]`, `labels [N]` int64 in 1..K, sorted by decreasing score, on the inputs' device.

    Per class (default): each class's `pre_nms_top_k` best anchors, those above the threshold
    whose clipped box is not empty, NMS within each class, the `top_k` best overall.
    `class_agnostic`: each anchor's best class only, NMS across classes (TF Lite's fast NMS).
    Equal scores are ordered by label, then anchor index (class-agnostic: by anchor index): a
    deterministic rule, which the ONNX graph of `lpdet.deploy.nms_graph` follows too.

    The candidates are gathered in NumPy and only NMS runs in torchvision: on a [1917, 10] score
    map each torch op costs 5-150 us of dispatch and strided access (torch's `topk` along anchors
    alone took a third of the time), NumPy's partition and masks a few; this halved the per-image
    post-processing of the synthetic base (benchmarks/postprocess.py)."""
    cfg = cfg or PostprocessConfig()
    device = scores.device
    scores_np, boxes_np = scores.detach().float().cpu().numpy(), boxes.detach().float().cpu().numpy()
    select = _select_class_agnostic if cfg.class_agnostic else _select_per_class
    out = [select(image_scores, image_boxes, cfg) for image_scores, image_boxes in zip(scores_np, boxes_np)]
    return out if device.type == "cpu" else [{k: v.to(device) for k, v in d.items()} for d in out]


def _select_per_class(scores: np.ndarray, boxes: np.ndarray, cfg: PostprocessConfig) -> dict[str, Tensor]:
    """One image, `scores [A, K]`, `boxes [A, 4]` (not yet clipped). Only the (class, anchor) pairs
    that are candidates are gathered and sorted: a trained detector has a few hundred among A * K.
    Worked on as `[K, A]`, so that every per-class step runs along contiguous memory."""
    by_class = np.ascontiguousarray(scores.T)
    passing = by_class > cfg.score_threshold
    if passing.size and int(passing.sum(axis=1).max()) > cfg.pre_nms_top_k:  # the busiest class has too many
        passing &= _top_per_class(by_class, cfg.pre_nms_top_k)
    # Pairs in (class, anchor) order; a stable sort by score then gives (score desc, class, anchor).
    label, anchor = np.nonzero(passing)
    cand_boxes = np.clip(boxes[anchor], 0.0, 1.0)
    keep = _nonempty(cand_boxes)  # after the top-k cut, as an empty box takes its place there
    label, anchor, cand_boxes = label[keep], anchor[keep], cand_boxes[keep]
    cand_scores = by_class[label, anchor]
    order = np.argsort(-cand_scores, kind="stable")
    return _nms_top_k(cand_boxes[order], cand_scores[order], label[order] + 1, cfg, per_class=True)


def _top_per_class(by_class: np.ndarray, count: int) -> np.ndarray:
    """Mask `[K, A]` of each class's `count` best anchors, equal scores taken by lower anchor index
    (a partition alone leaves ties at the cut-off unordered)."""
    anchors = by_class.shape[1]
    if count <= 0:
        return np.zeros(by_class.shape, dtype=bool)
    count = min(count, anchors)
    cutoff = np.partition(by_class, anchors - count, axis=1)[:, anchors - count, None]  # each class's count-th best
    above = by_class > cutoff
    at_cutoff = by_class == cutoff
    room = count - above.sum(axis=1, keepdims=True)  # places left for anchors scoring exactly the cut-off
    if (at_cutoff.sum(axis=1, keepdims=True) <= room).all():  # no tie straddles the cut-off (the usual case)
        return above | at_cutoff
    return above | (at_cutoff & (np.cumsum(at_cutoff, axis=1) <= room))


def _select_class_agnostic(scores: np.ndarray, boxes: np.ndarray, cfg: PostprocessConfig) -> dict[str, Tensor]:
    """One image: each anchor's best class (the lowest label on a tie), NMS across classes."""
    label = scores.argmax(axis=1)  # first maximum: the lowest label
    best = scores[np.arange(len(scores)), label]
    anchor = np.flatnonzero(best > cfg.score_threshold)
    cand_boxes = np.clip(boxes[anchor], 0.0, 1.0)
    keep = _nonempty(cand_boxes)
    anchor, cand_boxes = anchor[keep], cand_boxes[keep]
    order = np.argsort(-best[anchor], kind="stable")
    anchor = anchor[order]
    return _nms_top_k(cand_boxes[order], best[anchor], label[anchor] + 1, cfg, per_class=False)


def _nonempty(boxes: np.ndarray) -> np.ndarray:
    """Boxes `[N, 4]` (clipped) of positive width and height: an anchor wholly outside the image
    clips to a zero-area box, which is no detection."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def _nms_top_k(cand_boxes: np.ndarray, cand_scores: np.ndarray, labels: np.ndarray, cfg: PostprocessConfig,
               per_class: bool) -> dict[str, Tensor]:
    """Greedy NMS over (non-empty) candidates already sorted by decreasing score, stopping at `top_k` kept.

    Greedy NMS decides each box from the better boxes alone, so NMS over the best M candidates
    keeps exactly the full run's boxes among them: once that gives `top_k`, the rest cannot
    matter. NMS costs O(M^2), so it starts at 3 * top_k candidates (on the synthetic base, 300
    always left 100 boxes, at 0.6x the time of 400) and doubles while too few are kept."""
    # Per class: boxes of label k shifted by 2k, so boxes of different classes never overlap.
    shifted = cand_boxes + (2.0 * labels).astype(cand_boxes.dtype)[:, None] if per_class else cand_boxes
    nms_boxes, scores_t = torch.from_numpy(np.ascontiguousarray(shifted)), torch.from_numpy(cand_scores)
    count = len(cand_scores)
    prefix = min(count, 3 * cfg.top_k)
    while True:
        kept = nms(nms_boxes[:prefix], scores_t[:prefix], cfg.nms_iou)
        if len(kept) >= cfg.top_k or prefix == count:
            break
        prefix = min(count, 2 * prefix)
    kept = kept[: cfg.top_k].numpy()
    return {"boxes": torch.from_numpy(np.ascontiguousarray(cand_boxes[kept])),
            "scores": torch.from_numpy(cand_scores[kept]), "labels": torch.from_numpy(labels[kept].astype(np.int64))}


def postprocess(
    cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor, cfg: PostprocessConfig | None = None
) -> list[dict[str, Tensor]]:
    """Detections per image: `boxes [N, 4]` normalised xyxy clipped to [0, 1], `scores [N]`,
    `labels [N]` int64 in 1..K, sorted by decreasing score."""
    scores, boxes = decode(cls_logits, box_deltas, anchors)
    return select_detections(scores, boxes, cfg)
