"""SSD / SSDLite extra feature layers and prediction heads.

SSDLite (MobileNetV2 paper, sec. 6.2) replaces every regular 3×3 convolution of SSD's
extra layers and prediction heads with a depthwise-separable one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lpdet.models.layers import conv_bn_relu6, depthwise_conv_bn_relu6, make_divisible

# Nominal channels of the four extra feature maps (SSD paper / TF Object Detection API).
EXTRA_CHANNELS = (512, 256, 256, 128)
# The TF API's `min_depth`: no extra layer gets thinner than this at small widths.
MIN_DEPTH = 16


def extra_depth(nominal: int, width: float) -> int:
    """Channels of an extra layer: scaled by the width multiplier like the TF API's
    `depth_fn` (max(min_depth, depth·w)), but rounded to a multiple of 8 (TF truncates)
    so int8 kernels stay aligned; identical to TF for widths 0.25/0.5/0.75/1.0."""
    return max(MIN_DEPTH, make_divisible(nominal * width))


def ssd_extra_block(in_channels: int, mid_channels: int, out_channels: int) -> nn.Sequential:
    """SSD: 1×1 conv to `mid` (half the output), then a 3×3 stride-2 conv."""
    return nn.Sequential(
        conv_bn_relu6(in_channels, mid_channels, kernel_size=1),
        conv_bn_relu6(mid_channels, out_channels, kernel_size=3, stride=2),
    )


def ssdlite_extra_block(in_channels: int, mid_channels: int, out_channels: int) -> nn.Sequential:
    """SSDLite: 1×1 conv to `mid`, 3×3 depthwise stride 2, 1×1 conv to the output."""
    return nn.Sequential(
        conv_bn_relu6(in_channels, mid_channels, kernel_size=1),
        depthwise_conv_bn_relu6(mid_channels, stride=2),
        conv_bn_relu6(mid_channels, out_channels, kernel_size=1),
    )


class ExtraLayers(nn.Module):
    """Four stride-2 blocks on top of the backbone's last map; returns their four outputs."""

    def __init__(self, in_channels: int, width: float, lite: bool, layer_widths: list[float] | None = None):
        super().__init__()
        make_block = ssdlite_extra_block if lite else ssd_extra_block
        layer_widths = [1.0] * len(EXTRA_CHANNELS) if layer_widths is None else layer_widths
        blocks = []
        for nominal, layer_width in zip(EXTRA_CHANNELS, layer_widths, strict=True):
            out_channels = extra_depth(nominal, width * layer_width)
            blocks.append(make_block(in_channels, extra_depth(nominal // 2, width * layer_width), out_channels))
            in_channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = tuple(block[-1].out_channels for block in blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = []
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        return maps


def ssd_predictor(in_channels: int, out_channels: int) -> nn.Conv2d:
    """SSD: one 3×3 conv with bias."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


def ssdlite_predictor(in_channels: int, out_channels: int) -> nn.Sequential:
    """SSDLite: 3×3 depthwise + BN + ReLU6, then a 1×1 conv with bias."""
    return nn.Sequential(
        depthwise_conv_bn_relu6(in_channels),
        nn.Conv2d(in_channels, out_channels, kernel_size=1),
    )


class PredictionHead(nn.Module):
    """One predictor per feature map; outputs `[B, A, values_per_anchor]`.

    Rows are ordered feature map by feature map, row-major over (i, j), then anchor within
    the location: the order of `anchors.anchors_for`. The conv's channels are read as
    (anchor, value), i.e. channel `a * values_per_anchor + v`.
    """

    def __init__(self, in_channels: list[int], anchors_per_location: list[int], values_per_anchor: int, lite: bool):
        super().__init__()
        make_predictor = ssdlite_predictor if lite else ssd_predictor
        self.values_per_anchor = values_per_anchor
        self.anchors_per_location = list(anchors_per_location)
        self.predictors = nn.ModuleList(
            make_predictor(c, n * values_per_anchor) for c, n in zip(in_channels, anchors_per_location, strict=True)
        )

    def output_convs(self) -> list[nn.Conv2d]:
        """The last conv of each predictor (the one producing the values), for initialisation."""
        return [p if isinstance(p, nn.Conv2d) else p[-1] for p in self.predictors]

    def forward(self, maps: list[Tensor]) -> Tensor:
        outputs = []
        for feature_map, predictor in zip(maps, self.predictors):
            y = predictor(feature_map)  # [B, n·V, H, W]
            # NHWC then split channels into (anchor, value): free when y is channels_last.
            y = y.permute(0, 2, 3, 1).reshape(y.shape[0], -1, self.values_per_anchor)
            outputs.append(y)
        return torch.cat(outputs, dim=1)
