"""`ArchDetail`: the per-stage shape of a MobileNet-SSD (what the architecture search varies).

`ModelConfig.detail` holds one (or None: the standard network). Widths here are *relative* to
`ModelConfig.width`, so the default detail (every width 1.0, MobileNetV2's expansion 6, 3×3
depthwise kernels, every stage at its full depth) builds exactly the standard network at any
width: same parameter names, same shapes. Every channel count is
`make_divisible(nominal · width · stage width, 8)`, MobileNetV2's rounding.

MobileNetV2 stages are the seven rows of its paper's Table 2 (t, c, n, s); the stem follows
`ModelConfig.width` alone and the final 1280-channel 1×1 conv is not shrunk (as in the paper).
MobileNetV1's stages are its runs of equal-width blocks (64 | 128×2 | 256×2 | 512×6 | 1024×2);
only their width varies (expansion, kernel and depth have no meaning there and stay fixed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lpdet.errors import LpdetError
from lpdet.serialize import is_number


@dataclass(frozen=True)
class StageRow:
    """One nominal stage: expansion t, output channels c, blocks n, first block's stride s."""

    expansion: int
    channels: int
    depth: int
    stride: int


# MobileNetV2 (Sandler et al. 2018, Table 2); torchvision's `inverted_residual_setting`.
MOBILENET_V2_STAGES = (
    StageRow(1, 16, 1, 1),
    StageRow(6, 24, 2, 2),
    StageRow(6, 32, 3, 2),
    StageRow(6, 64, 4, 2),
    StageRow(6, 96, 3, 1),
    StageRow(6, 160, 3, 2),
    StageRow(6, 320, 1, 1),
)
# The stage whose first block's expansion output is the stride-16 SSD map (the 160-channel one).
MOBILENET_V2_SPLIT_STAGE = 5
# MobileNetV1's blocks grouped into stages of equal width (`backbones.MOBILENET_V1_BLOCKS`).
MOBILENET_V1_STAGE_DEPTHS = (1, 2, 2, 6, 2)
NUM_EXTRA_LAYERS = 4
KERNEL_SIZES = (3, 5, 7)


@dataclass
class StageDetail:
    width: float = 1.0  # relative to ModelConfig.width
    expansion: int = 6  # hidden channels = input channels × expansion (MobileNetV2 only)
    kernel: int = 3  # depthwise kernel (MobileNetV2 only)
    depth: int = 1  # blocks kept, the first ones of the stage (MobileNetV2 only)


@dataclass
class ArchDetail:
    stages: list[StageDetail] = field(default_factory=list)
    extra_widths: list[float] = field(default_factory=lambda: [1.0] * NUM_EXTRA_LAYERS)  # relative widths


def is_mobilenet_v2(arch: str) -> bool:
    return arch.startswith("mobilenet_v2")


def default_stages(arch: str) -> list[StageDetail]:
    """The standard network's stages for `arch`."""
    if is_mobilenet_v2(arch):
        return [StageDetail(1.0, row.expansion, 3, row.depth) for row in MOBILENET_V2_STAGES]
    return [StageDetail(1.0, 1, 3, depth) for depth in MOBILENET_V1_STAGE_DEPTHS]


def default_detail(arch: str) -> ArchDetail:
    """The detail that builds exactly the standard `arch` network."""
    return ArchDetail(stages=default_stages(arch))


def check_detail(detail: ArchDetail, arch: str, where: str = "model.detail") -> None:
    """Raise `LpdetError` naming the first field of `detail` that `arch` cannot be built with."""
    defaults = default_stages(arch)
    if not isinstance(detail.stages, list) or len(detail.stages) != len(defaults):
        raise LpdetError(f"{where}.stages: {arch} has {len(defaults)} stages, got "
                         f"{len(detail.stages) if isinstance(detail.stages, list) else detail.stages!r}")
    widths = detail.extra_widths
    if not isinstance(widths, list) or len(widths) != NUM_EXTRA_LAYERS or not all(_positive(w) for w in widths):
        raise LpdetError(f"{where}.extra_widths: need {NUM_EXTRA_LAYERS} numbers > 0 (e.g. 0.5, 0.75, 1.0), got {widths!r}")
    for index, (stage, default) in enumerate(zip(detail.stages, defaults)):
        key = f"{where}.stages[{index}]"
        if not isinstance(stage, StageDetail):
            raise LpdetError(f"{key}: expected a mapping with width, expansion, kernel, depth; got {stage!r}")
        if not _positive(stage.width):
            raise LpdetError(f"{key}.width: must be a number > 0 (e.g. 0.5, 0.75, 1.0), got {stage.width!r}")
        if not is_mobilenet_v2(arch) or index == 0:
            _check_fixed(stage, default, key, arch)
            continue
        if not _whole(stage.expansion) or stage.expansion < 1:
            raise LpdetError(f"{key}.expansion: must be a whole number >= 1 (e.g. 3, 4, 6), got {stage.expansion!r}")
        if stage.kernel not in KERNEL_SIZES:
            raise LpdetError(f"{key}.kernel: must be one of {', '.join(map(str, KERNEL_SIZES))}, got {stage.kernel!r}")
        if not _whole(stage.depth) or not 1 <= stage.depth <= default.depth:
            raise LpdetError(f"{key}.depth: must be a whole number from 1 to {default.depth}, got {stage.depth!r}")


def _check_fixed(stage: StageDetail, default: StageDetail, key: str, arch: str) -> None:
    """MobileNetV1 stages and MobileNetV2's first (t = 1) stage vary only in width (and V2's kernel)."""
    kernel_ok = stage.kernel in KERNEL_SIZES if is_mobilenet_v2(arch) else stage.kernel == default.kernel
    for name, ok in (("expansion", stage.expansion == default.expansion), ("kernel", kernel_ok),
                     ("depth", stage.depth == default.depth)):
        if not ok:
            raise LpdetError(f"{key}.{name}: fixed at {getattr(default, name)} in {arch}, got {getattr(stage, name)!r}")


def _positive(value: object) -> bool:
    return is_number(value) and value > 0


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
