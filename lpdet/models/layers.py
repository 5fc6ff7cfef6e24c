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


def is_depthwise(conv: nn.Module) -> bool:
    """Whether `conv` is a depthwise convolution (one filter per input channel)."""
    return isinstance(conv, nn.Conv2d) and conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def make_quant_friendly(backbone: nn.Module) -> nn.Module:
    """Turn a MobileNet body into the quantization-friendly separable convolution of Sheng et al.
    2018 ("A quantization-friendly separable convolution for MobileNets", the seed's [12]), in place.

    Implemented, of the paper's three changes:
      1. every depthwise convolution loses its BatchNorm and its ReLU6: it becomes a plain linear
         3x3 depthwise conv (no bias either: a per-channel constant passes through the following
         1x1 conv into its BatchNorm's shift). With no BN to fold, no depthwise channel's weights
         are scaled by ``gamma / sqrt(var)`` — the factor that explodes for channels whose variance
         is near zero and spreads the per-tensor int8 range;
      2. every ReLU6 (the pointwise layers, and the stem) becomes a ReLU, so activation ranges are
         learnt rather than clipped at 6;
      3. L2 regularisation of the depthwise weights lives in training, not here:
         `TrainConfig.depthwise_weight_decay` (the optimizer's depthwise parameter group).
    Not implemented: the paper's choice of per-tensor fixed-point formats (lpdet's int8 scheme is
    the TFLite one in `lpdet.quant`). State-dict names of the convs are unchanged; the removed
    depthwise BatchNorms' entries are gone.
    """
    for module in backbone.modules():
        if isinstance(module, nn.Sequential) and len(module) > 0 and is_depthwise(module[0]):
            while len(module) > 1:  # the BN and activation after the depthwise conv
                del module[len(module) - 1]
    for parent in backbone.modules():
        for name, child in parent.named_children():
            if type(child) is nn.ReLU6:
                setattr(parent, name, nn.ReLU(inplace=getattr(child, "inplace", False)))
    return backbone


def init_conv_bn(model: nn.Module) -> None:
    """From-scratch initialisation of every Conv2d (Kaiming, fan-out; zero bias) and BatchNorm (1, 0)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
