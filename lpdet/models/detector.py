"""`Detector`: input normalisation + backbone + extra layers + prediction heads + anchors."""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.fx
from torch import Tensor, nn

from lpdet.errors import LpdetError
from lpdet.models.anchors import anchors_for
from lpdet.models.config import MIN_RESOLUTION, ModelConfig, is_resolution, kept_anchors
from lpdet.models.heads import ExtraLayers, PredictionHead
from lpdet.models.layers import init_conv_bn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Strides of the six SSD maps: two from the backbone, four from the extra layers.
FEATURE_STRIDES = (16, 32, 64, 128, 256, 512)
# Classification bias prior: background starts at this probability, so the first steps are
# not swamped by the loss of ~all anchors confidently predicting random classes.
BACKGROUND_PRIOR = 0.99


def check_input(images: Tensor, resolution: int) -> None:
    """Raise a clear error unless `images` is float [B, 3, R, R]."""
    if torch.jit.is_tracing():  # legacy ONNX export: shapes are fixed by the example input
        return
    if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (resolution, resolution):
        raise LpdetError(
            f"model input must be [B, 3, {resolution}, {resolution}], got {list(images.shape)}; "
            f"resize images to {resolution}x{resolution} or call set_resolution()"
        )
    if not images.is_floating_point():
        raise LpdetError(f"model input must be float in [0, 1], got {images.dtype}; convert with .float() / 255")


# A leaf for torch.fx (FX-mode QAT): the shape check stays a single call in the traced graph
# instead of Python control flow on symbolic shapes, which FX cannot trace.
torch.fx.wrap("check_input")


def downsampled_size(size: int, stride: int) -> int:
    """Map size after log2(stride) 3×3 stride-2 convs with padding 1 (each gives ceil(n / 2))."""
    for _ in range(int(math.log2(stride))):
        size = (size + 1) // 2
    return size


class Detector(nn.Module):
    """SSD / SSDLite detector. `forward(images [B, 3, R, R] in [0, 1])` returns
    `(cls_logits [B, A, K+1], box_deltas [B, A, 4])` in the order of `self.anchors [A, 4]`.

    Training on CPU is ~1.6× faster in channels_last: `detector.to(memory_format=torch.channels_last)`
    (inputs may stay NCHW; the first conv switches format). Save its weights with
    `contiguous_state_dict()`: safetensors refuses channels_last tensors.
    """

    def __init__(
        self,
        config: ModelConfig,
        backbone: nn.Module,
        extras: ExtraLayers,
        cls_head: PredictionHead,
        box_head: PredictionHead,
    ):
        super().__init__()
        self.config = dataclasses.replace(config)
        self.backbone = backbone
        self.extras = extras
        self.cls_head = cls_head
        self.box_head = box_head
        # Non-persistent: constants, kept out of state dicts so that checkpoints transfer
        # between resolutions (anchors) and stay pure weights.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("anchors", self._anchors(config.resolution), persistent=False)
        self.init_weights()

    @property
    def num_classes(self) -> int:
        """K, the number of object classes (background excluded)."""
        return self.config.num_classes

    def feature_map_sizes(self, resolution: int | None = None) -> list[tuple[int, int]]:
        """(H, W) of the six SSD maps for a square input (conv arithmetic, no forward pass)."""
        resolution = self.config.resolution if resolution is None else resolution
        return [(downsampled_size(resolution, s), downsampled_size(resolution, s)) for s in FEATURE_STRIDES]

    def _anchors(self, resolution: int) -> Tensor:
        reference = self.config.anchor_reference or resolution
        return anchors_for(self.feature_map_sizes(resolution), self.config.min_scale, self.config.max_scale,
                           grid=self.config.anchor_grid, strides=FEATURE_STRIDES, resolution=resolution,
                           size_scale=reference / resolution)

    def set_resolution(self, resolution: int) -> None:
        """Switch the input size: recompute anchors, which keep their sizes in pixels (`kept_anchors`:
        the weights regress boxes from what objects look like in pixels)."""
        if not is_resolution(resolution):
            raise LpdetError(f"resolution: must be an integer >= {MIN_RESOLUTION}, got {resolution!r}")
        self.config = dataclasses.replace(self.config, resolution=resolution, **kept_anchors(self.config))
        self.anchors = self._anchors(resolution).to(self.anchors.device)

    def init_weights(self) -> None:
        """From-scratch initialisation (a loaded backbone overwrites its part)."""
        init_conv_bn(self)
        # Small output weights so the biases below set the initial predictions.
        for conv in self.cls_head.output_convs() + self.box_head.output_convs():
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        # softmax = BACKGROUND_PRIOR for background when the K others have logit 0.
        k = self.num_classes
        background_logit = math.log(BACKGROUND_PRIOR * k / (1 - BACKGROUND_PRIOR))
        with torch.no_grad():
            for conv in self.cls_head.output_convs():
                conv.bias.view(-1, k + 1)[:, 0] = background_logit

    def contiguous_state_dict(self) -> dict[str, Tensor]:
        """`state_dict()` with every tensor contiguous (what safetensors.save_file accepts)."""
        return {name: t.contiguous() for name, t in self.state_dict().items()}

    def extract_features(self, images: Tensor) -> list[Tensor]:
        """The six SSD feature maps, largest first."""
        check_input(images, self.config.resolution)
        x = (images - self.mean) / self.std
        stride16, stride32 = self.backbone(x)
        return [stride16, stride32, *self.extras(stride32)]

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        maps = self.extract_features(images)
        return self.cls_head(maps), self.box_head(maps)
