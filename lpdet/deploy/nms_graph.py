"""NMS inside the exported graph: one ONNX file from image to final detections (`lpdet export --nms-in-graph`).

`append_nms(model, cfg)` takes a graph of the lpdet contract (`lpdet.deploy.export`: outputs
``scores [1, A, K]`` and ``boxes [1, A, 4]``), fp32 or int8 alike, and appends the post-processing
of `lpdet.models.postprocess.select_detections` as standard ONNX operators (``TopK``,
``NonMaxSuppression``, ``Gather``...), so a runtime needs no Python after the graph.

Output contract of such a graph (batch 1; ``N <= cfg.top_k`` varies per image):

* ``detection_boxes``   float32 ``[1, N, 4]``: normalised ``x1, y1, x2, y2`` clipped to ``[0, 1]``
* ``detection_scores``  float32 ``[1, N]``: decreasing
* ``detection_classes`` int64 ``[1, N]``: labels ``1..K`` (``class_names[label - 1]``)
* ``num_detections``    int64 ``[1]``: ``N``

The metadata gains ``nms_in_graph: true`` and the ``postprocess`` settings baked in, and its
``outputs`` list names the four outputs above; `lpdet.deploy.runtime.load_model` recognises such
files and returns these detections from `predict` without running NMS again.

Same detections as `select_detections` with the same settings, by construction:
* per class (default): ``TopK`` of each class's scores (``pre_nms_top_k``; equal scores: lower
  anchor first) -> boxes clipped, empty ones scored -inf -> ``NonMaxSuppression`` with each class as
  its own batch entry (``center_point_box=0``: corner boxes, which ONNX accepts in either
  coordinate order, so ``xyxy`` serves; it keeps scores ``> score_threshold`` and suppresses
  IoU ``> nms_iou``, as torchvision does; ``max_output_boxes_per_class`` = ``pre_nms_top_k``, a
  bound never reached after the ``TopK``) -> ``TopK`` of the kept scores across classes
  (``top_k``; equal scores: lower class first, as in Python).
* class-agnostic: ``ArgMax`` over classes per anchor, one ``NonMaxSuppression`` over all anchors
  with ``max_output_boxes_per_class = top_k`` (greedy NMS keeps in score order: its first
  ``top_k`` are the answer).
The thresholds are float32 in the graph; Python compares the IoU in double, so a pair whose
float32 IoU lies within 1e-7 of the threshold could be decided differently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor

from lpdet.deploy.export import update_metadata
from lpdet.deploy.model import read_onnx_metadata
from lpdet.errors import LpdetError
from lpdet.models.postprocess import PostprocessConfig

__all__ = ["append_nms", "append_nms_to_file", "NMS_OUTPUTS", "has_nms_in_graph", "in_graph_functions"]

NMS_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
_PREFIX = "lpdet_nms/"


def has_nms_in_graph(meta: dict) -> bool:
    """Whether an exported model's lpdet metadata says its graph ends in NMS."""
    return bool(meta.get("nms_in_graph"))


