"""Anchor matching and the SSD multibox loss (smooth-L1 + softmax CE with hard negatives).

Everything is batched over images: targets are padded to the batch's largest box count, so
one step costs a few small tensor ops regardless of the batch size.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lpdet.models.box_coder import cxcywh_to_xyxy, encode

# Fills padded target slots: a well-formed box (its IoU is masked out), never a zero-size one.
_PAD_BOX = (0.0, 0.0, 1.0, 1.0)


def batched_box_iou(boxes: Tensor, anchors_xyxy: Tensor) -> Tensor:
    """IoU `[B, A, N]` between `anchors_xyxy [A, 4]` and each image's `boxes [B, N, 4]` (xyxy)."""
    a = anchors_xyxy[None, :, None, :]  # [1, A, 1, 4]
    b = boxes[:, None, :, :]  # [B, 1, N, 4]
    top_left = torch.maximum(a[..., :2], b[..., :2])
    bottom_right = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter).clamp(min=1e-12)


def _match_batched(iou: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """Matched GT index `[B, A]` (-1 = background) from IoU `[B, A, N]` and `valid [B, N]`."""
    batch, num_anchors, num_boxes = iou.shape
    iou = iou.masked_fill(~valid[:, None, :], -1.0)
    best_iou, best_box = iou.max(dim=2)  # per anchor
    matched = torch.where(best_iou >= iou_threshold, best_box, torch.full_like(best_box, -1))
    # Force each GT onto its best anchor so no object goes unmatched (small or odd-shaped
    # ones often reach no anchor at 0.5). Padded or zero-IoU GTs write to a dummy column A.
    best_anchor_iou, best_anchor = iou.max(dim=1)  # per GT: [B, N]
    forced = valid & (best_anchor_iou > 0)
    best_anchor = torch.where(forced, best_anchor, torch.full_like(best_anchor, num_anchors))
    matched = torch.cat([matched, matched.new_full((batch, 1), -1)], dim=1)
    box_index = torch.arange(num_boxes, device=iou.device).expand(batch, num_boxes)
    matched.scatter_(1, best_anchor, box_index)
    return matched[:, :num_anchors]


def match_anchors(gt_boxes: Tensor, anchors: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """GT index per anchor `[A]` (-1 = background) for one image.

    `gt_boxes [N, 4]` normalised xyxy, `anchors [A, 4]` cx, cy, w, h. An anchor is matched
    to the GT it overlaps most if IoU >= `iou_threshold`; each GT is also forced onto its
    best anchor (if several GTs want the same anchor, one of them gets it).
    """
    anchors_xyxy = cxcywh_to_xyxy(anchors)
    if gt_boxes.shape[0] == 0:
        return torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
    iou = batched_box_iou(gt_boxes[None], anchors_xyxy)
    valid = torch.ones(1, gt_boxes.shape[0], dtype=torch.bool, device=anchors.device)
    return _match_batched(iou, valid, iou_threshold)[0]


def _pad_targets(targets: list[dict], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Stack targets into `boxes [B, N, 4]`, `labels [B, N]`, `valid [B, N]` (N >= 1)."""
    max_boxes = max([1] + [t["boxes"].shape[0] for t in targets])
    boxes = torch.tensor(_PAD_BOX, device=device).repeat(len(targets), max_boxes, 1)
    labels = torch.zeros(len(targets), max_boxes, dtype=torch.long, device=device)
    valid = torch.zeros(len(targets), max_boxes, dtype=torch.bool, device=device)
    for i, t in enumerate(targets):
        n = t["boxes"].shape[0]
        boxes[i, :n] = t["boxes"].to(device=device, dtype=boxes.dtype)
        labels[i, :n] = t["labels"].to(device)
        valid[i, :n] = True
    return boxes, labels, valid


def _hard_negatives(ce: Tensor, positive: Tensor, neg_pos_ratio: int) -> Tensor:
    """Mask `[B, A]` of the highest-loss background anchors, `neg_pos_ratio` per positive.

    An image without positives still contributes `neg_pos_ratio` negatives, so images with
    no objects teach the model to stay quiet.
    """
    num_pos = positive.sum(dim=1, keepdim=True)
    num_neg = (neg_pos_ratio * num_pos.clamp(min=1)).clamp(max=positive.shape[1] - num_pos)
    background_loss = ce.detach().masked_fill(positive, float("-inf"))
    order = background_loss.argsort(dim=1, descending=True)
    rank = order.argsort(dim=1)
    return rank < num_neg


def multibox_loss(
    cls_logits: Tensor,
    box_deltas: Tensor,
    targets: list[dict],
    anchors: Tensor,
    iou_threshold: float = 0.5,
    neg_pos_ratio: int = 3,
    count_positives: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """SSD loss for `cls_logits [B, A, K+1]`, `box_deltas [B, A, 4]`.

    `targets[i]` = {"boxes": [N, 4] normalised xyxy, "labels": [N] in 1..K}. Smooth-L1 on the
    positives' offsets plus softmax cross-entropy on positives and hard negatives, both summed
    and divided by the batch's number of positives (at least 1). Returns loss, cls_loss, box_loss.
    `count_positives`: data-parallel training's sum of that number over the processes sharing the batch.
    """
    batch, num_anchors, num_classes = cls_logits.shape
    device = cls_logits.device
    gt_boxes, gt_labels, valid = _pad_targets(targets, device)
    anchors = anchors.to(device=device, dtype=torch.float32)
    with torch.no_grad():
        iou = batched_box_iou(gt_boxes, cxcywh_to_xyxy(anchors))
        matched = _match_batched(iou, valid, iou_threshold)
        positive = matched >= 0
        box_index = matched.clamp(min=0)
        labels = torch.where(positive, torch.gather(gt_labels, 1, box_index), 0)
        matched_boxes = torch.gather(gt_boxes, 1, box_index[..., None].expand(-1, -1, 4))
        target_deltas = encode(matched_boxes[positive], anchors.expand(batch, -1, -1)[positive])

    num_pos = positive.sum() if count_positives is None else count_positives(positive.sum())
    normaliser = num_pos.clamp(min=1).to(cls_logits.dtype)
    box_loss = F.smooth_l1_loss(box_deltas[positive].float(), target_deltas, beta=1.0, reduction="sum")
    ce = F.cross_entropy(cls_logits.reshape(-1, num_classes).float(), labels.reshape(-1), reduction="none")
    ce = ce.reshape(batch, num_anchors)
    selected = positive | _hard_negatives(ce, positive, neg_pos_ratio)
    cls_loss = (ce * selected).sum()
    cls_loss, box_loss = cls_loss / normaliser, box_loss / normaliser
    return {"loss": cls_loss + box_loss, "cls_loss": cls_loss, "box_loss": box_loss}
