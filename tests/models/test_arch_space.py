"""The architecture search space (lpdet.models.arch_space) and ModelConfig.detail."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
import yaml
from torchvision.models.mobilenetv2 import MobileNetV2

from lpdet.errors import LpdetError
from lpdet.models.arch_detail import ArchDetail, StageDetail, default_detail
from lpdet.models.arch_space import (
    ArchCandidate,
    SearchSpace,
    check_geometry,
    check_in_space,
    geometry_problems,
    largest_candidate,
    load_candidate,
    sample_candidate,
    smallest_candidate,
    space_size,
    to_model_config,
)
from lpdet.models.backbones import MobileNetV2Features
from lpdet.models.checkpoint_format import load_checkpoint, save_checkpoint
from lpdet.models.config import ModelConfig
from lpdet.models.heads import ssdlite_extra_block
from lpdet.models.registry import ARCHITECTURES, build_detector
from lpdet.serialize import from_dict, save_yaml, to_dict


def _shapes(model: torch.nn.Module) -> dict[str, tuple]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("width", [0.5, 0.75, 1.0])
def test_default_detail_builds_exactly_the_standard_network(arch, width):
    torch.manual_seed(0)
    standard = build_detector(ModelConfig(arch, num_classes=3, width=width, resolution=128))
    torch.manual_seed(0)
    detailed = build_detector(ModelConfig(arch, num_classes=3, width=width, resolution=128, detail=default_detail(arch)))
    assert list(_shapes(standard).items()) == list(_shapes(detailed).items())
    assert sum(p.numel() for p in standard.parameters()) == sum(p.numel() for p in detailed.parameters())
    # same seed, same weights: the detail changes nothing of the standard build
    assert all(torch.equal(a, b) for a, b in zip(standard.state_dict().values(), detailed.state_dict().values()))


def test_default_mobilenet_v2_body_is_torchvisions():
    """Independent reference: torchvision's own MobileNetV2 features, names and shapes."""
    ours = MobileNetV2Features(0.75, default_detail("mobilenet_v2_ssdlite"))
    reference = MobileNetV2(width_mult=0.75).features
    assert _shapes(ours.features) == _shapes(reference)
    assert ours.split_block == 14


def test_detail_changes_the_stage_it_names():
    detail = default_detail("mobilenet_v2_ssdlite")
    detail.stages[2] = StageDetail(width=0.5, expansion=4, kernel=5, depth=2)  # 32-ch stage, 3 blocks
    features = MobileNetV2Features(1.0, detail).features
    # stage 2 is blocks 4..5 now (stem 0, stage0 1, stage1 2..3); stage 3 starts at 6
    assert features[4].conv[0][0].weight.shape == (24 * 4, 24, 1, 1)  # expansion 4 of the 24-ch input
    assert features[4].conv[1][0].weight.shape == (96, 1, 5, 5)  # 5x5 depthwise
    assert features[5].conv[2].weight.shape == (16, 16 * 4, 1, 1)  # width 0.5: 16 channels
    assert features[6].conv[0][0].weight.shape == (16 * 6, 16, 1, 1)  # next stage reads 16
    assert len(features) == 18 and MobileNetV2Features(1.0, detail).split_block == 13
    out16, out32 = MobileNetV2Features(1.0, detail)(torch.zeros(1, 3, 64, 64))
    assert out16.shape[-1] == 4 and out32.shape[-1] == 2


def test_detail_round_trips_through_yaml_and_checkpoints(tmp_path):
    candidate = sample_candidate(SearchSpace(), random.Random(3))
    config = to_model_config(candidate, num_classes=2)
    assert from_dict(ModelConfig, to_dict(config)) == config
    detector = build_detector(config)
    save_checkpoint(tmp_path / "ckpt", model=detector, model_config=config, class_names=["a", "b"], category_ids=[1, 2])
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.model_config == config
    assert _shapes(build_detector(loaded.model_config)) == _shapes(detector)
    save_yaml(candidate, tmp_path / "cand.yaml")
    assert load_candidate(tmp_path / "cand.yaml") == candidate


def _brute_force_size(space: SearchSpace) -> int:
    """Distinct backbones × extra layers × resolutions by building every combination's backbone."""
    from lpdet.models.arch_space import stage_choices

    per_stage = [[StageDetail(*values) for values in itertools.product(*stage_choices(space, i).values())]
                 for i in range(7)]
    signatures = {tuple(_shapes(MobileNetV2Features(1.0, ArchDetail(stages=list(stages)))).items())
                  for stages in itertools.product(*per_stage)}
    extras = {tuple(build_extra_shapes(w) for w in combo)
              for combo in itertools.product(space.extra_widths, repeat=4)}
    return len(signatures) * len(extras) * len(space.resolutions)


def build_extra_shapes(width: float) -> tuple:
    from lpdet.models.heads import ExtraLayers

    return tuple(_shapes(ExtraLayers(1280, 1.0, True, [width] * 4)).items())


