"""The layers an `ArchDetail` changes: MobileNetV2 stages (through torchvision's own builder),
MobileNetV1's block widths, and where the SSD maps sit in the feature list."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual

from lpdet.models.arch_detail import MOBILENET_V2_SPLIT_STAGE, MOBILENET_V2_STAGES, ArchDetail, StageDetail
from lpdet.models.layers import conv_bn_relu6


def mobilenet_v2_options(detail: ArchDetail | None) -> dict:
    """Keyword arguments of torchvision's `MobileNetV2` that build `detail`'s stages ({} for the
    standard network). Stage widths scale the nominal channels before torchvision rounds
    `c · width_mult` to a multiple of 8; the depthwise kernel is set per block by `block`."""
    if detail is None:
        return {}
    setting = [[stage.expansion, row.channels * stage.width, stage.depth, row.stride]
               for row, stage in zip(MOBILENET_V2_STAGES, detail.stages)]
    kernels = iter([stage.kernel for stage in detail.stages for _ in range(stage.depth)])
    return {"inverted_residual_setting": setting, "block": _block_with_kernels(kernels)}


def _block_with_kernels(kernels) -> Callable[..., nn.Module]:
    """torchvision's `block` hook: its InvertedResidual, with the next kernel size for its
    depthwise conv (torchvision builds the blocks in order, so `kernels` is consumed in order)."""

    def block(inp: int, oup: int, stride: int, expand_ratio: int, norm_layer=None) -> nn.Module:
        residual = InvertedResidual(inp, oup, stride, expand_ratio, norm_layer)
        kernel = next(kernels)
        if kernel != 3:  # the depthwise conv is the third-last module: ..., dw, pw-linear, BN
            hidden = residual.conv[-3][0].in_channels
            residual.conv[-3] = conv_bn_relu6(hidden, hidden, kernel_size=kernel, stride=stride, groups=hidden)
        return residual

    return block


def mobilenet_v2_block_index(stages: list[StageDetail], stage: int, block: int) -> int:
    """Index in `features` of block `block` of stage `stage` (index 0 is the stem)."""
    return 1 + sum(s.depth for s in stages[:stage]) + block


def mobilenet_v2_split_block(detail: ArchDetail | None) -> int:
    """Index in `features` of the first block of the 160-channel stage (the stride-16 SSD map)."""
    if detail is None:
        return mobilenet_v2_block_index([StageDetail(depth=r.depth) for r in MOBILENET_V2_STAGES],
                                        MOBILENET_V2_SPLIT_STAGE, 0)
    return mobilenet_v2_block_index(detail.stages, MOBILENET_V2_SPLIT_STAGE, 0)


def mobilenet_v1_block_widths(detail: ArchDetail | None, num_blocks: int) -> list[float]:
    """Relative width of each of MobileNetV1's blocks (its stage's width; 1.0 without a detail)."""
    if detail is None:
        return [1.0] * num_blocks
    return [stage.width for stage in detail.stages for _ in range(stage.depth)]

