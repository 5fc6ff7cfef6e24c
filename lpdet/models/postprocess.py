"""Raw detector outputs → final detections: softmax, decode, threshold, per-class NMS, top-k.

Two steps, so that exported graphs (which end in softmax + box decoding) share the second:
    decode(cls_logits, box_deltas, anchors) -> (scores [B, A, K], boxes [B, A, 4])
    select_detections(scores, boxes, cfg)   -> per-image detections
`postprocess` is the two together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from lpdet.models.box_coder import decode as decode_boxes


@dataclass
class PostprocessConfig:
    score_threshold: float = 0.01  # drop class scores at or below this
    nms_iou: float = 0.6  # suppress same-class boxes overlapping a better one by more than this
    top_k: int = 100  # detections kept per image
    pre_nms_top_k: int = 100  # candidates kept per class before NMS (bounds NMS cost; TF OD API: 100)


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
    """Per image: score threshold, per-class NMS, top-k over `scores [B, A, K]` (probabilities,
    background removed) and `boxes [B, A, 4]` (decoded, normalised xyxy). Returns `boxes [N, 4]`
    clipped to [0, 1], `scores [N]`, `labels [N]` int64 in 1..K, sorted by decreasing score."""
    cfg = cfg or PostprocessConfig()
    scores = scores.float()
    boxes = boxes.float().clamp(0.0, 1.0)
    num_anchors, num_classes = scores.shape[1:]
    candidates = min(cfg.pre_nms_top_k, num_anchors)
    class_labels = torch.arange(1, num_classes + 1, device=scores.device).expand(candidates, num_classes)

    results = []
    for image_scores, image_boxes in zip(scores, boxes):
        # Per class (not overall) so that a frequent class cannot crowd out rare ones.
        top_scores, top_anchors = image_scores.topk(candidates, dim=0)  # [candidates, K]
        keep = top_scores > cfg.score_threshold
        cand_scores, cand_labels = top_scores[keep], class_labels[keep]
        cand_boxes = image_boxes[top_anchors[keep]]
        # Anchors wholly outside the image clip to zero-area boxes: not detections.
        wh = cand_boxes[:, 2:] - cand_boxes[:, :2]
        nonempty = (wh > 0).all(dim=1)
        cand_boxes, cand_scores, cand_labels = cand_boxes[nonempty], cand_scores[nonempty], cand_labels[nonempty]
        kept = batched_nms(cand_boxes, cand_scores, cand_labels, cfg.nms_iou)[: cfg.top_k]
        results.append({"boxes": cand_boxes[kept], "scores": cand_scores[kept], "labels": cand_labels[kept]})
    return results


def postprocess(
    cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor, cfg: PostprocessConfig | None = None
) -> list[dict[str, Tensor]]:
    """Detections per image: `boxes [N, 4]` normalised xyxy clipped to [0, 1], `scores [N]`,
    `labels [N]` int64 in 1..K, sorted by decreasing score."""
    scores, boxes = decode(cls_logits, box_deltas, anchors)
    return select_detections(scores, boxes, cfg)
