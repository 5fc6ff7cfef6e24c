"""Weight inheritance from a super-network, and BatchNorm recalibration (the search's cheap accuracy).

`Supernet.from_detector(trained_largest)` ranks, once, the channels of every layer of the
trained largest network by importance: the L1 norm of the output filters that produce them (for
the channels a stage's residual adds share, the sum over the stage's projection convs). `inherit`
builds any candidate of the same architecture and copies its weights from the supernet:

- a layer with fewer channels takes the most important ones; the same choice slices the
  layer's BatchNorm, the next layers' input channels and the depthwise convs in between (kept
  in the supernet's order, so the largest candidate is the supernet itself, bit for bit);
- a reduced expansion keeps the block's most important hidden channels;
- a smaller depthwise kernel is the supernet's kernel centre-cropped (5×5 → 3×3);
- a stage with fewer blocks keeps its first ones (trailing blocks dropped).

Layers are matched by their role (stem, stage s block b expand / depthwise / project, extra layer
j, head map m), so names that shift when a stage loses a block still meet their supernet layer.
Then `recalibrate_bn(candidate, batches)` re-estimates the BatchNorm statistics, which the
supernet's do not fit once channels and blocks are gone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import islice

import torch
from torch import Tensor, nn

from lpdet.errors import LpdetError
from lpdet.models.arch_blocks import mobilenet_v2_block_index
from lpdet.models.arch_detail import MOBILENET_V2_SPLIT_STAGE, NUM_EXTRA_LAYERS, default_detail, is_mobilenet_v2
from lpdet.models.backbones import MOBILENET_V1_BLOCKS, MobileNetV1Features
from lpdet.models.config import ModelConfig, is_qat
from lpdet.models.detector import Detector
from lpdet.models.registry import build_detector


@dataclass(frozen=True)
class Layer:
    """One conv (and its BatchNorm) by role: `role` is the same in every candidate of an arch."""

    role: str
    conv: str  # module path of the Conv2d
    norm: str | None  # module path of its BatchNorm2d (None: a biased prediction conv)
    out_group: str | None  # the channel group its outputs are (None: all kept, the predictions)
    in_group: str | None  # the channel group it reads (None: the image)
    depthwise: bool = False


def detector_layers(cfg: ModelConfig) -> list[Layer]:
    """Every conv of the detector `cfg` describes, by role, with the channel groups it links."""
    lite = cfg.arch.endswith("ssdlite")
    backbone, maps = (_mobilenet_v2_layers if is_mobilenet_v2(cfg.arch) else _mobilenet_v1_layers)(cfg)
    layers, group = list(backbone), maps[-1]
    for j in range(NUM_EXTRA_LAYERS):
        p, mid = f"extras.blocks.{j}", f"extra{j}.mid"
        layers.append(Layer(f"extra{j}.reduce", f"{p}.0.0", f"{p}.0.1", mid, group))
        if lite:
            layers.append(Layer(f"extra{j}.dw", f"{p}.1.0", f"{p}.1.1", mid, mid, depthwise=True))
        last = f"{p}.2" if lite else f"{p}.1"
        layers.append(Layer(f"extra{j}.out", f"{last}.0", f"{last}.1", f"extra{j}", mid))
        group = f"extra{j}"
    maps = [*maps, *(f"extra{j}" for j in range(NUM_EXTRA_LAYERS))]
    for head in ("cls_head", "box_head"):
        for m, group in enumerate(maps):
            p = f"{head}.predictors.{m}"
            if lite:
                layers.append(Layer(f"{head}{m}.dw", f"{p}.0.0", f"{p}.0.1", group, group, depthwise=True))
            layers.append(Layer(f"{head}{m}.out", f"{p}.1" if lite else p, None, None, group))
    return layers


def _mobilenet_v2_layers(cfg: ModelConfig) -> tuple[list[Layer], list[str]]:
    stages = (cfg.detail or default_detail(cfg.arch)).stages
    layers = [Layer("stem", "backbone.features.0.0", "backbone.features.0.1", "stem", None)]
    group = "stem"
    for s, stage in enumerate(stages):
        for b in range(stage.depth):
            p, role = f"backbone.features.{mobilenet_v2_block_index(stages, s, b)}.conv", f"s{s}b{b}"
            hidden, dw = group, 0
            if stage.expansion != 1:
                hidden, dw = f"{role}.hidden", 1
                layers.append(Layer(f"{role}.expand", f"{p}.0.0", f"{p}.0.1", hidden, group))
            layers.append(Layer(f"{role}.dw", f"{p}.{dw}.0", f"{p}.{dw}.1", hidden, hidden, depthwise=True))
            layers.append(Layer(f"{role}.project", f"{p}.{dw + 1}", f"{p}.{dw + 2}", f"stage{s}", hidden))
            group = f"stage{s}"
    last = f"backbone.features.{mobilenet_v2_block_index(stages, len(stages), 0)}"
    layers.append(Layer("last", f"{last}.0", f"{last}.1", "last", group))
    return layers, [f"s{MOBILENET_V2_SPLIT_STAGE}b0.hidden", "last"]


def _mobilenet_v1_layers(cfg: ModelConfig) -> tuple[list[Layer], list[str]]:
    layers = [Layer("stem", "backbone.features.0.0", "backbone.features.0.1", "stem", None)]
    group = "stem"
    for i in range(1, len(MOBILENET_V1_BLOCKS) + 1):
        p = f"backbone.features.{i}"
        layers.append(Layer(f"block{i}.dw", f"{p}.0.0", f"{p}.0.1", group, group, depthwise=True))
        layers.append(Layer(f"block{i}.pw", f"{p}.1.0", f"{p}.1.1", f"block{i}", group))
        group = f"block{i}"
    return layers, [f"block{i}" for i in MobileNetV1Features.output_indices]


@dataclass
class Supernet:
    """A trained largest network: its config, weights and per-group channel importance."""

    config: ModelConfig
    state: dict[str, Tensor]
    importance: dict[str, Tensor]  # channel group -> importance of each of its channels

    @classmethod
    def from_state(cls, config: ModelConfig, state: Mapping[str, Tensor]) -> Supernet:
        state = {name: t.detach().float().cpu() for name, t in state.items()}
        importance: dict[str, Tensor] = {}
        for layer in detector_layers(config):
            if layer.out_group is None or layer.depthwise:
                continue
            score = _tensor(state, f"{layer.conv}.weight", "supernet").abs().sum(dim=(1, 2, 3))
            importance[layer.out_group] = importance.get(layer.out_group, 0) + score
        return cls(config, state, importance)

    @classmethod
    def from_detector(cls, detector: Detector) -> Supernet:
        return cls.from_state(detector.config, detector.state_dict())

    def channels(self, group: str, count: int) -> Tensor:
        """Indices of the `count` most important channels of `group`, in the supernet's order."""
        importance = self.importance[group]
        if count > importance.numel():
            raise LpdetError(f"inherit: the candidate has {count} channels in {group}, the supernet only "
                             f"{importance.numel()}; inherit from the space's largest candidate")
        ranked = torch.argsort(importance, descending=True, stable=True)
        return ranked[:count].sort().values


