"""ONNX export of a `Detector`: fp32 for a float detector, int8 QDQ for a QAT detector.

Graph contract (identical for both kinds; `onnxruntime` runs either as is):

* input  ``images``  float32 ``[1, 3, R, R]``: RGB in ``[0, 1]``, the image resized to ``R x R``
  (no letterbox); ``R`` is the detector's resolution. ImageNet mean/std normalisation is inside
  the graph (and, for int8, the input ``QuantizeLinear`` right after it).
* output ``scores``  float32 ``[1, A, K]``: softmax class probabilities with the background
  column removed (column ``k`` is label ``k + 1``; ``A`` anchors, ``K`` object classes).
* output ``boxes``   float32 ``[1, A, 4]``: boxes decoded with `lpdet.models.box_coder.decode`
  against the detector's anchors (baked in as constants): normalised ``x1, y1, x2, y2``, not
  clipped (clip to ``[0, 1]`` and multiply by the original image size).
* The batch dimension is fixed at 1.
* A classifier (`lpdet.models.classifier`) has one output instead, ``scores`` float32 ``[1, K]``
  (softmax class probabilities), and ``task: classification`` in its metadata.
* NMS is NOT in the graph (unless appended afterwards by `lpdet.deploy.nms_graph`, ``--nms-in-graph``). The runtime does the same small post-processing as
  `lpdet.models.postprocess.postprocess`: per class, keep scores above a threshold (top
  ``pre_nms_top_k`` per class), clip boxes to ``[0, 1]``, per-class NMS (IoU 0.6), keep the
  ``top_k`` best overall.
* ``metadata_props["lpdet"]``: a JSON object with ``arch``, ``width``, ``resolution``,
  ``num_classes``, ``quantization`` (``"fp32"`` or ``"int8-qat"``), ``input``/``outputs``
  names, plus whatever the caller passed in ``metadata`` (e.g. class names; the keys above win).

int8 (a detector prepared with `lpdet.quant.qat.prepare_qat`, observers calibrated): exported in
eval mode with every scale and zero point frozen to a constant, BN folded, weights stored as
int8 initializers (per-channel symmetric) feeding ``DequantizeLinear``, activations uint8
per-tensor ``QuantizeLinear -> DequantizeLinear`` pairs. onnxruntime (graph optimisation level
``ORT_ENABLE_ALL``) fuses every convolution into ``QLinearConv`` and every residual add into
``QLinearAdd``; the head outputs stay uint8 through Transpose/Reshape/Concat and are dequantized
just before the softmax / box decoding. The quantized input is zero-padded to 4 channels before the
stem convolution (`lpdet.deploy.int8_graph.pad_stem_channels`: identical results, a faster stem).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from lpdet.deploy.int8_graph import finish_int8_graph
from lpdet.deploy.model import (CLASSIFIER_OUTPUT_NAMES, INPUT_NAME, OUTPUT_NAMES, export_metadata, read_onnx_metadata,
                                set_onnx_metadata)
from lpdet.errors import LpdetError
from lpdet.models.box_coder import decode
from lpdet.models.config import is_qat
from lpdet.models.registry import is_classifier
from lpdet.quant.qat import freeze_for_export
from lpdet.serialize import atomic_output


class _ExportGraph(nn.Module):
    """Detector + softmax (background dropped) + box decoding against constant anchors."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector
        # A plain attribute, not a buffer: traced as a constant, never an input.
        self.anchors = detector.anchors.detach().clone()

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        cls_logits, box_deltas = self.detector(images)
        scores = torch.softmax(cls_logits, dim=-1)[..., 1:]
        boxes = decode(box_deltas, self.anchors)
        return scores, boxes


