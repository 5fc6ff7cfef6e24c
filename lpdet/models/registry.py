"""Architecture name → builder, `build_detector`, ImageNet backbone loading, weight transfer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from lpdet.errors import LpdetError
from lpdet.models.anchors import num_anchors_per_location
from lpdet.models.arch_detail import check_detail
from lpdet.models.backbones import MobileNetV1Features, MobileNetV2Features, PlainConvFeatures
from lpdet.models.checkpoint_format import load_checkpoint
from lpdet.models.classifier import Classifier
from lpdet.models.config import ANCHOR_GRIDS, QUANTIZATIONS, ModelConfig, check_resolution, is_qat
from lpdet.models.detector import Detector
from lpdet.models.heads import ExtraLayers, PredictionHead
from lpdet.models.layers import make_quant_friendly
from lpdet.serialize import is_number


def _assemble(cfg: ModelConfig, backbone: nn.Module, lite: bool) -> Detector:
    extras = ExtraLayers(backbone.out_channels[-1], cfg.width, lite,
                         cfg.detail.extra_widths if cfg.detail else None)
    channels = [*backbone.out_channels, *extras.out_channels]
    per_location = num_anchors_per_location()
    cls_head = PredictionHead(channels, per_location, cfg.num_classes + 1, lite)
    box_head = PredictionHead(channels, per_location, 4, lite)
    return Detector(cfg, backbone, extras, cls_head, box_head)


def build_backbone(cfg: ModelConfig, family: str) -> nn.Module:
    """The `family` ("mobilenet_v1" or "mobilenet_v2") body `cfg` describes: width, per-stage detail,
    and the quantization-friendly separable convolution when ``cfg.quant_friendly``. Shared by the
    detectors and the classifiers, so a classifier's trained body initialises a detector's."""
    backbone = BACKBONES[family](cfg.width, cfg.detail)
    return make_quant_friendly(backbone) if cfg.quant_friendly else backbone


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "mobilenet_v1": MobileNetV1Features,
    "mobilenet_v2": MobileNetV2Features,
    "plain_conv": PlainConvFeatures,
}


def mobilenet_v1_ssd(cfg: ModelConfig) -> Detector:
    return _assemble(cfg, build_backbone(cfg, "mobilenet_v1"), lite=False)


def mobilenet_v1_ssdlite(cfg: ModelConfig) -> Detector:
    return _assemble(cfg, build_backbone(cfg, "mobilenet_v1"), lite=True)


def mobilenet_v2_ssd(cfg: ModelConfig) -> Detector:
    return _assemble(cfg, build_backbone(cfg, "mobilenet_v2"), lite=False)


def mobilenet_v2_ssdlite(cfg: ModelConfig) -> Detector:
    return _assemble(cfg, build_backbone(cfg, "mobilenet_v2"), lite=True)


def _classifier(family: str) -> Callable[[ModelConfig], Classifier]:
    return lambda cfg: Classifier(cfg, build_backbone(cfg, family))


# The detectors (`lpdet train`, the design flow, the search space).
ARCHITECTURES: dict[str, Callable[[ModelConfig], Detector]] = {
    "mobilenet_v1_ssd": mobilenet_v1_ssd,
    "mobilenet_v1_ssdlite": mobilenet_v1_ssdlite,
    "mobilenet_v2_ssd": mobilenet_v2_ssd,
    "mobilenet_v2_ssdlite": mobilenet_v2_ssdlite,
}
# The classifiers (`lpdet classify`): the same bodies with a pooled 1x1-conv classification layer.
CLASSIFIER_ARCHITECTURES: dict[str, Callable[[ModelConfig], Classifier]] = {
    "mobilenet_v1_classifier": _classifier("mobilenet_v1"),
    "mobilenet_v2_classifier": _classifier("mobilenet_v2"),
    "plain_conv_classifier": _classifier("plain_conv"),
}
CLASSIFIERS = tuple(CLASSIFIER_ARCHITECTURES)


def is_classifier(cfg: ModelConfig) -> bool:
    """Whether `cfg` describes a classifier (`lpdet classify`) rather than a detector."""
    return cfg.arch in CLASSIFIERS


def backbone_family(arch: str) -> str:
    """"mobilenet_v1", "mobilenet_v2" or "plain_conv": which body `arch` is built on."""
    return next(family for family in BACKBONES if arch.startswith(family))


def validate_config(cfg: ModelConfig) -> None:
    """Raise `LpdetError` naming the first invalid option and its valid values."""
    if cfg.arch not in ARCHITECTURES and cfg.arch not in CLASSIFIER_ARCHITECTURES:
        raise LpdetError(f"model.arch: unknown architecture {cfg.arch!r}; choose one of {sorted(ARCHITECTURES)} "
                         f"(classifiers: {sorted(CLASSIFIER_ARCHITECTURES)})")
    if not isinstance(cfg.num_classes, int) or isinstance(cfg.num_classes, bool) or cfg.num_classes < 1:
        raise LpdetError(f"model.num_classes: must be an integer >= 1 (background excluded), got {cfg.num_classes!r}")
    if not is_number(cfg.width) or cfg.width <= 0:
        raise LpdetError(f"model.width: must be a number > 0 (e.g. 0.35, 0.5, 0.75, 1.0), got {cfg.width!r}")
    check_resolution(cfg.resolution, "model.resolution")
    scales_ok = is_number(cfg.min_scale) and is_number(cfg.max_scale) and 0 < cfg.min_scale < cfg.max_scale
    if not scales_ok:
        raise LpdetError(
            f"model.min_scale/max_scale: need 0 < min_scale < max_scale (default 0.2, 0.95), "
            f"got {cfg.min_scale!r}, {cfg.max_scale!r}"
        )
    if cfg.anchor_grid not in ANCHOR_GRIDS:
        raise LpdetError(f"model.anchor_grid: must be one of {', '.join(ANCHOR_GRIDS)}, got {cfg.anchor_grid!r}")
    if cfg.anchor_reference is not None:
        check_resolution(cfg.anchor_reference, "model.anchor_reference")
    if cfg.detail is not None:
        check_detail(cfg.detail, cfg.arch)
    if not isinstance(cfg.quant_friendly, bool):
        raise LpdetError(f"model.quant_friendly: must be true or false, got {cfg.quant_friendly!r}")
    if cfg.quant_friendly and backbone_family(cfg.arch) == "plain_conv":
        raise LpdetError(f"model.quant_friendly: {cfg.arch} has no separable convolutions; drop --quant-friendly "
                         f"or use a MobileNet")
    if is_classifier(cfg) and cfg.num_classes < 2:
        raise LpdetError(f"model.num_classes: a classifier needs at least 2 classes, got {cfg.num_classes}")
    if cfg.quantization not in QUANTIZATIONS:
        raise LpdetError(f"model.quantization: must be one of {', '.join(QUANTIZATIONS)}, got {cfg.quantization!r}")


def build_detector(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised float model for `cfg` (validated first): a `Detector`, or a `Classifier`
    for the classifier architectures. A QAT config is built float here; `lpdet.quant.qat.build_model`
    builds it quantization-aware."""
    validate_config(cfg)
    if is_qat(cfg):
        cfg = replace(cfg, quantization="fp32")
    return {**ARCHITECTURES, **CLASSIFIER_ARCHITECTURES}[cfg.arch](cfg)


