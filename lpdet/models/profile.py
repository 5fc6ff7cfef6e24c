"""Model cost and geometry: parameters, multiply-adds, feature maps, multiple-of-8 check.

MACs are counted with forward hooks on one real forward pass at the configured resolution,
so they reflect the actual layer shapes (odd sizes, ceil rounding) rather than a formula.
Conv2d costs k_h·k_w·(C_in/groups)·C_out·H_out·W_out, Linear in·out per output row;
BatchNorm, activations and bias adds are not counted (as in the MobileNet papers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lpdet.models.detector import Detector
from lpdet.models.config import ModelConfig, variant_name
from lpdet.models.registry import build_detector
from lpdet.serialize import to_dict

# Phone CPUs/NPUs vectorise channels (and often spatial tiles) in groups of 8.
ALIGNMENT = 8
FEATURE_MAP_NAMES = ("backbone_s16", "backbone_s32", "extra1", "extra2", "extra3", "extra4")


@dataclass
class FeatureMap:
    name: str
    channels: int
    height: int
    width: int


@dataclass
class LayerGeometry:
    name: str  # module path, e.g. "backbone.features.3.conv.1.0"
    type: str  # "Conv2d", "depthwise Conv2d" or "Linear"
    in_channels: int
    out_channels: int
    height: int  # output height
    width: int  # output width
    reasons: list[str] = field(default_factory=list)


@dataclass
class ModelProfile:
    params: int
    macs: int
    feature_maps: list[FeatureMap]
    misaligned: list[LayerGeometry]
    config: ModelConfig | None = None


def misalignment_reasons(out_channels: int, height: int, width: int) -> list[str]:
    """Why a layer's output is not a multiple of 8. Maps smaller than 8 (the last SSD maps,
    always 5×5 … 1×1) cannot be, so only sizes >= 8 are flagged."""
    reasons = []
    if out_channels % ALIGNMENT:
        reasons.append(f"{out_channels} output channels not a multiple of {ALIGNMENT}")
    for axis, size in (("height", height), ("width", width)):
        if size >= ALIGNMENT and size % ALIGNMENT:
            reasons.append(f"output {axis} {size} not a multiple of {ALIGNMENT}")
    return reasons


def _layer_geometry(name: str, module: nn.Module, output: torch.Tensor) -> tuple[int, LayerGeometry]:
    """(MACs, geometry) of one Conv2d / Linear call with batch size 1."""
    if isinstance(module, nn.Conv2d):
        height, width = output.shape[-2:]
        k_h, k_w = module.kernel_size
        macs = k_h * k_w * (module.in_channels // module.groups) * module.out_channels * height * width
        depthwise = module.groups > 1 and module.groups == module.in_channels
        kind = "depthwise Conv2d" if depthwise else "Conv2d"
        return macs, LayerGeometry(name, kind, module.in_channels, module.out_channels, height, width)
    rows = output.numel() // module.out_features
    macs = module.in_features * module.out_features * rows
    return macs, LayerGeometry(name, "Linear", module.in_features, module.out_features, 1, 1)


def profile_detector(detector: Detector) -> ModelProfile:
    """Profile a built detector at its configured resolution (one batch-1 forward, eval mode)."""
    calls: list[tuple[int, LayerGeometry]] = []
    maps: list[torch.Tensor] = []
    hooks = []
    for name, module in detector.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(
                module.register_forward_hook(
                    lambda m, _inputs, out, name=name: calls.append(_layer_geometry(name, m, out))
                )
            )
    hooks.append(detector.backbone.register_forward_hook(lambda _m, _i, out: maps.extend(out)))
    if hasattr(detector, "extras"):  # a classifier has none
        hooks.append(detector.extras.register_forward_hook(lambda _m, _i, out: maps.extend(out)))
    was_training = detector.training
    resolution = detector.config.resolution
    param = next(detector.parameters())
    try:
        detector.eval()
        with torch.no_grad():
            detector(torch.zeros(1, 3, resolution, resolution, dtype=param.dtype, device=param.device))
    finally:
        for hook in hooks:
            hook.remove()
        detector.train(was_training)

    misaligned = []
    for _, geometry in calls:
        geometry.reasons = misalignment_reasons(geometry.out_channels, geometry.height, geometry.width)
        if geometry.reasons:
            misaligned.append(geometry)
    return ModelProfile(
        params=sum(p.numel() for p in detector.parameters()),
        macs=sum(macs for macs, _ in calls),
        feature_maps=[FeatureMap(n, m.shape[1], m.shape[2], m.shape[3]) for n, m in zip(FEATURE_MAP_NAMES, maps)],
        misaligned=misaligned,
        config=detector.config,
    )


def profile_model(cfg: ModelConfig) -> ModelProfile:
    """Build `cfg` (random weights) and profile it."""
    return profile_detector(build_detector(cfg))


def format_profile(p: ModelProfile) -> str:
    """A readable report: params (M), MAdds (B), feature maps, misaligned layers."""
    lines = []
    if p.config is not None:
        c = p.config
        detail = "  (search candidate: per-stage detail)" if c.detail is not None else ""
        lines.append(f"{c.arch} ({variant_name(c)})  width {c.width}  resolution {c.resolution}  "
                     f"classes {c.num_classes}{detail}")
    lines.append(f"params  {p.params / 1e6:.2f} M")
    lines.append(f"MAdds   {p.macs / 1e9:.3f} B")
    lines.append("")
    lines.append(f"{'feature map':<14}{'channels':>9}{'size':>10}")
    for fm in p.feature_maps:
        lines.append(f"{fm.name:<14}{fm.channels:>9}{f'{fm.height}x{fm.width}':>10}")
    lines.append("")
    if not p.misaligned:
        lines.append(f"misaligned layers: none (all channels and sizes >= {ALIGNMENT} are multiples of {ALIGNMENT})")
    else:
        lines.append(f"misaligned layers ({len(p.misaligned)}):")
        width = max(len(g.name) for g in p.misaligned)
        for g in p.misaligned:
            shape = f"{g.in_channels}->{g.out_channels} @ {g.height}x{g.width}"
            lines.append(f"  {g.name:<{width}}  {g.type:<16} {shape:<22} {'; '.join(g.reasons)}")
    return "\n".join(lines)


def profile_to_dict(p: ModelProfile) -> dict:
    """Plain data for `--json`."""
    return to_dict(p)
