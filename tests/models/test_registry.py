import dataclasses

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from lpdet.errors import LpdetError
from lpdet.models.backbones import MobileNetV1Features
from lpdet.models.config import ModelConfig
from lpdet.models.registry import ARCHITECTURES, build_detector, load_backbone_weights


VALID = ModelConfig("mobilenet_v2_ssdlite", num_classes=3, width=0.25, resolution=64)


@pytest.mark.parametrize(
    "change, option",
    [
        (dict(arch="resnet50_ssd"), "mobilenet_v1_ssd"),
        (dict(num_classes=0), "num_classes"),
        (dict(width=0.0), "width"),
        (dict(width=-1.0), "width"),
        (dict(resolution=16), "resolution"),
        (dict(resolution=300.0), "resolution"),
        (dict(min_scale=0.9, max_scale=0.5), "min_scale"),
    ],
)
def test_invalid_configs(change, option):
    with pytest.raises(LpdetError, match=option):
        build_detector(dataclasses.replace(VALID, **change))


def test_all_architectures_build():
    for arch in ARCHITECTURES:
        detector = build_detector(dataclasses.replace(VALID, arch=arch))
        assert detector.config.arch == arch and detector.num_classes == 3


def test_mobilenet_v2_body_matches_torchvision():
    reference = torchvision.models.mobilenet_v2()
    detector = build_detector(dataclasses.replace(VALID, width=1.0))
    body = sum(p.numel() for p in detector.backbone.parameters())
    assert body == sum(p.numel() for p in reference.features.parameters())
    with_classifier = body + 1280 * 1000 + 1000
    assert abs(with_classifier - 3.5e6) / 3.5e6 < 0.1


def test_load_torchvision_mobilenet_v2_state_dict(tmp_path):
    reference = torchvision.models.mobilenet_v2(width_mult=1.0)
    path = tmp_path / "mnv2.pth"
    torch.save(reference.state_dict(), path)
    detector = build_detector(dataclasses.replace(VALID, width=1.0))
    loaded, skipped = load_backbone_weights(detector, path)
    assert loaded == len(detector.backbone.state_dict())  # every backbone tensor
    assert skipped == 2  # classifier.1.weight / bias
    assert torch.equal(detector.backbone.features[14].conv[0][0].weight, reference.features[14].conv[0][0].weight)


def test_load_mobilenet_v1_safetensors(tmp_path):
    source = MobileNetV1Features(width=0.25)
    path = tmp_path / "mnv1.safetensors"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(1000, 256)
    save_file(state, str(path))
    detector = build_detector(dataclasses.replace(VALID, arch="mobilenet_v1_ssdlite"))
    assert load_backbone_weights(detector, path) == (len(state) - 1, 1)
    assert torch.equal(detector.backbone.features[13][1][0].weight, source.features[13][1][0].weight)


def test_load_backbone_errors(tmp_path):
    detector = build_detector(VALID)
    with pytest.raises(LpdetError, match="not found"):
        load_backbone_weights(detector, tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(LpdetError, match="cannot read"):
        load_backbone_weights(detector, garbage)
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(LpdetError, match="not a state dict"):
        load_backbone_weights(detector, not_a_state_dict)
    unrelated = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), unrelated)
    with pytest.raises(LpdetError, match="no tensor matches"):
        load_backbone_weights(detector, unrelated)


def test_wrong_width_loads_almost_nothing(tmp_path):
    # Only the unscaled 1280-channel last BN matches a width-0.25 body: the counts tell.
    path = tmp_path / "wide.pth"
    torch.save(torchvision.models.mobilenet_v2(width_mult=1.0).state_dict(), path)
    detector = build_detector(VALID)
    loaded, skipped = load_backbone_weights(detector, path)
    assert loaded < 0.05 * len(detector.backbone.state_dict()) and skipped > 300
