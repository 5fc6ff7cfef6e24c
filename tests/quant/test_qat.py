"""Eager-mode QAT (lpdet.quant.qat): module swap, int8 grids, BN folding, training, freezes, state."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lpdet.errors import LpdetError
from lpdet.models.config import ModelConfig, is_qat
from lpdet.models.layers import conv_bn_relu6
from lpdet.models.loss import multibox_loss
from lpdet.models.registry import build_detector
from lpdet.quant.fake_quant import ActQuant, FoldedBatchNorm2d, QConv2d, QPredictionHead, QResidual
from lpdet.quant.qat import QatConfig, build_model, calibrate, prepare_qat, quantizers, set_qat_step


R = 96
CFG = ModelConfig("mobilenet_v2_ssdlite", num_classes=3, width=0.25, resolution=R)


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, R, R, generator=torch.Generator().manual_seed(seed))


def _randomize_bn(detector: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN parameters and statistics, so that folding matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in detector.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)


def _calibrated(config: QatConfig | None = None, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    detector = build_detector(CFG)
    _randomize_bn(detector, seed)
    prepare_qat(detector, config)
    calibrate(detector, [_images(2, 1), _images(2, 2)])
    return detector


def _targets(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(n):
        xy = torch.rand(2, 2, generator=g) * 0.5
        wh = torch.rand(2, 2, generator=g) * 0.4 + 0.1
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, 4, (2,), generator=g)})
    return targets


def test_prepare_keeps_outputs_names_and_parameters():
    torch.manual_seed(0)
    detector = build_detector(CFG)
    float_state = detector.state_dict()
    first_weight = detector.backbone.features[0][0].weight
    anchors = detector.anchors.clone()
    assert prepare_qat(detector) is detector
    assert is_qat(detector.config) and detector.config == replace(CFG, quantization="qat")
    assert torch.equal(detector.anchors, anchors)
    # same Parameter objects (an optimizer made before prepare_qat keeps working), float names kept
    assert detector.backbone.features[0][0].weight is first_weight
    state = detector.state_dict()
    assert set(float_state) <= set(state)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    # fully converted: no float conv/BN/ReLU6 left; every residual add and head is quantized
    kinds = {type(m) for m in detector.modules()}
    assert not kinds & {nn.Conv2d, nn.BatchNorm2d, nn.ReLU6}
    assert QResidual in kinds and QPredictionHead in kinds and FoldedBatchNorm2d in kinds
    assert detector.backbone.features[0][0].input_quant is not None  # the network input
    calibrate(detector, [_images(2, 0)])
    detector.eval()
    with torch.no_grad():
        cls_logits, box_deltas = detector(_images(2, 3))
    assert cls_logits.shape == (2, anchors.shape[0], 4) and box_deltas.shape == (2, anchors.shape[0], 4)
    assert prepare_qat(detector) is detector  # idempotent


def test_weights_and_bias_on_the_int8_and_int32_grids():
    detector = _calibrated().eval()
    conv = detector.backbone.features[2].conv[0][0]  # a 1x1 conv + BN + ReLU6
    bn = detector.backbone.features[2].conv[0][1]
    assert isinstance(conv, QConv2d) and conv.bn is bn
    # fold by hand
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded = conv.weight * factor.reshape(-1, 1, 1, 1)
    folded_bias = bn.bias - bn.running_mean * factor
    with torch.no_grad():
        weight_q, scale, bias_q = conv.quantized_weight_bias()
    expected_scale = folded.detach().abs().amax(dim=(1, 2, 3)) / 127
    assert torch.allclose(scale, expected_scale)
    levels = weight_q / scale.reshape(-1, 1, 1, 1)
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # integral per channel
    assert levels.abs().amax(dim=(1, 2, 3)).round().eq(127).all() and levels.abs().max() <= 127 + 1e-4
    assert (weight_q - folded).abs().le(scale.reshape(-1, 1, 1, 1) / 2 + 1e-7).all()
    # bias: int32 grid of s_in * s_w, within half a step of the folded bias
    s_in = conv.input_source.qparams()[0]
    # at width 0.25 block 1 maps 8 -> 8 channels: a residual block, its add is the source
    assert conv.input_source is detector.backbone.features[1].add_quant
    steps = bias_q / (s_in * scale)
    assert torch.allclose(steps, steps.round(), atol=1e-3)
    assert (bias_q - folded_bias).abs().le(s_in * scale / 2 + 1e-6).all()


def test_relu6_outputs_have_zero_point_zero_and_range_at_most_6():
    detector = _calibrated()
    relu6 = [m for m in detector.modules() if isinstance(m, QConv2d) and m.relu6]
    assert len(relu6) > 20
    for conv in relu6:
        scale, zero = conv.act_quant.qparams()
        assert int(zero) == 0 and float(scale) * 255 <= 6.0
    others = [q for _, q in quantizers(detector) if not q.relu6]
    assert any(int(q.qparams()[1]) > 0 for q in others)  # e.g. linear bottlenecks: asymmetric


def test_bn_folding_matches_float_conv_bn_relu6():
    """A QConv2d in eval mode vs the float Conv+BN+ReLU6 it replaced: equal within the error
    that int8 weights + uint8 output quantization allow (computed per output element)."""
    torch.manual_seed(0)
    block = conv_bn_relu6(8, 16, kernel_size=3)
    _randomize_bn(block)
    block.eval()
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        reference = block(x)
    conv = QConv2d.from_float(block[0], FoldedBatchNorm2d.from_bn(block[1]), relu6=True, ema_decay=0.99)
    conv.act_quant.observe(reference)  # the exact output range, no input source: bias not snapped
    conv.eval()
    with torch.no_grad():
        out = conv(x)
        _, scale, _ = conv.quantized_weight_bias()
        weight_error = nn.functional.conv2d(x.abs(), torch.ones_like(block[0].weight), padding=1)
        weight_error = weight_error * scale.reshape(1, -1, 1, 1) / 2
    out_step = conv.act_quant.qparams()[0]
    assert ((out - reference).abs() <= weight_error + out_step / 2 + 1e-5).all()
    assert (out - reference).abs().max() > 0  # it does quantize
    # a wrong fold (BN ignored) is far outside that bound
    assert not ((nn.functional.relu6(block[0](x)) - reference).abs() <= weight_error + out_step).all()


def test_simulated_fold_trains_bn_with_batch_statistics():
    torch.manual_seed(0)
    block = conv_bn_relu6(8, 16, kernel_size=1)
    _randomize_bn(block)
    reference = conv_bn_relu6(8, 16, kernel_size=1)
    reference.load_state_dict(block.state_dict())
    block.train(), reference.train()
    conv = QConv2d.from_float(block[0], FoldedBatchNorm2d.from_bn(block[1]), relu6=True, ema_decay=0.99)
    conv.train()
    x = torch.randn(4, 8, 10, 10)
    out = conv(x)
    expected = reference(x)
    step = conv.act_quant.qparams()[0]
    assert (out - expected).abs().max() < 3 * step  # batch statistics, int8 weights
    bn, ref_bn = conv.bn, reference[1]
    assert int(bn.num_batches_tracked) == 1
    assert torch.allclose(bn.running_mean, ref_bn.running_mean, atol=1e-2)
    assert torch.allclose(bn.running_var, ref_bn.running_var, rtol=2e-2)
    out.sum().backward()
    assert bn.weight.grad is not None and conv.weight.grad is not None


def _train_steps(detector, optimizer, steps, images, targets):
    losses = []
    for step in steps:
        set_qat_step(detector, step)
        cls_logits, box_deltas = detector(images.contiguous(memory_format=torch.channels_last))
        loss = multibox_loss(cls_logits, box_deltas, targets, detector.anchors)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_qat_training_freezes_at_the_right_step_and_survives_a_state_dict_round_trip(tmp_path):
    config = QatConfig(freeze_bn_after=2, freeze_observers_after=3)
    torch.manual_seed(0)
    detector = prepare_qat(build_detector(CFG), config).to(memory_format=torch.channels_last)
    detector.train()
    optimizer = torch.optim.SGD(detector.parameters(), lr=0.01, momentum=0.9)
    images, targets = _images(4, 5), _targets(4, 5)
    conv = detector.backbone.features[3].conv[1][0]
    observer = detector.extras.blocks[0][0][0].act_quant
    bn_means, observer_max, losses = [], [], []
    for step in range(5):
        losses += _train_steps(detector, optimizer, [step], images, targets)
        bn_means.append(conv.bn.running_mean.clone())
        observer_max.append(observer.max_val.clone())
        assert bool(conv.bn_frozen) == (step >= 2) and bool(observer.observer_frozen) == (step >= 3)
    assert all(torch.isfinite(torch.tensor(losses)))
    before = torch.zeros_like(bn_means[0])  # fresh BN: running_mean starts at 0
    changed = [not torch.equal(a, b) for a, b in zip([before] + bn_means[:-1], bn_means)]
    assert changed == [True, True, False, False, False]  # steps 0, 1 update BN; from step 2 frozen
    observer_changed = [not torch.equal(a, b) for a, b in zip(observer_max[:-1], observer_max[1:])]
    assert observer_changed == [True, True, False, False]  # steps 1, 2 update; from step 3 frozen

    # safetensors round trip (what checkpoints do) into a freshly prepared detector
    save_file(detector.contiguous_state_dict(), str(tmp_path / "model.safetensors"))
    restored = prepare_qat(build_detector(CFG), config)
    restored.load_state_dict(load_file(str(tmp_path / "model.safetensors")))  # strict
    assert bool(restored.backbone.features[3].conv[1][0].bn_frozen)
    assert bool(restored.extras.blocks[0][0][0].act_quant.observer_frozen)
    detector.eval(), restored.eval()
    x = _images(2, 9)
    with torch.no_grad():
        for a, b in zip(detector(x), restored(x)):
            assert torch.equal(a, b)
    # resuming: one more identical step on both gives identical weights and statistics
    detector.train(), restored.train()
    for model in (detector, restored):
        _train_steps(model, torch.optim.SGD(model.parameters(), lr=0.01), [5], images, targets)
    for (name, a), b in zip(detector.state_dict().items(), restored.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_prepare_on_trained_float_weights_starts_from_them():
    torch.manual_seed(0)
    float_model = build_detector(CFG)
    _randomize_bn(float_model)
    float_model.eval()
    qat = build_detector(CFG)
    qat.load_state_dict(float_model.state_dict())  # --init FLOAT_CKPT
    prepare_qat(qat)
    batches = [_images(4, s) for s in range(3)]
    calibrate(qat, batches)  # BN statistics untouched by default
    qat_state = qat.state_dict()
    for name, tensor in float_model.state_dict().items():
        assert torch.equal(qat_state[name], tensor), name
    qat.eval()
    x = _images(2, 7)
    with torch.no_grad():
        float_maps = float_model.extract_features(x)
        qat_maps = qat.extract_features(x)
    for f, q in zip(float_maps[:2], qat_maps[:2]):
        cosine = nn.functional.cosine_similarity(f.flatten(), q.flatten(), dim=0)
        assert cosine > 0.999, float(cosine)  # measured 0.99995


def test_observers_do_not_move_in_eval_mode_and_errors():
    detector = _calibrated()
    state = {k: v.clone() for k, v in detector.state_dict().items()}
    detector.eval()
    with torch.no_grad():
        detector(_images(2, 11))
    assert all(torch.equal(state[k], v) for k, v in detector.state_dict().items())
    with pytest.raises(LpdetError, match="prepare_qat"):
        set_qat_step(build_detector(CFG), 0)
    with pytest.raises(LpdetError, match="freeze_bn_after"):
        prepare_qat(build_detector(CFG), QatConfig(freeze_bn_after=-1))
    assert not is_qat(build_detector(CFG).config)
    assert is_qat(build_model(replace(CFG, quantization="qat")).config)
    assert all(isinstance(q, ActQuant) and bool(q.initialized) for _, q in quantizers(detector))
