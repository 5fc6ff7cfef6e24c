"""The quantization-friendly separable convolution (`--quant-friendly`): the architecture, its
checkpoint round trip, the depthwise weight-decay group, and a fully int8 QAT export."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from lpdet.deploy.export import export_onnx
from lpdet.deploy.runtime import onnx_session
from lpdet.models.checkpoint_format import load_checkpoint, save_checkpoint
from lpdet.models.config import ModelConfig
from lpdet.models.layers import is_depthwise
from lpdet.models.profile import format_profile, profile_model
from lpdet.models.registry import build_detector
from lpdet.quant.fake_quant import QConv2d
from lpdet.quant.qat import build_model, calibrate, prepare_qat
from lpdet.train.model_setup import param_groups as _param_groups

R = 64


def _config(arch: str, quant_friendly: bool = True) -> ModelConfig:
    return ModelConfig(arch, 3, width=0.25, resolution=R, quant_friendly=quant_friendly)


def _depthwise_followers(backbone: nn.Module) -> list[list[type]]:
    """For each depthwise conv of `backbone`, the types of its siblings after it in its block."""
    found = []
    for module in backbone.modules():
        if isinstance(module, nn.Sequential) and len(module) and is_depthwise(module[0]):
            found.append([type(m) for m in list(module)[1:]])
    return found


@pytest.mark.parametrize("arch", ["mobilenet_v1_ssd", "mobilenet_v2_ssdlite"])
def test_quant_friendly_backbone_has_bare_depthwise_convs_and_relu(arch):
    standard, friendly = build_detector(_config(arch, False)), build_detector(_config(arch))
    assert all(f == [nn.BatchNorm2d, nn.ReLU6] for f in _depthwise_followers(standard.backbone))
    followers = _depthwise_followers(friendly.backbone)
    assert len(followers) == len(_depthwise_followers(standard.backbone)) >= 13
    assert all(f == [] for f in followers)
    types = {type(m) for m in friendly.backbone.modules()}
    assert nn.ReLU6 not in types and nn.ReLU in types
    assert all(m.bias is None for m in friendly.backbone.modules() if is_depthwise(m))
    # the heads are untouched; the conv weights keep their names (backbone weights transfer)
    assert {type(m) for m in friendly.cls_head.modules()} == {type(m) for m in standard.cls_head.modules()}
    conv_names = {n for n, m in standard.backbone.named_modules() if isinstance(m, nn.Conv2d)}
    assert conv_names == {n for n, m in friendly.backbone.named_modules() if isinstance(m, nn.Conv2d)}


def test_variant_round_trips_through_a_checkpoint_and_shows_in_model_info(tmp_path):
    detector = build_detector(_config("mobilenet_v1_ssd"))
    save_checkpoint(tmp_path / "ckpt", model=detector, model_config=detector.config, class_names=["a", "b", "c"],
                    category_ids=[1, 2, 3])
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert ckpt.model_config.quant_friendly is True
    rebuilt = build_detector(ckpt.model_config)
    rebuilt.load_state_dict(ckpt.model_state)  # strict: the same layers
    assert "(quant-friendly)" in format_profile(profile_model(_config("mobilenet_v1_ssd")))
    assert "(standard)" in format_profile(profile_model(_config("mobilenet_v1_ssd", False)))


def test_depthwise_weights_get_their_own_decay_group():
    detector = build_detector(_config("mobilenet_v2_ssdlite"))
    decay, depthwise, no_decay = _param_groups(detector, 4e-5, 1e-3)
    depthwise_weights = [m.weight for m in detector.modules() if is_depthwise(m)]
    assert {id(p) for p in depthwise["params"]} == {id(p) for p in depthwise_weights}
    assert depthwise["weight_decay"] == 1e-3 and decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0
    assert len(_param_groups(detector, 4e-5, None)) == 2  # unset: the layout runs saved before it had
    # one SGD step with a large decay and no gradient shrinks exactly the depthwise weights
    before = [w.detach().clone() for w in depthwise_weights]
    other = next(p for p in decay["params"]).detach().clone()
    optimizer = torch.optim.SGD(_param_groups(detector, 0.0, 0.5), lr=1.0)
    for p in detector.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert all(torch.allclose(w, b * 0.5) for w, b in zip(depthwise_weights, before))
    assert torch.equal(next(p for p in decay["params"]), other)


@pytest.mark.parametrize("arch", ["mobilenet_v1_ssd", "mobilenet_v2_ssdlite"])
def test_quant_friendly_qat_trains_and_exports_fully_int8(tmp_path, arch):
    torch.manual_seed(0)
    detector = build_detector(_config(arch))
    images = torch.rand(8, 3, R, R)
    prepare_qat(detector)
    # one training step through the fake-quantized model (bare depthwise convs, ReLU)
    detector.train()
    cls_logits, box_deltas = detector(images[:4])
    (cls_logits.square().mean() + box_deltas.square().mean()).backward()
    assert all(p.grad is not None for p in detector.parameters() if p.requires_grad)
    convs = [m for m in detector.modules() if isinstance(m, QConv2d)]
    backbone_convs = [m for m in detector.backbone.modules() if isinstance(m, QConv2d)]
    assert any(m.relu for m in backbone_convs) and not any(m.relu6 for m in backbone_convs)
    calibrate(detector, [images[:4], images[4:]] * 5)
    detector.eval()
    path = export_onnx(detector, tmp_path / "int8.onnx")
    session = onnx_session(path, threads=1, optimized_model=tmp_path / "opt.onnx")
    optimized = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert optimized["QLinearConv"] == len(convs)
    assert not [op for op in optimized if "Conv" in op and op != "QLinearConv"], optimized
    # parity: ONNX scores equal the fake-quant model's within a few output steps
    with torch.no_grad():
        scores = torch.softmax(detector(images)[0], -1)[..., 1:].numpy()
    onnx_scores = np.concatenate([session.run(None, {"images": images[i:i + 1].numpy()})[0] for i in range(8)])
    step = float(detector.cls_head.output_quant.qparams()[0])
    assert np.mean(np.abs(scores - onnx_scores) <= step) >= 0.99
    # a QAT checkpoint of the variant rebuilds
    rebuilt = build_model(detector.config)
    rebuilt.load_state_dict(detector.state_dict())
