"""Small building blocks shared by the backbones and the SSD heads."""

from __future__ import annotations

from torch import nn
from torchvision.ops.misc import Conv2dNormActivation


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """`value` rounded to the nearest multiple of `divisor`, never more than 10% below it.

    Phone CPUs/NPUs and int8 kernels process channels in groups of 8 (or more); a channel
    count that is not a multiple wastes lanes. Same rule as TF-Slim / torchvision MobileNets.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv_bn_relu6(
    in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1
) -> Conv2dNormActivation:
    """Conv2d (no bias) + BatchNorm2d + ReLU6: the triple that int8 QAT fuses into one op.

    Submodules are `.0` (conv) and `.1` (BN), torchvision's layout, so ImageNet state dicts load.
    """
    return Conv2dNormActivation(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        stride=stride,
        groups=groups,
        norm_layer=nn.BatchNorm2d,
        activation_layer=nn.ReLU6,
    )


def depthwise_conv_bn_relu6(channels: int, stride: int = 1) -> Conv2dNormActivation:
    """3×3 depthwise Conv2d + BN + ReLU6."""
    return conv_bn_relu6(channels, channels, kernel_size=3, stride=stride, groups=channels)
