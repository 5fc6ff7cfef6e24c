"""The architecture search space: its choices, its candidates (YAML files), their size and checks.

A candidate (`ArchCandidate`: arch, resolution, width, `ArchDetail`) becomes a `ModelConfig` with
`to_model_config` and builds with the normal `build_detector`. MobileNetV2-SSDLite varies, per
stage, the width (relative), expansion ratio, depthwise kernel and depth (its n or n − 1 blocks),
plus the four extra layers' widths and the input resolution; MobileNetV1-SSD varies the stage
widths, extra widths and resolution. Every channel count is rounded to a multiple of 8
(`make_divisible`), and `check_geometry` applies `lpdet.models.profile`'s multiple-of-8 check to
the built candidate: a misaligned channel count rejects it. Spatial sizes depend only on the
resolution (the resolution experiment's question) and the prediction convs' outputs on the
anchors × classes, so neither rejects a candidate.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from lpdet.errors import LpdetError
from lpdet.models.arch_detail import (
    MOBILENET_V2_STAGES,
    NUM_EXTRA_LAYERS,
    ArchDetail,
    StageDetail,
    check_detail,
    default_stages,
    is_mobilenet_v2,
)
from lpdet.models.config import ModelConfig, check_resolution, kept_anchors
from lpdet.models.detector import Detector
from lpdet.models.heads import EXTRA_CHANNELS, extra_depth
from lpdet.models.layers import make_divisible
from lpdet.models.profile import profile_detector
from lpdet.models.registry import ARCHITECTURES, build_detector
from lpdet.serialize import from_dict, load_mapping

# Classes a candidate is checked with when its dataset is not known yet (COCO's 90): the class
# count only sizes the prediction convs' outputs, which the geometry check leaves out anyway.
CHECK_NUM_CLASSES = 90


@dataclass
class SearchSpace:
    arch: str = "mobilenet_v2_ssdlite"
    widths: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0])  # per stage, relative
    expansions: list[int] = field(default_factory=lambda: [3, 4, 6])  # MobileNetV2 stages after the first
    kernels: list[int] = field(default_factory=lambda: [3, 5])  # MobileNetV2 depthwise kernels
    depth_cuts: list[int] = field(default_factory=lambda: [0, 1])  # blocks dropped from a stage's end (n or n-1)
    extra_widths: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0])  # per extra layer, relative
    resolutions: list[int] = field(default_factory=lambda: [224, 256, 288, 320])


@dataclass
class ArchCandidate:
    """One point of the space, as written to and read from a candidate YAML file."""

    arch: str
    resolution: int
    detail: ArchDetail
    width: float = 1.0  # global width multiplier; the detail's widths are relative to it


def to_model_config(candidate: ArchCandidate, num_classes: int) -> ModelConfig:
    """The `ModelConfig` that builds `candidate` for `num_classes` classes."""
    return ModelConfig(candidate.arch, num_classes=num_classes, width=candidate.width,
                       resolution=candidate.resolution, detail=candidate.detail)


def member_config(candidate: ArchCandidate, supernet: ModelConfig) -> ModelConfig:
    """`candidate` as a member of the super-network `supernet`: its classes, and its anchors kept at
    the supernet's sizes in pixels (`kept_anchors`), whatever the candidate's resolution."""
    return replace(to_model_config(candidate, supernet.num_classes), **kept_anchors(supernet))


def stage_choices(space: SearchSpace, index: int) -> dict[str, list]:
    """The values each field of stage `index` may take (a fixed field: its one value)."""
    default = default_stages(space.arch)[index]
    if not is_mobilenet_v2(space.arch):
        return {"width": list(space.widths), "expansion": [1], "kernel": [3], "depth": [default.depth]}
    depths = sorted({default.depth - cut for cut in space.depth_cuts if default.depth - cut >= 1})
    first = index == 0  # t = 1: no expansion to vary, one block
    return {"width": list(space.widths), "expansion": [default.expansion] if first else list(space.expansions),
            "kernel": list(space.kernels), "depth": depths}


def smallest_candidate(space: SearchSpace) -> ArchCandidate:
    return _extreme(space, min)


def largest_candidate(space: SearchSpace) -> ArchCandidate:
    """The super-network every candidate inherits its weights from (`lpdet.models.inherit`)."""
    return _extreme(space, max)


def _extreme(space: SearchSpace, pick) -> ArchCandidate:
    stages = [StageDetail(**{name: pick(values) for name, values in stage_choices(space, i).items()})
              for i in range(len(default_stages(space.arch)))]
    detail = ArchDetail(stages=stages, extra_widths=[pick(space.extra_widths)] * NUM_EXTRA_LAYERS)
    return ArchCandidate(space.arch, pick(space.resolutions), detail)


def sample_candidate(space: SearchSpace, rng: random.Random) -> ArchCandidate:
    """A candidate with every choice drawn uniformly by `rng`."""
    stages = [StageDetail(**{name: rng.choice(values) for name, values in stage_choices(space, i).items()})
              for i in range(len(default_stages(space.arch)))]
    detail = ArchDetail(stages=stages, extra_widths=[rng.choice(space.extra_widths) for _ in range(NUM_EXTRA_LAYERS)])
    return ArchCandidate(space.arch, rng.choice(space.resolutions), detail)


def space_size(space: SearchSpace, width: float = 1.0) -> int:
    """How many distinct networks the space holds: choices that round to the same channel counts
    (e.g. widths 0.75 and 1.0 of a 16-channel stage both give 16) count once."""
    size = len(set(space.resolutions))
    # A stage's shape is fixed by its own choices (its input is the previous stage's output), so
    # the count is a product over stages and extra layers.
    for index in range(len(default_stages(space.arch))):
        choices = stage_choices(space, index)
        shapes = {(_stage_channels(space.arch, index, width * w), t, k, d)
                  for w in choices["width"] for t in choices["expansion"]
                  for k in choices["kernel"] for d in choices["depth"]}
        size *= len(shapes)
    for nominal in EXTRA_CHANNELS:
        size *= len({(extra_depth(nominal // 2, width * w), extra_depth(nominal, width * w)) for w in space.extra_widths})
    return size


def _stage_channels(arch: str, index: int, width: float) -> int:
    if is_mobilenet_v2(arch):
        return make_divisible(MOBILENET_V2_STAGES[index].channels * width)
    return make_divisible((64, 128, 256, 512, 1024)[index] * width)


def check_in_space(candidate: ArchCandidate, space: SearchSpace, where: str = "candidate") -> None:
    """Raise `LpdetError` naming the first value of `candidate` outside `space` and the allowed ones."""
    if candidate.arch != space.arch:
        raise LpdetError(f"{where}.arch: the space is for {space.arch}, got {candidate.arch!r}")
    _allowed(candidate.resolution, space.resolutions, f"{where}.resolution")
    _allowed(candidate.width, [1.0], f"{where}.width")
    check_detail(candidate.detail, candidate.arch, f"{where}.detail")
    for index, stage in enumerate(candidate.detail.stages):
        for name, values in stage_choices(space, index).items():
            _allowed(getattr(stage, name), values, f"{where}.detail.stages[{index}].{name}")
    for index, value in enumerate(candidate.detail.extra_widths):
        _allowed(value, space.extra_widths, f"{where}.detail.extra_widths[{index}]")


def _allowed(value: object, values: list, key: str) -> None:
    if value not in values:
        raise LpdetError(f"{key}: {value!r} is not in the search space; allowed: {', '.join(map(str, values))}")


def geometry_problems(detector: Detector) -> list[str]:
    """Why `detector` fails the multiple-of-8 channel check of `lpdet model info`
    (`profile_detector`), one line per layer; empty when it passes. The prediction convs' outputs
    (anchors × classes) and spatial sizes (the resolution's) are not the architecture's choice."""
    outputs = {f"{head}.predictors.{i}" + suffix for head in ("cls_head", "box_head")
               for i in range(len(detector.cls_head.predictors)) for suffix in ("", ".1")}
    problems = []
    for layer in profile_detector(detector).misaligned:
        reasons = [r for r in layer.reasons if "channels" in r]
        if reasons and layer.name not in outputs:
            problems.append(f"{layer.name}: {'; '.join(reasons)}")
    return problems


def check_geometry(cfg: ModelConfig, where: str = "candidate") -> None:
    """Reject (`LpdetError`) a candidate with a channel count that is not a multiple of 8."""
    problems = geometry_problems(build_detector(cfg))
    if problems:
        raise LpdetError(f"{where}: rejected, {len(problems)} layer(s) fail the multiple-of-8 check "
                         f"(first: {problems[0]}); choose widths whose channels round to multiples of 8")


def load_candidate(path: Path) -> ArchCandidate:
    """A candidate YAML/JSON file, checked: known keys, buildable values (each error names the key
    and its allowed values), multiple-of-8 channels. Its values need not be in a search space."""
    data = load_mapping(path)
    if "detail" not in data:
        data = {**data, "detail": None}
    candidate = from_dict(ArchCandidate, data, where=str(path))
    if candidate.arch not in ARCHITECTURES:
        raise LpdetError(f"{path}: arch: unknown architecture {candidate.arch!r}; choose one of {sorted(ARCHITECTURES)}")
    if candidate.detail is None:
        candidate = replace(candidate, detail=ArchDetail(stages=default_stages(candidate.arch)))
    check_resolution(candidate.resolution, f"{path}: resolution")
    check_detail(candidate.detail, candidate.arch, f"{path}: detail")
    check_geometry(to_model_config(candidate, CHECK_NUM_CLASSES), str(path))
    return candidate
