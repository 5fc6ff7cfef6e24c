"""`Classifier`: input normalisation + a backbone (the detectors' MobileNet bodies, or a plain-conv
body) + global average pooling + a 1x1-conv classification layer. Same input contract as the
`Detector` (float ``[B, 3, R, R]`` in ``[0, 1]``, ImageNet normalisation inside); `forward` returns
logits ``[B, K]``. Its ``backbone.*`` weights load into a detector of the same family and width
(`lpdet.models.registry.load_backbone_weights`), which is how the seed's detectors started."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lpdet.models.config import ModelConfig
from lpdet.models.detector import IMAGENET_MEAN, IMAGENET_STD, check_input
from lpdet.models.layers import init_conv_bn


class GlobalAvgPool(nn.Module):
    """Mean over the spatial dimensions, keeping them (``[B, C, 1, 1]``): ONNX ``GlobalAveragePool``;
    QAT gives it an output quantizer (`lpdet.quant.fake_quant.QGlobalAvgPool`)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x, 1)


class Classifier(nn.Module):
    """Backbone (its stride-32 map) -> global average pool -> 1x1 conv to K logits."""

    def __init__(self, config: ModelConfig, backbone: nn.Module):
        super().__init__()
        self.config = dataclasses.replace(config)
        self.backbone = backbone
        self.pool = GlobalAvgPool()
        self.fc = nn.Conv2d(backbone.out_channels[-1], config.num_classes, kernel_size=1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.init_weights()

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def init_weights(self) -> None:
        init_conv_bn(self)
        nn.init.normal_(self.fc.weight, std=0.01)

    def contiguous_state_dict(self) -> dict[str, Tensor]:
        """`state_dict()` with every tensor contiguous (what safetensors.save_file accepts)."""
        return {name: t.contiguous() for name, t in self.state_dict().items()}

    def forward(self, images: Tensor) -> Tensor:
        check_input(images, self.config.resolution)
        _, x = self.backbone((images - self.mean) / self.std)
        return self.fc(self.pool(x)).flatten(1)