def test_space_size_counts_distinct_networks():
    # widths 0.75 and 1.0 round to the same 16 channels in the first stage; so does the 24-ch one
    space = SearchSpace(widths=[0.75, 1.0], expansions=[6], kernels=[3], depth_cuts=[0],
                        extra_widths=[0.5, 1.0], resolutions=[256, 320])
    assert space_size(space) == _brute_force_size(space) < 2 ** 7 * 2 ** 4 * 2  # raw combinations
    full = SearchSpace()
    assert space_size(full) == 940_369_969_152  # the figure in README's "Search space"
    assert space_size(SearchSpace(arch="mobilenet_v1_ssd")) == 78_732


@pytest.mark.parametrize("arch", ["mobilenet_v2_ssdlite", "mobilenet_v1_ssd"])
def test_extremes_and_samples_are_in_the_space_and_aligned(arch):
    space = SearchSpace(arch=arch, resolutions=[128, 160])
    small, large = smallest_candidate(space), largest_candidate(space)
    samples = [sample_candidate(space, random.Random(seed)) for seed in range(2)]
    assert sample_candidate(space, random.Random(0)) == samples[0]
    params = []
    for candidate in [small, large, *samples]:
        check_in_space(candidate, space)
        detector = build_detector(to_model_config(candidate, 3))
        assert geometry_problems(detector) == []
        params.append(sum(p.numel() for p in detector.parameters()))
    assert min(params) == params[0] and max(params) == params[1] and params[0] < params[1]


def test_geometry_check_rejects_a_misaligned_channel_count_only():
    detector = build_detector(ModelConfig("mobilenet_v2_ssdlite", num_classes=3, resolution=96))
    assert geometry_problems(detector) == []  # prediction outputs (anchors x 4 classes) are not flagged
    detector.extras.blocks[0] = ssdlite_extra_block(1280, 12, 512)
    assert geometry_problems(detector) == [
        "extras.blocks.0.0.0: 12 output channels not a multiple of 8",
        "extras.blocks.0.1.0: 12 output channels not a multiple of 8",
    ]
    check_geometry(ModelConfig("mobilenet_v2_ssdlite", num_classes=3, resolution=96, detail=default_detail("mobilenet_v2_ssdlite")))


def test_out_of_space_values_name_the_key_and_the_allowed_values():
    space = SearchSpace()
    candidate = largest_candidate(space)
    candidate.detail.stages[3].expansion = 5
    with pytest.raises(LpdetError, match=r"candidate.detail.stages\[3\].expansion: 5 is not in the search space; allowed: 3, 4, 6"):
        check_in_space(candidate, space)
    candidate = largest_candidate(space)
    candidate.resolution = 300
    with pytest.raises(LpdetError, match="resolution: 300 .* allowed: 224, 256, 288, 320"):
        check_in_space(candidate, space)


@pytest.mark.parametrize("content, message", [
    ({"arch": "mobilenet_v2_ssdlite", "resolution": 320, "colour": 1}, r"unknown key\(s\) \['colour'\]"),
    ({"arch": "resnet", "resolution": 320}, "arch: unknown architecture 'resnet'"),
    ({"arch": "mobilenet_v2_ssdlite", "resolution": 8}, "resolution: must be a whole number >= 32"),
    ({"arch": "mobilenet_v2_ssdlite", "resolution": 320, "detail": {"stages": [{}] * 3}}, "detail.stages: .* has 7 stages"),
    ({"arch": "mobilenet_v2_ssdlite", "resolution": 320,
      "detail": {"stages": [{"expansion": 1}] + [{"kernel": 4}] * 6}}, r"detail.stages\[1\].kernel: must be one of 3, 5, 7, got 4"),
    ({"arch": "mobilenet_v2_ssdlite", "resolution": 320,
      "detail": {"stages": [{"expansion": 1}] + [{"depth": 9}] * 6}}, r"detail.stages\[1\].depth: must be a whole number from 1 to 2"),
    ({"arch": "mobilenet_v1_ssd", "resolution": 320,
      "detail": {"stages": [{"expansion": 1, "depth": d} for d in (1, 2, 2, 6, 2)], "extra_widths": [1.0]}},
     r"detail.extra_widths: need 4 numbers > 0"),
    ({"arch": "mobilenet_v1_ssd", "resolution": 320,
      "detail": {"stages": [{"expansion": 1, "depth": d, "kernel": 5} for d in (1, 2, 2, 6, 2)]}},
     r"detail.stages\[0\].kernel: fixed at 3 in mobilenet_v1_ssd"),
])
def test_bad_candidate_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "cand.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(LpdetError, match=message) as error:
        load_candidate(path)
    assert str(path) in str(error.value)


def test_a_candidate_file_without_detail_is_the_standard_network(tmp_path):
    path = tmp_path / "cand.yaml"
    path.write_text("arch: mobilenet_v1_ssd\nresolution: 256\n")
    candidate = load_candidate(path)
    assert candidate == ArchCandidate("mobilenet_v1_ssd", 256, default_detail("mobilenet_v1_ssd"))
    with pytest.raises(LpdetError, match="file not found"):
        load_candidate(tmp_path / "missing.yaml")
