"""Raw detector outputs → final detections: softmax, decode, threshold, NMS (per class or class-agnostic), top-k.

Two steps, so that exported graphs (which end in softmax + box decoding) share the second:
    decode(cls_logits, box_deltas, anchors) -> (scores [B, A, K], boxes [B, A, 4])
    select_detections(scores, boxes, cfg)   -> per-image detections
`postprocess` is the two together.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    [0, 1], `scores [N]`, `labels [N]` int64 in 1..K, sorted by decreasing score.

    Per class (default): each class's `pre_nms_top_k` best anchors, those above the threshold
    whose clipped box is not empty, NMS within each class, the `top_k` best overall.
    `class_agnostic`: each anchor's best class only, NMS across classes (TF Lite's fast NMS).
    Equal scores are ordered by label, then anchor index (class-agnostic: by anchor index): a
    deterministic rule, which the ONNX graph of `lpdet.deploy.nms_graph` follows too."""
    cfg = cfg or PostprocessConfig()
    scores = scores.float()
    boxes = boxes.float().clamp(0.0, 1.0)
    select = _select_class_agnostic if cfg.class_agnostic else _select_per_class
    return [select(image_scores, image_boxes, cfg) for image_scores, image_boxes in zip(scores, boxes)]


def _select_per_class(scores: Tensor, boxes: Tensor, cfg: PostprocessConfig) -> dict[str, Tensor]:
    """One image, `scores [A, K]`, `boxes [A, 4]` clipped. Only the (class, anchor) pairs that are
    candidates are gathered and sorted: a trained detector has a few hundred among A * K."""
    passing = scores > cfg.score_threshold
    most = int(passing.sum(dim=0).max()) if passing.numel() else 0  # candidates of the busiest class
    if most > cfg.pre_nms_top_k:
        passing &= _top_per_class(scores, cfg.pre_nms_top_k)
    passing &= _nonempty(boxes)[:, None]  # after the top-k cut, as an empty box takes its place there
    # Pairs in (class, anchor) order; a stable sort by score then gives (score desc, class, anchor).
    label, anchor = passing.t().nonzero().unbind(1)
    cand_scores, order = scores[anchor, label].sort(descending=True, stable=True)
    return _nms_top_k(boxes[anchor[order]], cand_scores, label[order] + 1, cfg, per_class=True)


def _top_per_class(scores: Tensor, count: int) -> Tensor:
    """Mask `[A, K]` of each class's `count` best anchors, equal scores taken by lower anchor index
    (`topk` alone leaves ties at the cut-off unordered)."""
    if count <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    cutoff = scores.topk(min(count, len(scores)), dim=0).values[-1]  # each class's count-th best score
    above = scores > cutoff
    at_cutoff = scores == cutoff
    room = count - above.sum(dim=0)  # places left for anchors scoring exactly the cut-off
    return above | (at_cutoff & (at_cutoff.cumsum(dim=0) <= room))


def _select_class_agnostic(scores: Tensor, boxes: Tensor, cfg: PostprocessConfig) -> dict[str, Tensor]:
    """One image: each anchor's best class (the lowest label on a tie), NMS across classes."""
    best, label = scores.max(dim=1)
    anchor = ((best > cfg.score_threshold) & _nonempty(boxes)).nonzero().squeeze(1)
    cand_scores, order = best[anchor].sort(descending=True, stable=True)
    anchor = anchor[order]
    return _nms_top_k(boxes[anchor], cand_scores, label[anchor] + 1, cfg, per_class=False)


def _nonempty(boxes: Tensor) -> Tensor:
    """Boxes `[A, 4]` (clipped) of positive width and height: an anchor wholly outside the image
    clips to a zero-area box, which is no detection."""
    return (boxes[:, 2:] - boxes[:, :2] > 0).all(dim=1)


def _nms_top_k(cand_boxes: Tensor, cand_scores: Tensor, labels: Tensor, cfg: PostprocessConfig,
               per_class: bool) -> dict[str, Tensor]:
    """Greedy NMS over (non-empty) candidates already sorted by decreasing score, stopping at `top_k` kept.

    Greedy NMS decides each box from the better boxes alone, so NMS over the best M candidates
    keeps exactly the full run's boxes among them: once that gives `top_k`, the rest cannot
    matter. Starting at 4 * top_k candidates and growing saves most of the NMS on busy images."""
    # Per class: boxes of label k shifted by 2k, so boxes of different classes never overlap.
    nms_boxes = cand_boxes + (labels.to(cand_boxes) * 2.0)[:, None] if per_class else cand_boxes
    count = len(cand_scores)
    prefix = min(count, 4 * cfg.top_k)
    while True:
        kept = nms(nms_boxes[:prefix], cand_scores[:prefix], cfg.nms_iou)
        if len(kept) >= cfg.top_k or prefix == count:
            break
        prefix = min(count, 4 * prefix)
    kept = kept[: cfg.top_k]
    return {"boxes": cand_boxes[kept], "scores": cand_scores[kept], "labels": labels[kept]}


def postprocess(
    cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor, cfg: PostprocessConfig | None = None
) -> list[dict[str, Tensor]]:
    """Detections per image: `boxes [N, 4]` normalised xyxy clipped to [0, 1], `scores [N]`,
    `labels [N]` int64 in 1..K, sorted by decreasing score."""
    scores, boxes = decode(cls_logits, box_deltas, anchors)
    return select_detections(scores, boxes, cfg)
