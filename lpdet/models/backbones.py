"""MobileNet feature extractors (and the plain-conv body of the standard-convolution classifier)
returning the two backbone maps SSD predicts from.

Both return `(stride16_map, stride32_map)`. Every downsampling layer is a 3×3 stride-2
convolution with padding 1, so a map of size n becomes ceil(n / 2) (TF "SAME" padding);
`Detector.feature_map_sizes` relies on this.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.mobilenetv2 import MobileNetV2

from lpdet.models.arch_blocks import mobilenet_v1_block_widths, mobilenet_v2_options, mobilenet_v2_split_block
from lpdet.models.arch_detail import ArchDetail
from lpdet.models.layers import conv_bn_relu6, depthwise_conv_bn_relu6, make_divisible

# (output channels, stride) of MobileNetV1's 13 depthwise-separable blocks (conv1..conv13).
MOBILENET_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),  # conv11: the stride-16 SSD feature map
    (1024, 2),
    (1024, 1),  # conv13: the stride-32 SSD feature map
)
MOBILENET_V1_STEM_CHANNELS = 32


class TwoMapFeatures(nn.Module):
    """A body run layer by layer (`features`) returning the outputs of `output_indices` (stride 16, 32)."""

    output_indices: tuple[int, int]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        maps = []
        # A loop over a fixed module list (not `features[:12]`): slicing builds a new,
        # unregistered Sequential, which torch.fx (used by QAT) cannot trace.
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.output_indices:
                maps.append(x)
        return maps[0], maps[1]


class MobileNetV1Features(TwoMapFeatures):
    """MobileNetV1 body (Howard et al. 2017) with a width (depth) multiplier.

    ImageNet state-dict layout (ours; MobileNetV1 is not in torchvision), mirroring
    torchvision's MobileNetV2:
      - `features.0.0.weight`, `features.0.1.*`: stem 3×3 stride-2 conv and its BN;
      - `features.{i}.0.0.weight`, `features.{i}.0.1.*` (i = 1..13): block i's 3×3 depthwise
        conv and its BN; `features.{i}.1.0.weight`, `features.{i}.1.1.*`: its 1×1 pointwise
        conv and BN;
      - a classifier, if present (e.g. `classifier.1.*`), is ignored by the detector.
    Channels are `make_divisible(c * width, 8)`. Returns conv11 (512·w ch, stride 16) and
    conv13 (1024·w ch, stride 32). A `detail` scales each stage's blocks by its stage width.
    """

    # Indices into `features` whose outputs are the SSD maps: conv11 and conv13.
    output_indices = (11, 13)

    def __init__(self, width: float = 1.0, detail: ArchDetail | None = None):
        super().__init__()
        in_channels = make_divisible(MOBILENET_V1_STEM_CHANNELS * width)
        layers: list[nn.Module] = [conv_bn_relu6(3, in_channels, stride=2)]
        block_widths = mobilenet_v1_block_widths(detail, len(MOBILENET_V1_BLOCKS))
        for (channels, stride), block_width in zip(MOBILENET_V1_BLOCKS, block_widths, strict=True):
            out_channels = make_divisible(channels * width * block_width)
            layers.append(
                nn.Sequential(
                    depthwise_conv_bn_relu6(in_channels, stride=stride),
                    conv_bn_relu6(in_channels, out_channels, kernel_size=1),
                )
            )
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.out_channels = tuple(self.features[i][1].out_channels for i in self.output_indices)


# (output channels, stride) of the plain-conv body: VGG-like 3x3 convs, no depthwise layer; the
# standard-convolution row of Table 11.1 (the seed's InceptionV3 plays that role).
PLAIN_CONV_LAYERS: tuple[tuple[int, int], ...] = (
    (32, 2), (64, 1), (64, 2), (128, 1), (128, 2), (256, 1), (256, 2), (512, 1), (512, 2), (512, 1),
)



class PlainConvFeatures(TwoMapFeatures):
    """A plain-convolution body (Conv-BN-ReLU6, standard 3x3 convs) returning ``(stride16, stride32)``
    maps like the MobileNet bodies, so it takes the same heads."""

    output_indices = (7, 9)

    def __init__(self, width: float = 1.0, detail=None):
        super().__init__()
        layers, in_channels = [], 3
        for channels, stride in PLAIN_CONV_LAYERS:
            out_channels = make_divisible(channels * width)
            layers.append(conv_bn_relu6(in_channels, out_channels, stride=stride))
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.out_channels = tuple(self.features[i].out_channels for i in self.output_indices)


class MobileNetV2Features(nn.Module):
    """torchvision's MobileNetV2 body (`features.*`, so its ImageNet state dicts load as is).

    Returns the expansion output of the first stride-32 block (`features.14.conv.0`, the
    paper's layer 15: 576·w ch at stride 16; SSDLite attaches there, like torchvision's
    SSDLite-MobileNetV3 split) and the final 1×1 conv (1280 ch at stride 32, not shrunk when
    width < 1, as in the paper). A `detail` sets each stage's width, expansion, depthwise
    kernel and depth (`lpdet.models.arch_detail`); the split block moves with the depths.
    """

    # The first inverted residual of the 160-channel, stride-2 stage (features.14 at full depth).
    split_block = 14

    def __init__(self, width: float = 1.0, detail: ArchDetail | None = None):
        super().__init__()
        # num_classes=1: the classifier is discarded; avoid initialising a 1280×1000 matrix.
        self.features = MobileNetV2(num_classes=1, width_mult=width, **mobilenet_v2_options(detail)).features
        self.split_block = mobilenet_v2_split_block(detail)
        block = self.features[self.split_block]
        assert block.stride == 2 and not block.use_res_connect, "split block must be the stride-2 one"
        self.out_channels = (block.conv[0].out_channels, self.features[-1].out_channels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        for index, layer in enumerate(self.features):
            if index == self.split_block:
                # Run the block in two halves to expose its expansion output.
                # (No residual here: the block has stride 2.)
                stride16 = layer.conv[0](x)
                x = stride16
                for part in list(layer.conv)[1:]:
                    x = part(x)
            else:
                x = layer(x)
        return stride16, x
