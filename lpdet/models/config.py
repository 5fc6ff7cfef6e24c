"""`ModelConfig`: what a detector is (architecture, classes, width, input size, anchor scales,
float or quantization-aware), and the checks shared by every option that names a resolution."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from lpdet.errors import LpdetError
from lpdet.models.arch_detail import ArchDetail

# The smallest input the six SSD maps (strides 16..512, each at least 1x1) make sense for.
MIN_RESOLUTION = 32
# How a model's weights compute: "fp32" (float) or "qat" (fake-quantized, BN folded: 8-bit-ready).
Quantization = Literal["fp32", "qat"]
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)
# The architecture commands build when none is named.
DEFAULT_ARCH = "mobilenet_v2_ssdlite"
# Where anchor centres sit (`lpdet.models.anchors`): "map" spreads them evenly over each feature
# map (TF Object Detection API); "stride" puts the fine maps' centres on the convolutions' stride
# grid, which keeps the learned box offsets the same at every input size.
AnchorGrid = Literal["map", "stride"]
ANCHOR_GRIDS: tuple[str, ...] = get_args(AnchorGrid)


@dataclass
class ModelConfig:
    arch: str  # mobilenet_v1_ssd | mobilenet_v1_ssdlite | mobilenet_v2_ssd | mobilenet_v2_ssdlite
    num_classes: int  # K object classes, background NOT included
    width: float = 1.0  # depth multiplier
    resolution: int = 320  # square input R
    min_scale: float = 0.2  # anchor scales (TF Object Detection API style)
    max_scale: float = 0.95
    quantization: Quantization = "fp32"  # "qat": built by `lpdet.quant.qat.build_model` / `prepare_qat`
    # Per-stage widths, expansions, kernels, depths (an architecture-search candidate); None: the
    # standard network. Checkpoints store it, so a candidate rebuilds from its checkpoint.
    detail: ArchDetail | None = None
    # The quantization-friendly separable convolution in the backbone (`lpdet.models.layers.make_quant_friendly`):
    # no BN / ReLU6 after each depthwise conv, ReLU instead of ReLU6.
    quant_friendly: bool = False
    # "map" (TF style, and what checkpoints written before this option used) or "stride"
    anchor_grid: AnchorGrid = "map"
    # The input size the anchor scales are fractions of; None: the model's own resolution. A model
    # fine-tuned to another resolution keeps its base's: its anchors keep their sizes in pixels, the
    # sizes its box regression learned (`lpdet.models.anchors`).
    anchor_reference: int | None = None


def kept_anchors(config: ModelConfig) -> dict[str, object]:
    """The anchor fields of a model made from `config` at another input size (fine-tuned from it,
    or the same weights run at that size): the same grid, and boxes that keep their sizes in pixels,
    the sizes the weights learned to regress (`anchor_reference` pinned to `config`'s)."""
    return {"anchor_grid": config.anchor_grid, "anchor_reference": config.anchor_reference or config.resolution}


def variant_name(config: ModelConfig) -> str:
    """How the backbone's separable convolutions are built: "standard" or "quant-friendly"."""
    return "quant-friendly" if config.quant_friendly else "standard"


def is_qat(config: ModelConfig) -> bool:
    """Whether the model `config` describes is quantization-aware (the one place this is read)."""
    return config.quantization == "qat"


def is_resolution(value: object) -> bool:
    """Whether `value` is a usable input resolution: a whole number >= `MIN_RESOLUTION`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= MIN_RESOLUTION


def check_resolution(value: object, option: str, example: str = "e.g. 300, 320") -> int:
    """`value` if it is a usable resolution, else `LpdetError` naming `option`."""
    if not is_resolution(value):
        raise LpdetError(f"{option}: must be a whole number >= {MIN_RESOLUTION} ({example}), got {value!r}")
    return value