class _Builder:
    """Appends nodes and constants with unique names under `_PREFIX`."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{_PREFIX}{hint}_{self.count}"

    def const(self, value, dtype) -> str:
        name = self.name("const")
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs) -> list[str]:
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        self.graph.node.append(helper.make_node(op_type, inputs, names, name=self.name(op_type), **attrs))
        return names

    def one(self, op_type: str, *inputs: str, **attrs) -> str:
        return self.op(op_type, list(inputs), **attrs)[0]


def _static_dims(model: onnx.ModelProto, name: str) -> list[int]:
    for value in model.graph.output:
        if value.name == name:
            dims = [d.dim_value if d.HasField("dim_value") else 0 for d in value.type.tensor_type.shape.dim]
            if dims and all(dims):
                return dims
    raise LpdetError(f"the graph has no static output {name!r} (lpdet contract: scores [1, A, K], boxes [1, A, 4]); "
                     f"export the checkpoint again with lpdet export")


def _nonempty_scores(b: _Builder, boxes: str, scores: str) -> str:
    """`scores` where the box (`[..., 4]` xyxy, clipped) has positive width and height, else -inf:
    below any threshold, as Python drops such boxes."""
    corner1 = b.one("Gather", boxes, b.const([0, 1], np.int64), axis=-1)
    corner2 = b.one("Gather", boxes, b.const([2, 3], np.int64), axis=-1)
    size = b.one("Sub", corner2, corner1)
    width = b.one("Gather", size, b.const(0, np.int64), axis=-1)
    height = b.one("Gather", size, b.const(1, np.int64), axis=-1)
    nonempty = b.one("Greater", b.one("Min", width, height), b.const(0.0, np.float32))
    return b.one("Where", nonempty, scores, b.const(-np.inf, np.float32))


def _nms(b: _Builder, boxes: str, scores: str, max_per_class: int, cfg: PostprocessConfig) -> str:
    """NonMaxSuppression over `boxes [num_batches, n, 4]`, `scores [num_batches, 1, n]` -> selected [S, 3]."""
    return b.one("NonMaxSuppression", boxes, scores, b.const([max_per_class], np.int64),
                 b.const([cfg.nms_iou], np.float32), b.const([cfg.score_threshold], np.float32), center_point_box=0)


def _per_class(b: _Builder, scores: str, boxes: str, anchors: int, cfg: PostprocessConfig) -> tuple[str, str, str]:
    """Per-class NMS: detections (scores [M], boxes [M, 4], labels 0-based [M]), before the final top-k."""
    candidates = min(cfg.pre_nms_top_k, anchors)
    by_class = b.one("Transpose", scores, perm=[1, 0])  # [K, A]
    top_scores, top_anchors = b.op("TopK", [by_class, b.const([candidates], np.int64)], outputs=2,
                                   axis=1, largest=1, sorted=1)  # [K, P]
    top_boxes = b.one("Gather", boxes, top_anchors, axis=0)  # [K, P, 4]
    masked = _nonempty_scores(b, top_boxes, top_scores)
    selected = _nms(b, top_boxes, b.one("Unsqueeze", masked, b.const([1], np.int64)), candidates, cfg)
    label = b.one("Gather", selected, b.const(0, np.int64), axis=1)  # the batch entry is the class
    rank = b.one("Gather", selected, b.const(2, np.int64), axis=1)
    flat = b.one("Add", b.one("Mul", label, b.const(candidates, np.int64)), rank)
    kept_scores = b.one("Gather", b.one("Reshape", top_scores, b.const([-1], np.int64)), flat)
    kept_boxes = b.one("Gather", b.one("Reshape", top_boxes, b.const([-1, 4], np.int64)), flat)
    return kept_scores, kept_boxes, label


def _class_agnostic(b: _Builder, scores: str, boxes: str, cfg: PostprocessConfig) -> tuple[str, str, str]:
    """One class per anchor (its best; ArgMax picks the first on a tie), NMS across classes."""
    label = b.one("ArgMax", scores, axis=1, keepdims=1)  # [A, 1]
    best = b.one("Squeeze", b.one("GatherElements", scores, label, axis=1), b.const([1], np.int64))  # [A]
    masked = _nonempty_scores(b, boxes, best)
    selected = _nms(b, b.one("Unsqueeze", boxes, b.const([0], np.int64)),
                    b.one("Unsqueeze", masked, b.const([0, 1], np.int64)), cfg.top_k, cfg)
    anchor = b.one("Gather", selected, b.const(2, np.int64), axis=1)
    flat_labels = b.one("Reshape", label, b.const([-1], np.int64))
    return b.one("Gather", masked, anchor), b.one("Gather", boxes, anchor), b.one("Gather", flat_labels, anchor)


def append_nms(model: onnx.ModelProto, cfg: PostprocessConfig | None = None) -> onnx.ModelProto:
    """Append `cfg`'s post-processing to an lpdet graph in place (see the module docstring) and
    return it; its outputs become `NMS_OUTPUTS`. The metadata is the caller's (see `append_nms_to_file`)."""
    cfg = cfg or PostprocessConfig()
    graph = model.graph
    outputs = {o.name for o in graph.output}
    if set(NMS_OUTPUTS) <= outputs:
        raise LpdetError("the graph already ends in NMS (it has the detection_* outputs); export it once")
    if not {"scores", "boxes"} <= outputs:
        raise LpdetError(f"the graph's outputs are {sorted(outputs)}, not lpdet's scores and boxes; "
                         f"export the checkpoint with lpdet export")
    if cfg.top_k < 1 or cfg.pre_nms_top_k < 1:
        raise LpdetError(f"NMS in the graph needs top_k and pre_nms_top_k >= 1, got {cfg.top_k} and {cfg.pre_nms_top_k}")
    batch, anchors, _classes = _static_dims(model, "scores")
    if batch != 1:
        raise LpdetError(f"NMS in the graph needs a batch-1 graph, this one has batch {batch}; export it again")
    b = _Builder(graph)
    scores = b.one("Squeeze", "scores", b.const([0], np.int64))  # [A, K]
    boxes = b.one("Clip", b.one("Squeeze", "boxes", b.const([0], np.int64)),
                  b.const(0.0, np.float32), b.const(1.0, np.float32))  # [A, 4]
    if cfg.class_agnostic:
        kept_scores, kept_boxes, label = _class_agnostic(b, scores, boxes, cfg)
    else:
        kept_scores, kept_boxes, label = _per_class(b, scores, boxes, anchors, cfg)
    # The `top_k` best across classes, in decreasing order (TopK: lower index first on a tie).
    count = b.one("Min", b.one("Shape", kept_scores), b.const([cfg.top_k], np.int64))
    final_scores, order = b.op("TopK", [kept_scores, count], outputs=2, axis=0, largest=1, sorted=1)
    final_boxes = b.one("Gather", kept_boxes, order)
    final_labels = b.one("Add", b.one("Gather", label, order), b.const(1, np.int64))
    batch_axis = b.const([0], np.int64)
    results = [b.one("Unsqueeze", final_boxes, batch_axis), b.one("Unsqueeze", final_scores, batch_axis),
               b.one("Unsqueeze", final_labels, batch_axis), count]
    for result, name in zip(results, NMS_OUTPUTS):
        graph.node.append(helper.make_node("Identity", [result], [name], name=f"{_PREFIX}{name}"))
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info(NMS_OUTPUTS[0], TensorProto.FLOAT, [1, "N", 4]),
        helper.make_tensor_value_info(NMS_OUTPUTS[1], TensorProto.FLOAT, [1, "N"]),
        helper.make_tensor_value_info(NMS_OUTPUTS[2], TensorProto.INT64, [1, "N"]),
        helper.make_tensor_value_info(NMS_OUTPUTS[3], TensorProto.INT64, [1]),
    ])
    return model


