"""Quantization-aware training (QAT) for fully int8 deployment.

`prepare_qat(detector)` swaps, in place, every Conv2d (+ BatchNorm2d) (+ ReLU6 or ReLU) for a `QConv2d`
that folds the BN and fake-quantizes its weights (int8, per channel, symmetric) and its output
(uint8, per tensor), gives the network's first conv an input quantizer, wraps every residual
block's add in a quantizer, gives a classifier's global pooling its own output quantizer
(`QGlobalAvgPool`) and each prediction head one shared output quantizer
(`lpdet.quant.fake_quant` documents the integer scheme and the BN folding). The detector keeps
its forward signature, outputs, `.config` and `.anchors`; its state dict keeps every float name
(so float weights still load into it, e.g. `transfer_weights` after `prepare_qat`) and adds the
quantizers' buffers (observer ranges, freeze flags: all tensors). Its config says
``quantization="qat"`` (read with `lpdet.models.config.is_qat`). To load a QAT checkpoint,
`build_model(config)` (float build + `prepare_qat`), then `load_state_dict`.

Training loop contract::

    detector = build_detector(cfg)            # optionally load trained float weights first
    prepare_qat(detector, QatConfig(freeze_bn_after=..., freeze_observers_after=...))
    for step ...:
        set_qat_step(detector, global_step)   # before the forward pass of every step
        ...
    lpdet.deploy.export.export_onnx(detector, "model.onnx")   # int8 QDQ ONNX

`calibrate(detector, batches)` runs forward passes that only set the activation ranges (e.g.
right after `prepare_qat` on a float-trained detector, or as post-training quantization).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from lpdet.errors import LpdetError
from lpdet.models.config import ModelConfig, is_qat
from lpdet.models.detector import Detector
from lpdet.models.heads import PredictionHead
from lpdet.models.registry import build_detector
from lpdet.models.classifier import GlobalAvgPool
from lpdet.quant.fake_quant import ActQuant, FoldedBatchNorm2d, QConv2d, QGlobalAvgPool, QPredictionHead, QResidual


@dataclass
class QatConfig:
    freeze_bn_after: int = 0  # optimizer steps after which BN statistics freeze (0: never); then the conv
    # is the deployed folded conv (running statistics only)
    freeze_observers_after: int = 0  # steps after which activation ranges stop updating (0: never)
    ema_decay: float = 0.99  # activation range observers: range ← decay·range + (1 − decay)·batch range


def build_model(config: ModelConfig) -> Detector:
    """A freshly initialised detector as `config` describes it: float, or prepared for QAT
    (`prepare_qat`) when ``config.quantization`` is ``"qat"``."""
    detector = build_detector(config)
    return prepare_qat(detector) if is_qat(config) else detector


def prepare_qat(detector: Detector, config: QatConfig | None = None) -> Detector:
    """Convert `detector` in place for QAT and return it (see the module docstring).

    Works on a freshly built detector and on one holding trained float weights (its BN
    statistics and conv weights are the starting point; call `calibrate` or train to set the
    activation ranges). Sets ``detector.config.quantization = "qat"`` and `detector.qat_config`.
    Calling it on a QAT detector only updates the config.
    """
    config = config or QatConfig()
    _check_config(config)
    if is_qat(detector.config):
        detector.qat_config = config
        return detector
    training = detector.training
    _convert(detector, config.ema_decay)
    leftovers = [name for name, m in detector.named_modules()
                 if type(m) in (nn.Conv2d, nn.BatchNorm2d, nn.ReLU6, nn.ReLU)]
    if leftovers:
        raise LpdetError(f"QAT: cannot fold {leftovers[0]} (unsupported layer pattern); only Conv2d [+ BatchNorm2d] "
                         f"[+ ReLU6 | ReLU] sequences and torchvision inverted residuals are supported")
    for name in ("cls_head", "box_head"):
        head = getattr(detector, name, None)
        if isinstance(head, PredictionHead):
            setattr(detector, name, QPredictionHead.from_float(head, config.ema_decay))
    _wire_quantizers(detector, config.ema_decay)
    detector.train(training)
    detector.config = replace(detector.config, quantization="qat")
    detector.qat_config = config
    return detector


def set_qat_step(detector: nn.Module, step: int) -> None:
    """Apply the QatConfig freezes for optimizer step `step` (0-based: the number of steps done).

    BN freezes once ``step >= freeze_bn_after`` (if > 0), observers once ``step >=
    freeze_observers_after`` (if > 0). The flags are buffers, so they also travel in the state
    dict; deriving them from the step makes a resumed run behave like an uninterrupted one.
    """
    if not is_qat(detector.config):
        raise LpdetError("set_qat_step: the detector is not prepared for QAT; call prepare_qat first")
    config: QatConfig = detector.qat_config
    bn_frozen = config.freeze_bn_after > 0 and step >= config.freeze_bn_after
    observers_frozen = config.freeze_observers_after > 0 and step >= config.freeze_observers_after
    _set_flags(detector, bn_frozen=bn_frozen, observers_frozen=observers_frozen)


@torch.no_grad()
def calibrate(detector: nn.Module, batches: Iterable[Tensor], *, update_bn: bool = False) -> int:
    """Run `detector` on `batches` (float [B, 3, R, R] in [0, 1]) only to update the activation
    ranges (observers run even if frozen). With `update_bn=False` (default) the BN statistics are
    left as they are (the deployed folded convs run); `update_bn=True` also updates them from
    the batches (train-mode BN). Restores the mode and freeze flags; returns the batch count."""
    if not is_qat(detector.config):
        raise LpdetError("calibrate: the detector is not prepared for QAT; call prepare_qat first")
    training = detector.training
    saved = {m: m.bn_frozen.clone() for m in detector.modules() if isinstance(m, QConv2d)}
    saved.update({m: m.observer_frozen.clone() for m in detector.modules() if isinstance(m, ActQuant)})
    _set_flags(detector, bn_frozen=not update_bn, observers_frozen=False)
    detector.train()
    count = 0
    device = next(detector.parameters()).device
    try:
        for images in batches:
            detector(images.to(device))
            count += 1
    finally:
        for m, flag in saved.items():
            (m.bn_frozen if isinstance(m, QConv2d) else m.observer_frozen).copy_(flag)
        detector.train(training)
    return count


def freeze_for_export(detector: nn.Module) -> None:
    """Turn every scale, zero point and quantized weight/bias into constants (eval-mode values),
    so a traced export holds no scale arithmetic. For a throw-away copy (`export_onnx` uses one):
    the frozen detector stops training and observing."""
    if not is_qat(detector.config):
        raise LpdetError("freeze_for_export: the detector is not prepared for QAT")
    uncalibrated = [name for name, m in detector.named_modules() if isinstance(m, ActQuant) and not bool(m.initialized)]
    if uncalibrated:
        raise LpdetError(f"QAT detector has {len(uncalibrated)} activation quantizers that never saw data "
                         f"(e.g. {uncalibrated[0]}); train it or run lpdet.quant.qat.calibrate before exporting")
    detector.eval()
    for m in detector.modules():
        if isinstance(m, QConv2d):
            m.freeze_for_export()
        elif isinstance(m, QResidual):
            m.add_quant.freeze_for_export()
        elif isinstance(m, (QPredictionHead, QGlobalAvgPool)):
            m.output_quant.freeze_for_export()


def quantizers(detector: nn.Module) -> list[tuple[str, ActQuant]]:
    """(name, ActQuant) of every activation quantizer, in module order."""
    return [(name, m) for name, m in detector.named_modules() if isinstance(m, ActQuant)]


# --- internals ---------------------------------------------------------------------------------


def _check_config(config: QatConfig) -> None:
    for name in ("freeze_bn_after", "freeze_observers_after"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise LpdetError(f"qat.{name}: must be an integer >= 0 (0: never), got {value!r}")
    if not 0.0 <= config.ema_decay < 1.0:
        raise LpdetError(f"qat.ema_decay: must be in [0, 1), got {config.ema_decay!r}")


def _set_flags(detector: nn.Module, *, bn_frozen: bool, observers_frozen: bool) -> None:
    for m in detector.modules():
        if isinstance(m, QConv2d):
            m.bn_frozen.fill_(bn_frozen)
        elif isinstance(m, ActQuant):
            m.observer_frozen.fill_(observers_frozen)


def _convert(parent: nn.Module, ema_decay: float) -> None:
    """Recursively replace Conv2d [BatchNorm2d] [ReLU6 | ReLU] runs (siblings in an nn.Sequential, or a
    lone Conv2d) by QConv2d + FoldedBatchNorm2d + Identity, and residual blocks by QResidual."""
    children = list(parent.named_children())
    sequential = isinstance(parent, nn.Sequential)
    i = 0
    while i < len(children):
        name, child = children[i]
        i += 1
        if type(child) is nn.Conv2d:
            bn, relu6, relu = None, False, False
            if sequential and i < len(children) and type(children[i][1]) is nn.BatchNorm2d:
                bn = FoldedBatchNorm2d.from_bn(children[i][1])
                setattr(parent, children[i][0], bn)
                i += 1
            if sequential and i < len(children) and type(children[i][1]) in (nn.ReLU6, nn.ReLU):
                relu6, relu = type(children[i][1]) is nn.ReLU6, type(children[i][1]) is nn.ReLU
                setattr(parent, children[i][0], nn.Identity())
                i += 1
            setattr(parent, name, QConv2d.from_float(child, bn, relu6, ema_decay, relu))
            continue
        if type(child) is GlobalAvgPool:  # a classifier's pooling: its output feeds a quantized conv
            setattr(parent, name, QGlobalAvgPool(ema_decay))
            continue
        _convert(child, ema_decay)
        if getattr(child, "use_res_connect", False) and isinstance(getattr(child, "conv", None), nn.Module):
            setattr(parent, name, QResidual(child, ema_decay))


@torch.no_grad()
def _wire_quantizers(detector: nn.Module, ema_decay: float) -> None:
    """Find, with one eval-mode forward pass, which quantizer produced each conv's input (its
    scale sets the int32 bias grid). The first conv, fed the normalised image, gets its own
    input quantizer; any other conv fed an unquantized tensor is an error (not fully int8)."""
    produced: dict[int, tuple[Tensor, ActQuant]] = {}
    inputs: list[tuple[QConv2d, Tensor]] = []

    def after_quant(module, args, output):
        produced[id(output)] = (output, module)

    def before_conv(module, args):
        source = produced.get(id(args[0]))
        inputs.append((module, args[0], source[1] if source is not None and source[0] is args[0] else None))

    handles = []
    for m in detector.modules():
        if isinstance(m, ActQuant):
            handles.append(m.register_forward_hook(after_quant))
        elif isinstance(m, QConv2d):
            handles.append(m.register_forward_pre_hook(before_conv))
    training = detector.training
    detector.eval()
    try:
        param = next(detector.parameters())
        r = detector.config.resolution
        detector(torch.zeros(1, 3, r, r, device=param.device, dtype=param.dtype))
    finally:
        for h in handles:
            h.remove()
        detector.train(training)
    for index, (conv, _, source) in enumerate(inputs):
        if source is not None:
            conv._input_source = (source,)
        elif index == 0:
            conv.input_quant = ActQuant(ema_decay=ema_decay).to(conv.weight.device)
        else:
            names = {m: n for n, m in detector.named_modules()}
            raise LpdetError(f"QAT: {names[conv]} takes an input that is not quantized; "
                             f"the model cannot be fully int8")
    seen = {id(conv) for conv, _, _ in inputs}
    unused = [n for n, m in detector.named_modules() if isinstance(m, QConv2d) and id(m) not in seen]
    if unused:
        raise LpdetError(f"QAT: {unused[0]} was not run by the forward pass")