def inherit(cfg: ModelConfig, supernet: Supernet) -> Detector:
    """A float detector for `cfg` holding the supernet's weights (see the module docstring); for
    a QAT candidate call `lpdet.quant.qat.prepare_qat` on it afterwards."""
    detector = build_detector(cfg)  # float even for a QAT config
    detector.load_state_dict(inherited_state(cfg, supernet, detector.state_dict()))
    return detector


def inherited_state(cfg: ModelConfig, supernet: Supernet, own: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The state dict of a `cfg` detector (`own`: its state dict, for the shapes) sliced from the
    supernet's. Only indexing and slicing: when `supernet.state` holds live parameters, gradients
    flow back into them (weight-sharing training, `lpdet.design.search.sandwich`)."""
    if cfg.arch != supernet.config.arch:
        raise LpdetError(f"inherit: the candidate is a {cfg.arch}, the supernet a {supernet.config.arch}")
    supers = {layer.role: layer for layer in detector_layers(supernet.config)}
    state: dict[str, Tensor] = {}
    for layer in detector_layers(cfg):
        if layer.role not in supers:
            raise LpdetError(f"inherit: the supernet has no layer {layer.role} (a deeper stage than the "
                             f"supernet's?); inherit from the space's largest candidate")
        state.update(_inherited_tensors(layer, supers[layer.role], own, supernet))
    missing = sorted(set(own) - set(state))
    assert not missing, f"inherit: no supernet source for {missing[:3]}"  # detector_layers covers every conv
    return state


def embedded_state(cfg: ModelConfig, base_config: ModelConfig, base_state: Mapping[str, Tensor],
                   own: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of inheritance, for starting a supernet from a trained detector: the state dict of a
    `cfg` detector (`own`: its state dict, for the shapes) holding the `base` network's tensors, layer
    by role, each smaller kernel zero-padded into the centre of the larger one. A zero ring adds
    nothing to a depthwise convolution, so the supernet computes what the base computes, and the
    candidate of the base's shape inherits the base back exactly. The base must have every layer of
    the supernet with the same channels (the standard network at the search's width)."""
    if cfg.arch != base_config.arch:
        raise LpdetError(f"supernet init: the base is a {base_config.arch}, the search's space a {cfg.arch}")
    bases = {layer.role: layer for layer in detector_layers(base_config)}
    base_state = {name: t.detach().float() for name, t in base_state.items()}
    state: dict[str, Tensor] = {}
    for layer in detector_layers(cfg):
        source = bases.get(layer.role)
        if source is None:
            raise LpdetError(f"supernet init: the base has no layer {layer.role}; start from the standard network "
                             f"at the search's width, or train the supernet from scratch")
        names = [(f"{layer.conv}.{k}", f"{source.conv}.{k}") for k in ("weight", "bias")]
        if layer.norm is not None:
            names += [(f"{layer.norm}.{k}", f"{source.norm}.{k}")
                      for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
        for name, base_name in names:
            if name in own:
                state[name] = _padded(_tensor(base_state, base_name, "base"), own[name], name)
    missing = sorted(set(own) - set(state))
    assert not missing, f"supernet init: no base source for {missing[:3]}"  # detector_layers covers every conv
    return state


def _padded(tensor: Tensor, target: Tensor, name: str) -> Tensor:
    """`tensor` in `target`'s shape: equal, or a square kernel zero-padded into the centre of a larger one."""
    if tensor.shape == target.shape:
        return tensor.to(target.dtype)
    if tensor.dim() == 4 and tensor.shape[:2] == target.shape[:2] and tensor.shape[-1] < target.shape[-1]:
        padded = torch.zeros_like(target)
        start = (target.shape[-1] - tensor.shape[-1]) // 2
        padded[..., start:start + tensor.shape[-1], start:start + tensor.shape[-1]] = tensor
        return padded
    raise LpdetError(f"supernet init: {name} is {tuple(tensor.shape)} in the base, {tuple(target.shape)} in the "
                     f"supernet; start from the standard network at the search's width (--width)")


def _inherited_tensors(layer: Layer, source: Layer, own: dict[str, Tensor], supernet: Supernet) -> dict[str, Tensor]:
    """The candidate tensors of one conv (+ BN): the supernet's, sliced and cropped."""
    weight_name = f"{layer.conv}.weight"
    target = own[weight_name]
    weight = _tensor(supernet.state, f"{source.conv}.weight", "supernet")
    device = weight.device  # the importance ranking lives on the CPU, the weights may not
    out_index = None if layer.out_group is None else supernet.channels(layer.out_group, target.shape[0]).to(device)
    if out_index is not None:
        weight = weight.index_select(0, out_index)
    if not layer.depthwise and layer.in_group is not None:
        weight = weight.index_select(1, supernet.channels(layer.in_group, target.shape[1]).to(device))
    weight = _centre_crop(weight, target.shape[-1], layer.role)
    tensors = {weight_name: weight}
    if f"{layer.conv}.bias" in own:
        bias = _tensor(supernet.state, f"{source.conv}.bias", "supernet")
        tensors[f"{layer.conv}.bias"] = bias if out_index is None else bias.index_select(0, out_index)
    if layer.norm is not None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            tensors[f"{layer.norm}.{name}"] = _tensor(supernet.state, f"{source.norm}.{name}", "supernet").index_select(0, out_index)
        tensors[f"{layer.norm}.num_batches_tracked"] = supernet.state.get(
            f"{source.norm}.num_batches_tracked", own[f"{layer.norm}.num_batches_tracked"])
    for name, tensor in tensors.items():
        if tensor.shape != own[name].shape:
            raise LpdetError(f"inherit: {name} needs {tuple(own[name].shape)}, the supernet gives "
                             f"{tuple(tensor.shape)}; inherit from the space's largest candidate")
    return tensors


def _centre_crop(weight: Tensor, size: int, role: str) -> Tensor:
    """The centre `size`×`size` of a square kernel (5×5 → 3×3 keeps the middle 3×3)."""
    full = weight.shape[-1]
    if size > full:
        raise LpdetError(f"inherit: {role} needs a {size}x{size} kernel, the supernet has {full}x{full}")
    start = (full - size) // 2
    return weight[..., start:start + size, start:start + size]


def _tensor(state: Mapping[str, Tensor], name: str, what: str) -> Tensor:
    if name not in state:
        raise LpdetError(f"inherit: the {what} state dict has no {name}; is it a checkpoint of the same architecture?")
    return state[name]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Tensor], max_batches: int | None = None) -> int:
    """Re-estimate every BatchNorm's running statistics as the plain average over `batches`
    (float [B, 3, R, R] images in [0, 1]; at most `max_batches`) of the per-batch statistics,
    the rest of the model in eval mode and no weight changed. Returns the batches used."""
    config = getattr(model, "config", None)
    if isinstance(config, ModelConfig) and is_qat(config):
        raise LpdetError("recalibrate_bn: a QAT model folds its BatchNorms; use lpdet.quant.qat.calibrate(update_bn=True)")
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    saved = [{k: v.clone() for k, v in norm.state_dict().items()} for norm in norms]
    training = model.training
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: every batch weighs the same
        norm.train()
    device = next(model.parameters()).device
    count = 0
    try:
        for images in islice(batches, max_batches):
            model(images.to(device))
            count += 1
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.train(training)
    if count == 0:
        for norm, state in zip(norms, saved):
            norm.load_state_dict(state)
        raise LpdetError("recalibrate_bn: no image batches given; pass a few training batches")
    return count
