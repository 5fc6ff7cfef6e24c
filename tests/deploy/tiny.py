"""Tiny models for the deploy/quant tests: a float checkpoint whose detections are not all background."""

from __future__ import annotations

from pathlib import Path

import torch

from lpdet.models.config import ModelConfig
from lpdet.models.registry import build_detector
from lpdet.models.checkpoint_format import save_checkpoint

CLASS_NAMES = ["circle", "square", "triangle"]
CATEGORY_IDS = [1, 2, 3]


def tiny_detector(resolution: int = 96, width: float = 0.25, arch: str = "mobilenet_v2_ssdlite",
                  num_classes: int = 3, seed: int = 0):
    """A random detector with informative outputs: head output convs re-initialised with a large
    std (the default init makes every score the background prior) and non-trivial BN statistics."""
    torch.manual_seed(seed)
    detector = build_detector(ModelConfig(arch, num_classes, width=width, resolution=resolution))
    with torch.no_grad():
        for m in detector.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
        for conv in detector.cls_head.output_convs() + detector.box_head.output_convs():
            torch.nn.init.normal_(conv.weight, std=0.3)
            conv.bias.zero_()
    return detector.eval()


def tiny_checkpoint(path: Path, detector=None, class_names=CLASS_NAMES, category_ids=CATEGORY_IDS, **kwargs) -> Path:
    detector = detector if detector is not None else tiny_detector(**kwargs)
    return save_checkpoint(path, model=detector, model_config=detector.config, class_names=list(class_names),
                           category_ids=list(category_ids))