class _ClassifierGraph(nn.Module):
    """Classifier + softmax: output ``scores [1, K]`` (class probabilities)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: Tensor) -> Tensor:
        return torch.softmax(self.classifier(images), dim=-1)


def export_onnx(detector: nn.Module, path: Path, *, metadata: dict | None = None, opset: int = 17) -> Path:
    """Write `detector` as ONNX to `path` (see the module docstring for the graph contract).

    A float detector gives an fp32 graph, a QAT detector (`lpdet.quant.qat.prepare_qat`) an int8
    QDQ graph. The detector itself is left untouched (a CPU eval-mode copy is exported).
    Returns `path`.
    """
    path = Path(path)
    if not 13 <= opset <= 21:
        raise LpdetError(f"opset: must be between 13 and 21 (QuantizeLinear with per-channel axis), got {opset}")
    quantized = is_qat(detector.config)
    model = copy.deepcopy(detector).cpu().to(memory_format=torch.contiguous_format).eval()
    if quantized:
        freeze_for_export(model)  # raises LpdetError if the observers were never calibrated
    classifier = is_classifier(model.config)
    graph = (_ClassifierGraph(model) if classifier else _ExportGraph(model)).eval()
    output_names = list(CLASSIFIER_OUTPUT_NAMES if classifier else OUTPUT_NAMES)
    resolution = int(model.config.resolution)
    example = torch.rand(1, 3, resolution, resolution)

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation / tracer warnings
        with torch.no_grad():
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=output_names,
                do_constant_folding=True,  # folds BN into the fp32 convs (int8: already folded)
            )
    proto = onnx.load(str(path))
    _tidy_graph(proto)
    if quantized:
        finish_int8_graph(proto)  # same results; faster stem, loads with exact x86 kernels (lpdet.deploy.int8_graph)
    set_onnx_metadata(proto, export_metadata(model.config, resolution, "int8-qat" if quantized else "fp32", metadata,
                                             **({"task": "classification", "outputs": output_names} if classifier
                                                else {})))
    proto.producer_name = "lpdet"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def update_metadata(source: Path, target: Path, updates: dict) -> Path:
    """Copy the ONNX model `source` to `target` with `updates` merged into its lpdet metadata
    (written to a temporary file first, then renamed: `target` is never half-written)."""
    proto = onnx.load(str(source))
    set_onnx_metadata(proto, {**read_onnx_metadata(source), **updates})
    with atomic_output(target) as tmp:
        onnx.save(proto, str(tmp))
    return target


def _tidy_graph(proto: onnx.ModelProto) -> None:
    """Tidy the traced graph: Constant nodes become initializers, Identity nodes of constants
    become aliases. int8: every ``QuantizeLinear(constant)`` (the weights) becomes the int8 tensor
    it produces, so weights are int8 initializers feeding a ``DequantizeLinear`` (the standard
    QDQ layout; a 4x smaller file), and conv biases become int32 (`_quantize_conv_biases`).
    Activation Q nodes are untouched."""
    graph = proto.graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias: dict[str, str] = {}
    nodes = []
    for node in graph.node:
        inputs = [alias.get(n, n) for n in node.input]
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            continue
        if node.op_type == "Identity" and inputs[0] in values and node.output[0] not in outputs:
            alias[node.output[0]] = inputs[0]
            continue
        if node.op_type == "QuantizeLinear" and len(inputs) == 3 and all(n in values for n in inputs):
            x, scale, zero = (values[n] for n in inputs)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * x.ndim
            if scale.size > 1:
                shape[axis] = scale.size
            info = np.iinfo(zero.dtype)
            q = np.rint(x.astype(np.float32) / scale.astype(np.float32).reshape(shape))
            q = np.clip(q + zero.astype(np.int64).reshape(shape), info.min, info.max).astype(zero.dtype)
            values[node.output[0]] = q
            continue
        del node.input[:]
        node.input.extend(inputs)
        nodes.append(node)
    nodes = _quantize_conv_biases(nodes, values)
    used = {n for node in nodes for n in node.input} | outputs
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(np.asarray(v), name) for name, v in values.items() if name in used)


def _quantize_conv_biases(nodes: list, values: dict) -> list:
    """Store each QDQ Conv's float bias as ``DequantizeLinear(int32, s_in * s_w)`` (the bias is
    already on that grid: QAT snapped it), the standard QDQ form of a quantized conv."""
    producer = {out: node for node in nodes for out in node.output}
    result = []
    for node in nodes:
        if node.op_type == "Conv" and len(node.input) == 3 and node.input[2] in values:
            act, weight = producer.get(node.input[0]), producer.get(node.input[1])
            if (act is not None and weight is not None and act.op_type == weight.op_type == "DequantizeLinear"
                    and act.input[1] in values and weight.input[1] in values):
                scale = (values[act.input[1]].astype(np.float32) * values[weight.input[1]].astype(np.float32))
                scale = np.broadcast_to(scale, values[node.input[2]].shape).astype(np.float32)
                q = np.rint(values[node.input[2]].astype(np.float64) / scale)
                name = f"{node.input[2]}_{len(result)}"  # biases may be shared (deduplicated) initializers
                values[name + "_int32"] = np.clip(q, -(2**31), 2**31 - 1).astype(np.int32)
                values[name + "_scale"] = scale
                values[name + "_zero"] = np.zeros(scale.shape, np.int32)
                result.append(onnx.helper.make_node(
                    "DequantizeLinear", [name + "_int32", name + "_scale", name + "_zero"], [name + "_dq"], axis=0,
                    name=node.name + "_bias_dq"))
                node.input[2] = name + "_dq"
        result.append(node)
    return result
