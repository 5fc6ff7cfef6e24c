import math

import pytest
import torch

from lpdet.models.anchors import anchors_for, box_shapes, layer_scales, num_anchors_per_location
from lpdet.models.config import ModelConfig

CFG = ModelConfig("mobilenet_v2_ssdlite", num_classes=3)


def test_anchors_per_location_matches_tf_reduced_lowest_layer():
    assert num_anchors_per_location() == [3, 6, 6, 6, 6, 6]


def test_layer_scales_linear_then_one():
    scales = layer_scales(0.2, 0.95)
    assert scales == pytest.approx([0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0])


def test_hand_checked_tiny_case():
    sizes = [(2, 2)] + [(1, 1)] * 5
    anchors = anchors_for(sizes, CFG.min_scale, CFG.max_scale)
    assert anchors.shape == (2 * 2 * 3 + 5 * 6, 4)
    first = anchors[:12].view(2, 2, 3, 4)  # (i, j, anchor)
    # Centres at (j + 0.5) / W, (i + 0.5) / H, row-major over (i, j).
    assert first[0, 0, 0, :2].tolist() == pytest.approx([0.25, 0.25])
    assert first[0, 1, 0, :2].tolist() == pytest.approx([0.75, 0.25])  # j moves x
    assert first[1, 0, 0, :2].tolist() == pytest.approx([0.25, 0.75])  # i moves y
    # Lowest layer: (0.1, ratio 1), (min_scale, 2), (min_scale, 1/2).
    assert first[0, 0, 0, 2:].tolist() == pytest.approx([0.1, 0.1])
    assert first[0, 0, 1, 2:].tolist() == pytest.approx([0.2 * math.sqrt(2), 0.2 / math.sqrt(2)])
    assert first[0, 0, 2, 2:].tolist() == pytest.approx([0.2 / math.sqrt(2), 0.2 * math.sqrt(2)])
    # Layer 1 (1×1 map): scale 0.35, ratios 1, 2, 1/2, 3, 1/3, then sqrt(0.35·0.5) at ratio 1.
    layer1 = anchors[12:18]
    assert torch.allclose(layer1[:, :2], torch.full((6, 2), 0.5))
    s = 0.35
    assert layer1[0, 2:].tolist() == pytest.approx([s, s])
    assert layer1[1, 2:].tolist() == pytest.approx([s * math.sqrt(2), s / math.sqrt(2)])
    assert layer1[3, 2:].tolist() == pytest.approx([s * math.sqrt(3), s / math.sqrt(3)])
    extra = math.sqrt(0.35 * 0.5)
    assert layer1[5, 2:].tolist() == pytest.approx([extra, extra])
    # Last layer's extra box uses s_{k+1} = 1.
    assert anchors[-1, 2:].tolist() == pytest.approx([math.sqrt(0.95), math.sqrt(0.95)])


def test_scales_follow_config():
    cfg = ModelConfig("mobilenet_v2_ssdlite", 3, min_scale=0.1, max_scale=0.9)
    assert box_shapes(1, cfg.min_scale, cfg.max_scale)[0] == pytest.approx((0.26, 0.26))
    anchors = anchors_for([(1, 1)] * 6, cfg.min_scale, cfg.max_scale)
    assert anchors[1, 2:].tolist() == pytest.approx([0.1 * math.sqrt(2), 0.1 / math.sqrt(2)])


def test_non_square_map_and_count():
    sizes = [(3, 5), (2, 3), (1, 2), (1, 1), (1, 1), (1, 1)]
    anchors = anchors_for(sizes, CFG.min_scale, CFG.max_scale)
    per_loc = num_anchors_per_location()
    assert anchors.shape[0] == sum(h * w * n for (h, w), n in zip(sizes, per_loc))
    first = anchors[: 15 * 3].view(3, 5, 3, 4)
    assert first[2, 4, 0, :2].tolist() == pytest.approx([4.5 / 5, 2.5 / 3])
    assert torch.isfinite(anchors).all()


def test_wrong_number_of_maps_is_a_bug():
    with pytest.raises(ValueError):
        anchors_for([(2, 2)] * 5, CFG.min_scale, CFG.max_scale)