def _read_state_dict(path: Path) -> Mapping[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise LpdetError(f"{path}: backbone weights file not found; check the path")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with code in it, not a zip, ...
        first_line = (str(e).splitlines() or [type(e).__name__])[0]
        raise LpdetError(
            f"{path}: cannot read as a state dict ({first_line}); expected .safetensors or a torch.save()d state dict"
        ) from None
    # Training checkpoints often wrap the weights.
    if isinstance(state, Mapping) and len(state) == 1 and next(iter(state)) in ("state_dict", "model"):
        state = next(iter(state.values()))
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise LpdetError(f"{path}: not a state dict (a mapping of names to tensors); save one with torch.save(model.state_dict())")
    return state


def _backbone_state(path: Path) -> Mapping[str, Tensor]:
    """The backbone tensors in `path`: an lpdet checkpoint (a classifier's, e.g. `lpdet classify
    train`, or a detector's: its ``backbone.*`` tensors), else a state dict file."""
    path = Path(path)
    if path.is_dir():
        ckpt = load_checkpoint(path)
        if is_qat(ckpt.model_config):
            raise LpdetError(f"{path}: a quantization-aware (QAT) checkpoint; initialise from a float checkpoint")
        prefix = "backbone."
        return {k.removeprefix(prefix): v for k, v in ckpt.model_state.items() if k.startswith(prefix)}
    return _read_state_dict(path)


def load_backbone_weights(detector: nn.Module, path: Path) -> tuple[int, int]:
    """Load backbone weights: ImageNet weights in torchvision's layout (`features.*`; MobileNetV1
    layout in `MobileNetV1Features`) from .safetensors or .pth, or the backbone of an lpdet
    checkpoint (a trained classifier of the same family and width). Tensors whose name and shape
    match the backbone are loaded; the rest (e.g. the classifier) are skipped. Returns (loaded, skipped)."""
    state = _backbone_state(path)
    own = detector.backbone.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    # BN step counters are scalars that fit any backbone: take one only with its BN's statistics.
    counter = "num_batches_tracked"
    matching = {
        k: v for k, v in matching.items() if not k.endswith(counter) or k.replace(counter, "running_mean") in matching
    }
    if not matching:
        example = next(iter(own))
        raise LpdetError(
            f"{path}: no tensor matches the {detector.config.arch} width {detector.config.width} backbone "
            f"(expected names like {example!r} with matching shapes); use ImageNet weights for the same width"
        )
    detector.backbone.load_state_dict(matching, strict=False)
    return len(matching), len(state) - len(matching)


def transfer_weights(model: nn.Module, state: dict[str, Tensor]) -> tuple[int, int]:
    """Copy every tensor whose name and shape match (for --init across resolution/width); returns (copied, skipped)."""
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matched, strict=False)
    return len(matched), len(own) - len(matched)
