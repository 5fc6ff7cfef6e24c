"""Fake-quantization modules for lpdet's eager-mode QAT (used by `lpdet.quant.qat`).

The integer scheme is the one onnxruntime's fast x86 kernels want (u8 activations, s8 weights):

* activations: uint8, per tensor, asymmetric, ``x_q = clamp(round(x / s) + z, 0, 255)``; scale and
  zero point from an EMA of the batch min/max (`ActQuant`). Outputs of ReLU6 are pinned to
  ``z = 0`` and a range of at most 6, so the clamp of the uint8 grid *is* the ReLU6 and the
  runtime drops the Clip. Zero is always exactly representable (zero padding stays exact).
* weights: int8, per output channel, symmetric (``z = 0``), ``s_c = max|w_c| / 127`` computed
  from the (BN-folded) weight at every forward pass (no state).
* bias: int32 with scale ``s_in * s_c`` (what `QLinearConv` uses), simulated by snapping the
  float bias to that grid with a straight-through estimator (torch has no exportable int32
  fake-quant; the ONNX export stores these integers as int32 initializers).
* residual adds: ``Q(x + y)`` with their own uint8 quantizer (`QResidual`, runs as QLinearAdd).
* detection heads: the six output convs of a head share one quantizer (`QPredictionHead`), so
  the concatenated head output is one uint8 tensor, dequantized once at the very end.

All state is in tensors (buffers) so that ``state_dict()`` round-trips through safetensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lpdet.models.heads import PredictionHead

QMIN, QMAX = 0, 255  # uint8 activations
WMIN, WMAX = -128, 127  # int8 weights
RELU6_MAX = 6.0 * (1 - 2**-20)  # a hair under 6: 255·s ≤ 6 even after float rounding, so the Clip goes
MIN_SCALE = 1e-8


class ActQuant(nn.Module):
    """uint8 per-tensor fake quantization with an EMA min/max observer.

    The observer updates only in training mode and while not frozen (`observer_frozen`, set
    by `lpdet.quant.qat.set_qat_step`); the first observed batch initialises the range.
    `relu6=True`: the input is a ReLU6 output; the range is pinned to ``[0, min(max, 6)]``.
    """

    def __init__(self, relu6: bool = False, ema_decay: float = 0.99):
        super().__init__()
        self.relu6 = relu6
        self.ema_decay = ema_decay
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("observer_frozen", torch.tensor(False))
        # (scale, zero_point) as Python numbers once frozen for export: traced as constants.
        self.export_qparams: tuple[float, int] | None = None

    def extra_repr(self) -> str:
        return f"relu6={self.relu6}, ema_decay={self.ema_decay}"

    @torch.no_grad()
    def observe(self, *xs: Tensor) -> None:
        """Update the range with the min/max over all of `xs` (one EMA step)."""
        lo = torch.stack([x.detach().amin() for x in xs]).amin().float()
        hi = torch.stack([x.detach().amax() for x in xs]).amax().float()
        if not bool(self.initialized):
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
            self.initialized.fill_(True)
        else:
            self.min_val.lerp_(lo, 1 - self.ema_decay)
            self.max_val.lerp_(hi, 1 - self.ema_decay)

    def qparams(self) -> tuple[Tensor, Tensor]:
        """Current (scale float32 [], zero point int32 [])."""
        if self.relu6:
            hi = self.max_val.clamp(min=0.0, max=RELU6_MAX)
            scale = (hi / (QMAX - QMIN)).clamp(min=MIN_SCALE)
            zero = torch.zeros((), dtype=torch.int32, device=scale.device)
        else:
            lo = self.min_val.clamp(max=0.0)
            hi = self.max_val.clamp(min=0.0)
            scale = ((hi - lo) / (QMAX - QMIN)).clamp(min=MIN_SCALE)
            zero = torch.clamp(torch.round(QMIN - lo / scale), QMIN, QMAX).to(torch.int32)
        return scale.float(), zero

    def scale(self) -> Tensor:
        if self.export_qparams is not None:
            return torch.tensor(self.export_qparams[0])
        return self.qparams()[0]

    def freeze_for_export(self) -> None:
        scale, zero = self.qparams()
        self.export_qparams = (float(scale), int(zero))

    @property
    def observing(self) -> bool:
        return self.training and self.export_qparams is None and not bool(self.observer_frozen)

    def quantize(self, x: Tensor) -> Tensor:
        """Fake-quantize `x` with the current range (no observer update)."""
        if self.export_qparams is not None:
            scale, zero = self.export_qparams
        else:
            scale, zero = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, QMIN, QMAX)

    def forward(self, x: Tensor) -> Tensor:
        if self.observing:
            self.observe(x)
        return self.quantize(x)


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def weight_qparams(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Per-output-channel symmetric int8 (scale [C], zero point [C] int32) of a conv weight."""
    absmax = weight.detach().abs().amax(dim=tuple(range(1, weight.dim())))
    scale = (absmax / WMAX).clamp(min=MIN_SCALE).float()
    return scale, torch.zeros_like(scale, dtype=torch.int32)


