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


STRIDES = (16, 32, 64, 128, 256, 512)


def test_stride_grid_centres_by_hand_at_300():
    # 300 px: maps 19, 10, 5, 3, 2, 1. Stride-16/32/64 maps: centres (s·j + 0.5) / 300; coarser: TF's.
    sizes = [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    anchors = anchors_for(sizes, 0.2, 0.95, grid="stride", strides=STRIDES, resolution=300)
    tf = anchors_for(sizes, 0.2, 0.95)
    assert anchors.shape == tf.shape
    assert torch.equal(anchors[:, 2:], tf[:, 2:])  # only the centres move
    layer0 = anchors[: 19 * 19 * 3].view(19, 19, 3, 4)
    assert layer0[0, 0, 0, :2].tolist() == pytest.approx([0.5 / 300, 0.5 / 300])
    assert layer0[2, 18, 0, :2].tolist() == pytest.approx([(16 * 18 + 0.5) / 300, (16 * 2 + 0.5) / 300])
    start1 = 19 * 19 * 3
    layer1 = anchors[start1: start1 + 10 * 10 * 6].view(10, 10, 6, 4)
    assert layer1[9, 9, 0, :2].tolist() == pytest.approx([(32 * 9 + 0.5) / 300] * 2)
    start2 = start1 + 10 * 10 * 6
    layer2 = anchors[start2: start2 + 25 * 6].view(5, 5, 6, 4)
    assert layer2[0, 4, 0, :2].tolist() == pytest.approx([(64 * 4 + 0.5) / 300, 0.5 / 300])
    coarse = start2 + 25 * 6  # the 3×3, 2×2 and 1×1 maps keep TF's centres
    assert torch.equal(anchors[coarse:], tf[coarse:])


def test_stride_grid_offsets_the_same_in_pixels_at_every_size():
    # What the grid is for: the anchor sits on the same pixel of its cell's receptive field at every size.
    for resolution in (160, 192, 224, 288, 300, 320):
        h = math.ceil(resolution / 16)
        sizes = [(h, h)] + [(1, 1)] * 5
        anchors = anchors_for(sizes, 0.2, 0.95, grid="stride", strides=STRIDES, resolution=resolution)
        cx_pixels = anchors[: h * h * 3: 3, 0][:h] * resolution
        assert cx_pixels.tolist() == pytest.approx([16 * j + 0.5 for j in range(h)], abs=1e-4)


def test_stride_grid_needs_strides_and_resolution():
    with pytest.raises(ValueError):
        anchors_for([(2, 2)] * 6, 0.2, 0.95, grid="stride")
    with pytest.raises(ValueError):
        anchors_for([(2, 2)] * 6, 0.2, 0.95, grid="diagonal")
