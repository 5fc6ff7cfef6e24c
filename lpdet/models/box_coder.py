"""Box offsets relative to anchors (SSD / Faster R-CNN parameterisation).

For a box (x, y, w, h) and anchor (ax, ay, aw, ah), both centre-size and normalised:
    t = ((x - ax) / aw / v0, (y - ay) / ah / v0, log(w / aw) / v1, log(h / ah) / v1)
with variances (v0, v1) = (0.1, 0.2) (the TF API's scale factors 10, 5).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

VARIANCES = (0.1, 0.2)
# Largest log-size offset decode accepts: exp(4.135) ≈ 62.5× the anchor (torchvision's bound),
# so a wild prediction early in training cannot overflow exp() to inf.
MAX_LOG_SCALE = math.log(1000.0 / 16)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def encode(boxes_xyxy: Tensor, anchors_cxcywh: Tensor, variances: tuple[float, float] = VARIANCES) -> Tensor:
    """Offsets `[..., 4]` of `boxes_xyxy` w.r.t. `anchors_cxcywh` (broadcasting). Boxes must
    have positive width and height (log of the size ratio)."""
    box = xyxy_to_cxcywh(boxes_xyxy)
    centre = (box[..., :2] - anchors_cxcywh[..., :2]) / anchors_cxcywh[..., 2:] / variances[0]
    size = torch.log(box[..., 2:] / anchors_cxcywh[..., 2:]) / variances[1]
    return torch.cat([centre, size], dim=-1)


def decode(deltas: Tensor, anchors_cxcywh: Tensor, variances: tuple[float, float] = VARIANCES) -> Tensor:
    """Boxes `[..., 4]` xyxy normalised from offsets (inverse of `encode`); not clipped."""
    centre = deltas[..., :2] * variances[0] * anchors_cxcywh[..., 2:] + anchors_cxcywh[..., :2]
    log_scale = (deltas[..., 2:] * variances[1]).clamp(max=MAX_LOG_SCALE)
    size = torch.exp(log_scale) * anchors_cxcywh[..., 2:]
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)