def fake_quant_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(int8-grid fake-quantized weight, its per-channel scales)."""
    scale, zero = weight_qparams(weight)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, WMIN, WMAX), scale


def snap_bias(bias: Tensor, scale: Tensor) -> Tensor:
    """`bias` rounded to the int32 grid `scale` ([C]); gradient passes straight through."""
    scale = scale.detach()
    return bias + (torch.round(bias / scale) * scale - bias).detach()


class FoldedBatchNorm2d(nn.BatchNorm2d):
    """The BatchNorm slot after `prepare_qat`: holds the BN parameters and statistics (same state
    dict names as before) but its forward is the identity — the `QConv2d` before it folds it."""

    def forward(self, x: Tensor) -> Tensor:
        return x

    @classmethod
    def from_bn(cls, bn: nn.BatchNorm2d) -> FoldedBatchNorm2d:
        if not (bn.affine and bn.track_running_stats):
            raise ValueError("QAT folding needs BatchNorm2d with affine=True and track_running_stats=True")
        new = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, device=bn.weight.device)
        new.weight, new.bias = bn.weight, bn.bias
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
        new.train(bn.training)
        return new


class QConv2d(nn.Conv2d):
    """Conv2d (+ folded BatchNorm) (+ ReLU6 or ReLU) + uint8 output fake quantization, as one int8 op.

    Same parameters (and state dict names) as the float conv; the BN stays in its own slot as
    a `FoldedBatchNorm2d` and the ReLU6 slot becomes an Identity, so a float state dict still
    loads (plus the quantizers' buffers). Extra state: `act_quant` (output), `input_quant` (only
    on the network's first conv), and `bn_frozen`.

    BN folding (torch.ao's "simulated fold", Krishnamoorthi 2018 / Jacob et al. 2018):
      * training, BN not frozen: ``f = gamma / sqrt(running_var + eps)``; the conv runs with the
        fake-quantized folded weight ``Q(w * f)``, its output is divided by ``f`` again and then
        normalised with the *batch* statistics (which also update the running statistics).
        The weights see exactly the quantization grid of the deployed folded conv while BN
        still trains with batch statistics.
      * eval, or training after `freeze_bn_after` steps (`bn_frozen`): the deployed op — a
        plain conv with ``Q(w * f)`` and the folded bias ``beta + (b - running_mean) * f``
        snapped to the int32 grid ``s_in * s_w``; the running statistics no longer change.
    Then ReLU6 (if any) and the output fake quantization.
    """

    def _init_qat(self, bn: FoldedBatchNorm2d | None, relu6: bool, ema_decay: float, relu: bool = False) -> None:
        self._bn = (bn,)  # a tuple: a reference, not a submodule (the BN keeps its own slot)
        self.relu6 = relu6
        self.relu = relu  # a plain ReLU (the quantization-friendly MobileNets): range [0, learnt max]
        self.act_quant = ActQuant(relu6=relu6, ema_decay=ema_decay)
        self.input_quant: ActQuant | None = None
        # Set by `lpdet.quant.qat` after a wiring pass: the ActQuant that produced our input.
        self._input_source: tuple[ActQuant | None] = (None,)
        self.register_buffer("bn_frozen", torch.tensor(False))
        self.export_params = False  # True once frozen for export (buffers export_weight, export_bias)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bn: FoldedBatchNorm2d | None, relu6: bool, ema_decay: float,
                   relu: bool = False) -> QConv2d:
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                  padding_mode=conv.padding_mode, device="meta")
        new.weight = conv.weight  # the same Parameter objects: an existing optimizer keeps working
        new.bias = conv.bias
        new.train(conv.training)
        new._init_qat(bn, relu6, ema_decay, relu)
        return new.to(conv.weight.device) if conv.weight.device.type != "cpu" else new

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bn={self.bn is not None}, relu6={self.relu6}, relu={self.relu}"

    @property
    def bn(self) -> FoldedBatchNorm2d | None:
        return self._bn[0]

    @property
    def input_source(self) -> ActQuant | None:
        return self.input_quant if self.input_quant is not None else self._input_source[0]

    def _fold_factor(self) -> Tensor | None:
        bn = self.bn
        if bn is None:
            return None
        return bn.weight / torch.sqrt(bn.running_var + bn.eps)

    def folded_weight_bias(self) -> tuple[Tensor, Tensor]:
        """(BN-folded float weight, BN-folded float bias) from the running statistics."""
        factor = self._fold_factor()
        bias = self.bias if self.bias is not None else torch.zeros(self.out_channels, device=self.weight.device)
        if factor is None:
            return self.weight, bias
        bn = self.bn
        return self.weight * factor.reshape(-1, 1, 1, 1), bn.bias + (bias - bn.running_mean) * factor

    def quantized_weight_bias(self) -> tuple[Tensor, Tensor, Tensor]:
        """The deployed op's (fake-quantized folded weight, its per-channel scales, folded bias
        on the int32 grid ``s_in * s_w``; not snapped while the input quantizer is unknown)."""
        weight, bias = self.folded_weight_bias()
        weight_q, weight_scale = fake_quant_weight(weight)
        source = self.input_source
        if source is not None:
            bias = snap_bias(bias, weight_scale * source.scale().to(weight_scale.device))
        return weight_q, weight_scale, bias

    def freeze_for_export(self) -> None:
        """Store the eval-mode weight, scales and bias as buffers (so the export traces them as
        initializers, with no BN-folding or scale arithmetic in the graph)."""
        with torch.no_grad():
            weight, scale, bias = self.quantized_weight_bias()
        # Buffers, not plain tensors: the tracer would constant-propagate the Q->DQ pair of a
        # plain tensor into a float constant, losing the int8 weight.
        self.register_buffer("export_weight", weight.detach().clone())
        self.register_buffer("export_weight_scale", scale.detach().clone())
        self.register_buffer("export_weight_zero", torch.zeros_like(scale, dtype=torch.int32))
        self.register_buffer("export_bias", bias.detach().clone())
        self.export_params = True
        if self.act_quant is not None:
            self.act_quant.freeze_for_export()
        if self.input_quant is not None:
            self.input_quant.freeze_for_export()

    def forward(self, x: Tensor) -> Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        if self.export_params:
            # Re-applying the fake quant to on-grid weights is exact; it is what becomes the
            # QuantizeLinear -> DequantizeLinear pair (the Q is folded to int8 after export).
            weight = torch.fake_quantize_per_channel_affine(
                self.export_weight, self.export_weight_scale, self.export_weight_zero, 0, WMIN, WMAX)
            y = self._conv_forward(x, weight, self.export_bias)
        elif self.bn is not None and self.training and not bool(self.bn_frozen):
            y = self._simulated_fold_forward(x)
        else:
            weight, _, bias = self.quantized_weight_bias()
            y = self._conv_forward(x, weight, bias)
        if self.relu6:
            y = F.relu6(y)
        elif self.relu:
            y = F.relu(y)
        return y if self.act_quant is None else self.act_quant(y)

    def _simulated_fold_forward(self, x: Tensor) -> Tensor:
        bn = self.bn
        factor = self._fold_factor()
        weight_q, _ = fake_quant_weight(self.weight * factor.reshape(-1, 1, 1, 1))
        y = self._conv_forward(x, weight_q, None) / factor.reshape(1, -1, 1, 1)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        # nn.BatchNorm2d's training-mode bookkeeping (momentum None = cumulative average).
        bn.num_batches_tracked.add_(1)
        momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, momentum, bn.eps)


class QResidual(nn.Module):
    """torchvision's InvertedResidual with a residual connection: ``Q(x + conv(x))`` (`QLinearAdd`).
    Keeps `.conv` (so state dict names are unchanged), `.stride`, `.out_channels`."""

    def __init__(self, block: nn.Module, ema_decay: float):
        super().__init__()
        self.conv = block.conv
        self.stride = block.stride
        self.out_channels = block.out_channels
        self.use_res_connect = True
        self._is_cn = getattr(block, "_is_cn", False)
        self.add_quant = ActQuant(ema_decay=ema_decay).to(_device_of(block))

    def forward(self, x: Tensor) -> Tensor:
        return self.add_quant(x + self.conv(x))


class QGlobalAvgPool(nn.Module):
    """Global average pooling with its own uint8 output quantizer (`output_quant`): the pooled
    features feed a quantized conv (a classifier's last layer), so they must be on a uint8 grid;
    runs as onnxruntime's QLinearGlobalAveragePool."""

    def __init__(self, ema_decay: float):
        super().__init__()
        self.output_quant = ActQuant(ema_decay=ema_decay)

    def forward(self, x: Tensor) -> Tensor:
        return self.output_quant(F.adaptive_avg_pool2d(x, 1))


class QPredictionHead(PredictionHead):
    """PredictionHead whose output convs share one output quantizer (`output_quant`), so the
    per-map outputs are on one uint8 grid: onnxruntime keeps them uint8 through the
    Transpose/Reshape/Concat, and the only DequantizeLinear is on the concatenated output."""

    @classmethod
    def from_float(cls, head: PredictionHead, ema_decay: float) -> QPredictionHead:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.values_per_anchor = head.values_per_anchor
        new.anchors_per_location = list(head.anchors_per_location)
        new.predictors = head.predictors
        new.output_quant = ActQuant(ema_decay=ema_decay).to(_device_of(head))
        new.train(head.training)
        for conv in new.output_convs():
            conv.act_quant = None  # quantized by output_quant instead
        return new

    def forward(self, maps: list[Tensor]) -> Tensor:
        raw = [predictor(feature_map) for feature_map, predictor in zip(maps, self.predictors)]
        quant = self.output_quant
        if quant.observing:
            quant.observe(*raw)
        outputs = [quant.quantize(y).permute(0, 2, 3, 1).reshape(y.shape[0], -1, self.values_per_anchor) for y in raw]
        # Values already on the grid: this re-quantization is exact in torch; in ONNX it is the
        # Q after the Concat that lets onnxruntime keep Transpose/Reshape/Concat in uint8.
        return quant.quantize(torch.cat(outputs, dim=1))
