import json

import pytest

from lpdet.models.profile import format_profile, profile_model, profile_to_dict
from lpdet.models.config import ModelConfig



def _within(value: float, reference: float, tolerance: float = 0.10) -> bool:
    return abs(value - reference) / reference <= tolerance


@pytest.mark.parametrize(
    "arch, resolution, params, madds",
    [
        # MobileNetV2 paper, Table 6 (COCO, 90 classes + background).
        ("mobilenet_v2_ssdlite", 320, 4.3e6, 0.8e9),
        ("mobilenet_v1_ssdlite", 300, 5.1e6, 1.3e9),
    ],
)
def test_published_params_and_madds(arch, resolution, params, madds):
    p = profile_model(ModelConfig(arch, num_classes=90, resolution=resolution))
    assert _within(p.params, params), p.params
    assert _within(p.macs, madds), p.macs


def test_feature_maps_reported():
    p = profile_model(ModelConfig("mobilenet_v2_ssdlite", num_classes=90, width=0.5, resolution=320))
    assert [(f.channels, f.height) for f in p.feature_maps] == [
        (288, 20),
        (1280, 10),  # the last conv keeps 1280 channels below width 1
        (256, 5),
        (128, 3),
        (128, 2),
        (64, 1),
    ]


def test_misaligned_spatial_sizes_depend_on_resolution():
    aligned = profile_model(ModelConfig("mobilenet_v1_ssd", num_classes=7, resolution=256))
    assert not any("height" in r for g in aligned.misaligned for r in g.reasons)
    # 250 → 125, 63 at strides 2 and 4.
    odd = profile_model(ModelConfig("mobilenet_v1_ssd", num_classes=7, resolution=250))
    spatial = {g.height for g in odd.misaligned if any("height" in r for r in g.reasons)}
    assert spatial == {125, 63}


def test_no_channel_misalignment_at_width_1_outside_output_convs():
    p = profile_model(ModelConfig("mobilenet_v2_ssdlite", num_classes=90, resolution=320))
    channel_flagged = {g.name for g in p.misaligned if any("channels" in r for r in g.reasons)}
    # Only the class-score convs (n·91 outputs) and the 3-anchor box conv (12) are flagged.
    assert channel_flagged
    assert all(name.startswith(("cls_head.", "box_head.")) for name in channel_flagged)
    # A narrow width with TF-style truncation would give e.g. 179 channels; we round to 8.
    narrow = profile_model(ModelConfig("mobilenet_v1_ssdlite", num_classes=7, width=0.35, resolution=256))
    assert all(g.name.startswith(("cls_head.", "box_head.")) for g in narrow.misaligned)


def test_format_and_dict():
    p = profile_model(ModelConfig("mobilenet_v2_ssdlite", num_classes=3, width=0.25, resolution=250))
    text = format_profile(p)
    assert "params" in text and "MAdds" in text and "backbone_s16" in text and "misaligned layers" in text
    data = json.loads(json.dumps(profile_to_dict(p)))
    assert data["params"] == p.params and data["macs"] == p.macs
    assert data["feature_maps"][0]["name"] == "backbone_s16"
    assert data["misaligned"][0]["reasons"]


@pytest.mark.parametrize("arch", ["mobilenet_v2_ssdlite", "mobilenet_v1_ssd"])
def test_macs_equal_torch_flop_counter(arch):
    # An independent count: torch's FlopCounterMode (2 FLOPs per multiply-add, bias not counted), the
    # counter benchmarks/train_throughput.py uses for torchvision's model.
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lpdet.models.profile import profile_detector
    from lpdet.models.registry import build_detector

    detector = build_detector(ModelConfig(arch, num_classes=4, width=0.5, resolution=136)).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        detector(torch.zeros(1, 3, 136, 136))
    assert profile_detector(detector).macs == counter.get_total_flops() // 2
