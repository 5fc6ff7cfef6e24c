"""Weight inheritance from a supernet and BatchNorm recalibration (lpdet.models.inherit)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from lpdet.errors import LpdetError
from lpdet.models.arch_detail import StageDetail, default_detail
from lpdet.models.arch_space import SearchSpace, largest_candidate, smallest_candidate, to_model_config
from lpdet.models.config import ModelConfig
from lpdet.models.inherit import Supernet, detector_layers, embedded_state, inherit, recalibrate_bn
from lpdet.models.registry import build_detector

R = 96


def _trained_like(cfg: ModelConfig, seed: int = 0) -> nn.Module:
    """A built detector with every BatchNorm's statistics and affine set away from their init, so
    that copying a wrong slice or leaving one out changes the outputs."""
    torch.manual_seed(seed)
    detector = build_detector(cfg)
    with torch.no_grad():
        for m in detector.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return detector.eval()


@pytest.fixture(scope="module")
def supernet():
    cfg = to_model_config(largest_candidate(SearchSpace(resolutions=[R])), num_classes=3)
    detector = _trained_like(cfg)
    return detector, Supernet.from_detector(detector)


def test_the_largest_candidate_is_the_supernet_exactly(supernet):
    detector, net = supernet
    torch.manual_seed(123)  # a different initialisation, all overwritten
    inherited = inherit(detector.config, net).eval()
    images = torch.rand(2, 3, R, R, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = detector(images), inherited(images)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    assert expected[0].std() > 0.01  # not a constant output


def _top_l1(*convs: torch.Tensor, k: int) -> torch.Tensor:
    """Reference ranking: indices of the k output filters with the largest summed L1 norm, sorted."""
    score = sum(w.abs().sum(dim=(1, 2, 3)) for w in convs)
    return torch.topk(score, k).indices.sort().values


def test_a_smaller_candidate_takes_the_important_channels_cropped_kernels_and_first_blocks(supernet):
    detector, net = supernet
    candidate = largest_candidate(SearchSpace(resolutions=[R]))
    candidate.detail.stages[3] = StageDetail(width=0.5, expansion=3, kernel=3, depth=3)  # 64-ch stage: 4 -> 3 blocks
    child = inherit(to_model_config(candidate, num_classes=3), net)
    big, small = detector.backbone.features, child.backbone.features
    # stage 3 is supernet blocks 7..10 (stem 0, stages 0-2: 1 + 2 + 3 blocks); the child keeps 7..9
    stage_out = _top_l1(*(big[i].conv[2].weight for i in range(7, 11)), k=32)  # residual-shared channels
    stage_in = torch.arange(32)  # the 32-ch stage before is full width
    hidden = _top_l1(big[7].conv[0][0].weight, k=32 * 3)
    assert torch.equal(small[7].conv[0][0].weight, big[7].conv[0][0].weight[hidden][:, stage_in])
    assert torch.equal(small[7].conv[0][1].running_var, big[7].conv[0][1].running_var[hidden])
    assert torch.equal(small[7].conv[1][0].weight, big[7].conv[1][0].weight[hidden][:, :, 1:4, 1:4])  # 5x5 -> 3x3
    assert torch.equal(small[7].conv[2].weight, big[7].conv[2].weight[stage_out][:, hidden])
    assert torch.equal(small[7].conv[3].running_mean, big[7].conv[3].running_mean[stage_out])
    hidden9 = _top_l1(big[9].conv[0][0].weight, k=32 * 3)
    assert torch.equal(small[9].conv[0][0].weight, big[9].conv[0][0].weight[hidden9][:, stage_out])
    # block 10 is dropped: the child's block 10 is the supernet's 11 (next stage's first); it reads
    # stage_out, and its expansion 6 of 32 inputs keeps the 192 most important of 384 hidden channels
    hidden11 = _top_l1(big[11].conv[0][0].weight, k=32 * 6)
    assert torch.equal(small[10].conv[0][0].weight, big[11].conv[0][0].weight[hidden11][:, stage_out])
    assert torch.equal(small[-1][0].weight, big[-1][0].weight)  # the last 1x1 conv: nothing removed
    assert len(small) == len(big) - 1


def test_extra_layers_and_heads_follow_the_same_channel_choice(supernet):
    detector, net = supernet
    child = inherit(to_model_config(smallest_candidate(SearchSpace(resolutions=[R])), num_classes=3), net)
    big, small = detector.extras.blocks[1], child.extras.blocks[1]
    out = _top_l1(big[2][0].weight, k=small[2][0].out_channels)
    assert out.numel() < big[2][0].out_channels
    assert torch.equal(small[2][1].bias, big[2][1].bias[out])
    head, child_head = detector.cls_head.predictors[3], child.cls_head.predictors[3]  # reads extra layer 1
    assert torch.equal(child_head[0][0].weight, head[0][0].weight[out])
    assert torch.equal(child_head[1].weight, head[1].weight[:, out])
    assert torch.equal(child_head[1].bias, head[1].bias)
    images = torch.rand(1, 3, R, R)
    assert [t.shape for t in child.eval()(images)] == [t.shape for t in detector(images)]


def test_layers_cover_every_weight_of_every_architecture():
    for arch in ("mobilenet_v1_ssd", "mobilenet_v1_ssdlite", "mobilenet_v2_ssd", "mobilenet_v2_ssdlite"):
        cfg = ModelConfig(arch, num_classes=2, width=0.5, resolution=64)
        detector = _trained_like(cfg)
        inherited = inherit(cfg, Supernet.from_detector(detector))
        assert all(torch.equal(a, b) for a, b in zip(detector.state_dict().values(), inherited.state_dict().values()))
        convs = [n for n, m in detector.named_modules() if isinstance(m, nn.Conv2d)]
        assert sorted(layer.conv for layer in detector_layers(cfg)) == sorted(convs)


def test_candidates_outside_the_supernet_are_clear_errors(supernet):
    _, net = supernet
    with pytest.raises(LpdetError, match="the candidate is a mobilenet_v1_ssd"):
        inherit(ModelConfig("mobilenet_v1_ssd", num_classes=3, resolution=R), net)
    wider = to_model_config(largest_candidate(SearchSpace(resolutions=[R])), num_classes=3)
    wider.width = 1.5
    with pytest.raises(LpdetError, match="the supernet only"):
        inherit(wider, net)
    small = Supernet.from_detector(_trained_like(ModelConfig("mobilenet_v2_ssdlite", 3, resolution=R)))  # 3x3 kernels
    with pytest.raises(LpdetError, match="needs a 5x5 kernel, the supernet has 3x3"):
        inherit(wider.__class__("mobilenet_v2_ssdlite", 3, resolution=R, detail=largest_candidate(SearchSpace()).detail), small)


def test_recalibrated_statistics_are_the_average_of_the_batch_statistics():
    detector = _trained_like(ModelConfig("mobilenet_v1_ssd", num_classes=2, width=0.25, resolution=64))
    stem_conv, stem_bn = detector.backbone.features[0][0], detector.backbone.features[0][1]
    seen = []
    stem_conv.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    batches = [torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    weights = {n: t.clone() for n, t in detector.named_parameters()}
    assert recalibrate_bn(detector, iter(batches), max_batches=3) == 3
    expected_mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in seen]).mean(0)
    expected_var = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in seen]).mean(0)
    torch.testing.assert_close(stem_bn.running_mean, expected_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stem_bn.running_var, expected_var, atol=1e-5, rtol=1e-5)
    assert not detector.training and stem_bn.momentum == 0.1 and not stem_bn.training
    assert all(torch.equal(weights[n], t) for n, t in detector.named_parameters())
    before = stem_bn.running_mean.clone()
    with pytest.raises(LpdetError, match="no image batches"):
        recalibrate_bn(detector, [])
    assert torch.equal(stem_bn.running_mean, before)


def test_a_supernet_started_from_the_standard_network_computes_it_and_gives_it_back():
    """embedded_state, the inverse of inheritance: the base's 3x3 kernels zero-padded into the supernet's
    5x5 ones compute the same outputs, and the candidate of the base's shape inherits the base exactly."""
    base = _trained_like(ModelConfig("mobilenet_v2_ssdlite", num_classes=3, resolution=R), seed=1)
    cfg = to_model_config(largest_candidate(SearchSpace(resolutions=[R])), num_classes=3)
    torch.manual_seed(5)
    supernet = build_detector(cfg).eval()
    supernet.load_state_dict(embedded_state(cfg, base.config, base.state_dict(), supernet.state_dict()))
    standard = replace(cfg, detail=default_detail(cfg.arch))
    inherited = inherit(standard, Supernet.from_detector(supernet)).eval()
    images = torch.rand(2, 3, R, R, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, wide, back = base(images), supernet(images), inherited(images)
    assert expected[0].std() > 0.01
    for a, b in zip(expected, wide):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)  # the zero ring changes only summation order
    assert all(torch.equal(a, b) for a, b in zip(expected, back))


def test_a_base_of_another_width_cannot_start_the_supernet():
    base = build_detector(ModelConfig("mobilenet_v2_ssdlite", num_classes=3, resolution=R, width=0.5))
    cfg = to_model_config(largest_candidate(SearchSpace(resolutions=[R])), num_classes=3)
    with pytest.raises(LpdetError, match="standard network at the search's width"):
        embedded_state(cfg, base.config, base.state_dict(), build_detector(cfg).state_dict())
