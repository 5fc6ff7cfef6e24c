import math

import pytest
import torch

from lpdet.models.box_coder import cxcywh_to_xyxy, decode, encode


def test_hand_computed_encode():
    anchor = torch.tensor([[0.5, 0.5, 0.2, 0.4]])  # cx, cy, w, h
    box = torch.tensor([[0.42, 0.34, 0.62, 0.74]])  # cx 0.52, cy 0.54, w 0.2, h 0.4 → same size
    deltas = encode(box, anchor)
    # dx = (0.52 - 0.5) / 0.2 / 0.1 = 1.0; dy = (0.54 - 0.5) / 0.4 / 0.1 = 1.0; log(1) / 0.2 = 0
    assert deltas[0].tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0], abs=1e-5)
    bigger = torch.tensor([[0.3, 0.1, 0.7, 0.9]])  # w 0.4 = 2× anchor, h 0.8 = 2×
    assert encode(bigger, anchor)[0, 2:].tolist() == pytest.approx([math.log(2) / 0.2] * 2, abs=1e-5)


def test_round_trip():
    g = torch.Generator().manual_seed(0)
    anchors = torch.cat([torch.rand(50, 2, generator=g), torch.rand(50, 2, generator=g) * 0.5 + 0.05], 1)
    xy = torch.rand(50, 2, generator=g) * 0.6
    boxes = torch.cat([xy, xy + torch.rand(50, 2, generator=g) * 0.4 + 0.01], 1)
    assert torch.allclose(decode(encode(boxes, anchors), anchors), boxes, atol=1e-6)
    # Zero offsets decode to the anchor itself.
    assert torch.allclose(decode(torch.zeros(50, 4), anchors), cxcywh_to_xyxy(anchors), atol=1e-7)


def test_decode_is_batched_and_safe_for_huge_offsets():
    anchors = torch.tensor([[0.5, 0.5, 0.1, 0.1]])
    deltas = torch.tensor([[[0.0, 0.0, 1e4, 1e4]]])  # [B=1, A=1, 4]
    boxes = decode(deltas, anchors)
    assert boxes.shape == (1, 1, 4)
    assert torch.isfinite(boxes).all()
