"""Post-training quantization of an exported fp32 ONNX detector with onnxruntime.

`quantize_calibrated` is the careful recipe: `quant_pre_process` (shape inference, graph
clean-up), static QDQ quantization with uint8 activations and int8 symmetric per-channel
weights (the fast u8s8 kernels on x86: every convolution becomes a QLinearConv), activation
ranges calibrated on real images. `quantize_naive` is the textbook baseline that shows why
MobileNets need care: one scale per weight TENSOR (after BN folding, a depthwise filter bank can
mix channels whose ranges differ by orders of magnitude, and then the small channels round to
zero; `lpdet.quant.weight_ranges` measures how far apart they are) and min/max ranges from a
couple of images.

Both keep the float tail of the graph (head outputs' reshapes, softmax, box decoding) in float:
those nodes are excluded from quantization, so `scores`/`boxes` keep their float precision. The
stem's quantized input is padded to 4 channels (`pad_stem_channels`: identical results, faster).
The "lpdet" metadata entry is kept with ``quantization`` = ``"int8-ptq"`` / ``"int8-naive"``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import Tensor

from lpdet.data.splits import calibration_split
from lpdet.deploy.int8_graph import finish_int8_graph
from lpdet.deploy.model import read_onnx_metadata, set_onnx_metadata
from lpdet.errors import LpdetError

__all__ = ["quantize_calibrated", "quantize_naive", "calibration_batch", "load_calibration_images", "float_tail_nodes",
           "CALIBRATION_METHOD", "NAIVE_CALIBRATION_IMAGES"]

log = logging.getLogger("lpdet.ptq")

# Chosen by AP on a trained model (see quantize_calibrated's docstring).
CALIBRATION_METHOD = "MinMax"
NAIVE_CALIBRATION_IMAGES = 2
# Ops whose outputs a convolution never reads again: what quantization must leave alone once
# nothing downstream is a convolution (the softmax / decode tail).
_COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


def calibration_batch(dataset, n: int, seed: int = 0) -> Tensor:
    """`n` images (or all, if fewer) of `dataset` (a CocoDetection with eval transforms), drawn
    without replacement with `seed`, stacked as `[N, 3, R, R]` in [0, 1]. Unreadable images are skipped."""
    if n < 1:
        raise LpdetError(f"calibration images: need at least 1, got {n}")
    size = len(dataset)
    if size == 0:
        raise LpdetError(f"{getattr(dataset, 'annotations', 'dataset')}: has no images to calibrate on")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    images = []
    for index in order:
        item = dataset[index]
        if item is None:
            continue
        images.append(item[0])
        if len(images) == n:
            break
    if not images:
        raise LpdetError(f"{getattr(dataset, 'annotations', 'dataset')}: none of its images could be read")
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) > 1:
        raise LpdetError("calibration images differ in size; build the dataset with eval_transforms(resolution)")
    return torch.stack(images).float()


def load_calibration_images(data: str | Path, resolution: int, n: int) -> Tensor:
    """`n` calibration images of dataset `data` (``--data``: its train split, else val) at `resolution`."""
    if n < 1:
        raise LpdetError(f"--calibration-images {n}: must be >= 1")
    return calibration_batch(calibration_split(data, resolution), n)


# ----------------------------------------------------------------------------- graph helpers
def _load(path: Path):
    path = Path(path)
    if not path.is_file():
        raise LpdetError(f"{path}: no such ONNX file; export one with lpdet export --format onnx")
    try:
        return onnx.load(str(path))
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LpdetError(f"{path}: not a readable ONNX model ({reason}); "
                         f"export one with lpdet export --format onnx") from None


def float_tail_nodes(model) -> list[str]:
    """Names of the nodes no convolution depends on: the head outputs' reshapes/concats, the
    softmax and the box decoding. They stay float (excluded from quantization)."""
    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    feeds_compute: dict[int, bool] = {}

    def reaches_compute(node) -> bool:  # iterative DFS with memo (graphs have ~1000 nodes)
        stack = [(node, False)]
        while stack:
            current, expanded = stack.pop()
            key = id(current)
            if key in feeds_compute:
                continue
            children = [c for out in current.output for c in consumers.get(out, [])]
            if not expanded:
                stack.append((current, True))
                stack.extend((c, False) for c in children if id(c) not in feeds_compute)
            else:
                feeds_compute[key] = any(c.op_type in _COMPUTE_OPS or feeds_compute.get(id(c), False)
                                         for c in children)
        return feeds_compute[id(node)]

    return [n.name for n in graph.node if n.op_type not in _COMPUTE_OPS and not reaches_compute(n)]


def _name_nodes(model) -> None:
    """quantize_static excludes nodes by name: give unnamed nodes unique names."""
    seen = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


class _Reader:
    """CalibrationDataReader over a batch of images, fed one at a time (batch-1 graphs)."""

    def __init__(self, images: Tensor, input_name: str):
        self.arrays = [np.ascontiguousarray(img[None].numpy(), dtype=np.float32) for img in images]
        self.input_name = input_name
        self.index = 0

    def get_next(self):
        if self.index >= len(self.arrays):
            return None
        self.index += 1
        return {self.input_name: self.arrays[self.index - 1]}

    def rewind(self):
        self.index = 0


@contextlib.contextmanager
def _quiet():
    """Silence onnxruntime.quantization's INFO logging and its histogram calibrators' prints."""
    loggers = [logging.getLogger(name) for name in ("onnxruntime.quantization", "onnxruntime.quantization.shape_inference",
                                                     "onnxruntime.quantization.quant_utils")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _check_images(images: Tensor, resolution: int, path: Path) -> Tensor:
    if not isinstance(images, Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (resolution, resolution):
        raise LpdetError(f"calibration images for {path} must be [N, 3, {resolution}, {resolution}], got "
                         f"{list(images.shape)}; use calibration_batch on a dataset with eval_transforms({resolution})")
    if len(images) == 0:
        raise LpdetError(f"calibration images for {path}: need at least 1")
    return images.detach().float().cpu()


def _quantize(fp32_onnx: Path, out: Path, images: Tensor, *, per_channel: bool, method: str,
              label: str, extra: dict | None = None) -> Path:
    fp32_onnx, out = Path(fp32_onnx), Path(out)
    model = _load(fp32_onnx)
    meta = read_onnx_metadata(fp32_onnx, {p.key: p.value for p in model.metadata_props})
    if meta.get("quantization", "fp32") != "fp32":
        raise LpdetError(f"{fp32_onnx}: is already quantized ({meta['quantization']}); quantize the fp32 export")
    resolution = int(meta.get("resolution") or model.graph.input[0].type.tensor_type.shape.dim[-1].dim_value)
    images = _check_images(images, resolution, fp32_onnx)
    input_name = model.graph.input[0].name

    reader_cls = type("Reader", (_Reader, CalibrationDataReader), {})
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lpdet-ptq-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        named = Path(tmp) / "named.onnx"
        with _quiet():
            quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=False)
        pre_model = onnx.load(str(pre))
        _name_nodes(pre_model)
        exclude = float_tail_nodes(pre_model)
        onnx.save(pre_model, str(named))
        options = {"WeightSymmetric": True, "ActivationSymmetric": False, **(extra or {})}
        with _quiet():
            quantize_static(
                str(named), str(Path(tmp) / "q.onnx"), reader_cls(images, input_name),
                quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                per_channel=per_channel, reduce_range=False, calibrate_method=getattr(CalibrationMethod, method),
                nodes_to_exclude=exclude, extra_options=options,
            )
        quantized = onnx.load(str(Path(tmp) / "q.onnx"))
    finish_int8_graph(quantized)  # same results; faster stem, loads with exact x86 kernels (lpdet.deploy.int8_graph)
    meta = {**meta, "quantization": label, "calibration": {
        "method": method, "images": int(len(images)), "weights": "per-channel" if per_channel else "per-tensor",
        "activations": "uint8 per-tensor asymmetric", "weight_type": "int8 symmetric"}}
    set_onnx_metadata(quantized, meta)
    quantized.producer_name = "lpdet"
    onnx.save(quantized, str(out))
    return out


def quantize_calibrated(fp32_onnx: Path, out: Path, calibration_images: Tensor, *, per_channel: bool = True,
                        method: str = CALIBRATION_METHOD) -> Path:
    """Static QDQ int8: uint8 activations (per tensor), int8 symmetric per-channel weights,
    activation ranges calibrated on `calibration_images` `[N, 3, R, R]` in [0, 1] (100 training
    images is plenty). `method`: "MinMax" (default), "Percentile" or "Entropy" — on the
    synthetic dataset MinMax gave the best AP (ReLU6 already bounds most activations to [0, 6],
    so clipping outliers only hurts the unbounded head outputs). Returns `out`."""
    if method not in ("MinMax", "Percentile", "Entropy", "Distribution"):
        raise LpdetError(f"calibration method: {method!r} is not one of MinMax, Percentile, Entropy, Distribution")
    return _quantize(fp32_onnx, out, calibration_images, per_channel=per_channel, method=method, label="int8-ptq")


def quantize_naive(fp32_onnx: Path, out: Path, calibration_images: Tensor | Sequence) -> Path:
    """The naive 8-bit baseline: per-TENSOR int8 weights, MinMax activation ranges from the first
    `NAIVE_CALIBRATION_IMAGES` (2) images only. It loses much accuracy on MobileNets whose folded
    depthwise weight ranges spread widely across channels (long-trained ImageNet ones), little where
    they do not (measured: `benchmarks/naive_int8_spread.py`). Returns `out`."""
    images = calibration_images
    if not isinstance(images, Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.dim() == 3:
        images = images[None]
    return _quantize(fp32_onnx, out, images[:NAIVE_CALIBRATION_IMAGES], per_channel=False, method="MinMax",
                     label="int8-naive")