def append_nms_to_file(source: Path | str, target: Path | str, cfg: PostprocessConfig | None = None) -> Path:
    """Write `source` (an lpdet .onnx) with NMS appended to `target` (may be `source`): metadata
    gains ``nms_in_graph``, the baked ``postprocess`` settings and the new ``outputs``."""
    cfg = cfg or PostprocessConfig()
    source, target = Path(source), Path(target)
    meta = read_onnx_metadata(source)
    if has_nms_in_graph(meta):
        raise LpdetError(f"{source}: already has NMS in its graph; export the checkpoint again without --nms-in-graph")
    proto = append_nms(onnx.load(str(source)), cfg)
    onnx.checker.check_model(proto)
    tmp = target.with_name(f".{target.name}.nms.tmp")
    try:
        onnx.save(proto, str(tmp))
        update_metadata(tmp, target, {"nms_in_graph": True, "postprocess": asdict(cfg), "outputs": list(NMS_OUTPUTS)})
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _detections(outputs: list[np.ndarray]) -> dict:
    """The four graph outputs of one image -> the dict `select_detections` returns (torch tensors)."""
    boxes, scores, classes, _count = outputs
    return {"boxes": torch.from_numpy(np.ascontiguousarray(boxes[0], dtype=np.float32)).reshape(-1, 4),
            "scores": torch.from_numpy(np.ascontiguousarray(scores[0], dtype=np.float32)),
            "labels": torch.from_numpy(np.ascontiguousarray(classes[0], dtype=np.int64))}


def in_graph_functions(session, path: Path, baked: PostprocessConfig,
                       check_images: Callable[[Tensor], None]) -> tuple[Callable, Callable]:
    """`(forward, detect)` for `lpdet.deploy.runtime.DeployedModel` of an onnxruntime `session` on
    a graph with NMS: `detect(images, cfg)` runs it image by image (the graph has batch 1) and
    returns `select_detections`-style dicts; `forward` (raw scores and boxes) does not exist."""

    def forward(images: Tensor):
        raise LpdetError(f"{path}: has NMS in its graph, so it returns final detections only; export the "
                         f"checkpoint again without --nms-in-graph to get raw scores and boxes")

    def detect(images: Tensor, cfg: PostprocessConfig | None = None) -> list[dict]:
        if cfg is not None and cfg != baked:
            changed = ", ".join(f"{k} {getattr(cfg, k)}" for k in asdict(cfg) if getattr(cfg, k) != getattr(baked, k))
            raise LpdetError(f"{path}: has NMS in its graph with {asdict(baked)}, so it cannot run {changed}; "
                             f"drop those options, or export again with --nms-in-graph and them")
        check_images(images)
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        return [_detections(session.run(list(NMS_OUTPUTS), {"images": array[i:i + 1]})) for i in range(len(array))]

    return forward, detect
