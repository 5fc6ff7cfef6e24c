import pytest
import torch
from safetensors.torch import save_file

from lpdet.errors import LpdetError
from lpdet.models.anchors import num_anchors_per_location
from lpdet.models.config import ModelConfig
from lpdet.models.registry import ARCHITECTURES, build_detector


TINY = dict(num_classes=3, width=0.25)


@pytest.mark.parametrize(
    "arch, resolution, expected",
    [
        ("mobilenet_v1_ssd", 300, [19, 10, 5, 3, 2, 1]),
        ("mobilenet_v2_ssdlite", 320, [20, 10, 5, 3, 2, 1]),
    ],
)
def test_published_feature_map_sizes(arch, resolution, expected):
    detector = build_detector(ModelConfig(arch, resolution=resolution, **TINY))
    assert detector.feature_map_sizes() == [(s, s) for s in expected]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_sizes_anchors_and_outputs_agree_with_a_real_forward(arch):
    detector = build_detector(ModelConfig(arch, resolution=64, **TINY)).eval()
    for resolution in (236, 250, 257, 300, 320, 512):
        detector.set_resolution(resolution)
        with torch.no_grad():
            maps = detector.extract_features(torch.rand(1, 3, resolution, resolution))
            cls, box = detector(torch.rand(2, 3, resolution, resolution))
        sizes = [tuple(m.shape[-2:]) for m in maps]
        assert sizes == detector.feature_map_sizes(resolution), resolution
        expected = sum(h * w * n for (h, w), n in zip(sizes, num_anchors_per_location()))
        assert detector.anchors.shape == (expected, 4)
        assert cls.shape == (2, expected, 4) and box.shape == (2, expected, 4)


def test_head_order_matches_anchor_order():
    # A bias on anchor slot 1 of map 0 must land on the rows whose anchors are slot 1 (ratio 2).
    detector = build_detector(ModelConfig("mobilenet_v2_ssd", resolution=64, **TINY)).eval()
    conv = detector.box_head.output_convs()[0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.bias[1 * 4 + 2] = 1.0  # anchor slot 1, value dw
        _, box = detector(torch.rand(1, 3, 64, 64))
    h, w = detector.feature_map_sizes()[0]
    rows = box[0, : h * w * 3, 2].view(h, w, 3)
    assert torch.all(rows[..., 1] == 1.0) and torch.all(rows[..., [0, 2]] == 0.0)


def test_initial_background_probability():
    detector = build_detector(ModelConfig("mobilenet_v1_ssdlite", resolution=64, **TINY)).eval()
    with torch.no_grad():
        cls, _ = detector(torch.rand(1, 3, 64, 64))
    background = cls.softmax(-1)[..., 0]
    assert background.mean().item() == pytest.approx(0.99, abs=0.01)


def test_state_dict_transfers_across_resolutions():
    small = build_detector(ModelConfig("mobilenet_v1_ssd", resolution=236, **TINY))
    large = build_detector(ModelConfig("mobilenet_v1_ssd", resolution=300, **TINY))
    large.load_state_dict(small.state_dict(), strict=True)
    assert "anchors" not in small.state_dict()
    assert large.anchors.shape[0] != small.anchors.shape[0]


def test_set_resolution_keeps_anchor_sizes_in_pixels():
    detector = build_detector(ModelConfig("mobilenet_v2_ssdlite", resolution=300, **TINY))
    at_300 = detector.anchors.clone()
    detector.set_resolution(192)
    assert detector.config.anchor_reference == 300
    first_map = 12 * 12 * 3  # the 12x12 map's boxes at 192 against the 19x19 map's at 300: same shapes
    assert torch.allclose(detector.anchors[:first_map:3, 2:] * 192, at_300[:1, 2:].expand(144, 2) * 300)
    detector.set_resolution(300)  # and back: the anchors the model was built with
    assert torch.equal(detector.anchors, at_300)


def test_config_without_anchor_fields_loads_as_before():
    from lpdet.serialize import from_dict
    old = from_dict(ModelConfig, {"arch": "mobilenet_v2_ssdlite", "num_classes": 3, "resolution": 300})
    assert (old.anchor_grid, old.anchor_reference) == ("map", None)


def test_wrong_input_size_is_a_clear_error():
    detector = build_detector(ModelConfig("mobilenet_v2_ssdlite", resolution=64, **TINY))
    with pytest.raises(LpdetError, match=r"\[B, 3, 64, 64\]"):
        detector(torch.rand(1, 3, 96, 96))
    with pytest.raises(LpdetError, match="float"):
        detector(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(LpdetError, match="resolution"):
        detector.set_resolution(16)


def test_channels_last_gives_same_outputs(tmp_path):
    detector = build_detector(ModelConfig("mobilenet_v2_ssdlite", resolution=64, **TINY)).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        reference = detector(x)
        detector.to(memory_format=torch.channels_last)
        out = detector(x.contiguous(memory_format=torch.channels_last))
    for a, b in zip(reference, out):
        assert torch.allclose(a, b, atol=1e-4)
    # safetensors refuses channels_last tensors; contiguous_state_dict() is what to save.
    save_file(detector.contiguous_state_dict(), str(tmp_path / "model.safetensors"))


def test_fx_traceable_for_quantization():
    detector = build_detector(ModelConfig("mobilenet_v2_ssdlite", resolution=64, **TINY)).eval()
    graph_module = torch.fx.symbolic_trace(detector)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(detector(x), graph_module(x)):
            assert torch.equal(a, b)
