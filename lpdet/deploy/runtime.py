"""One loader for every deployable form of a detector: checkpoints (torch) and exported ONNX.

`load_model(path)` returns a `DeployedModel` whose `forward(images)` gives the raw graph
outputs `(scores [B, A, K], boxes [B, A, 4])` (probabilities without background, decoded
normalised xyxy; before NMS) and whose `predict(images)` adds `select_detections`, so
evaluation, benchmarking and `lpdet predict` treat a checkpoint and an int8 ONNX file alike.

ONNX graphs must come from `lpdet export` (or `lpdet quantize`): the "lpdet" metadata entry
they carry holds the resolution, class names and COCO category ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lpdet.deploy.nms_graph import has_nms_in_graph, in_graph_functions
from lpdet.errors import LpdetError
from lpdet.models.postprocess import PostprocessConfig, decode, postprocess_from_metadata, select_detections

__all__ = ["DeployedModel", "load_model", "model_size_bytes", "read_onnx_metadata", "onnx_session",
           "METADATA_KEY", "KINDS"]

METADATA_KEY = "lpdet"
KINDS = ("torch-fp32", "torch-qat", "onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8")
_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar"}
_TFLITE_HINT = ('TFLite models need the optional LiteRT runtime: pip install "lpdet[tflite]" (ai-edge-litert), '
                "or export the checkpoint with lpdet export --format onnx")


@dataclass
class DeployedModel:
    """What evaluation, benchmarking and prediction need, whatever the file."""

    kind: str  # "torch-fp32" | "torch-qat" | "onnx-fp32" | "onnx-int8"
    path: Path  # the checkpoint directory or the .onnx file
    resolution: int
    class_names: list[str]
    category_ids: list[int]
    forward: Callable[[Tensor], tuple[Tensor, Tensor]]  # raw (scores, boxes) for a batch, before NMS
    quantization: str = "fp32"  # "fp32", "qat", "int8-qat", "int8-ptq", "int8-naive", ...
    arch: str = ""
    metadata: dict = field(default_factory=dict, repr=False)  # the ONNX "lpdet" entry / checkpoint facts
    threads: int = 0  # threads it runs with (0: the runtime's default)
    # Post-processing it is deployed with: from the metadata (a model picked by `lpdet design`
    # carries its tuned NMS setting), else the defaults. `predict` and `benchmark` use it.
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    # A graph with NMS inside (lpdet.deploy.nms_graph): (images, cfg) -> detections; `forward` raises.
    detect: Callable[[Tensor, PostprocessConfig | None], list[dict]] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def predict(self, images: Tensor, cfg: PostprocessConfig | None = None) -> list[dict]:
        """Detections per image (normalised xyxy boxes, scores, labels 1..K): forward + select_detections
        with `cfg` (default: the model's own `postprocess`)."""
        if self.detect is not None:
            return self.detect(images, cfg)
        scores, boxes = self.forward(images)
        return select_detections(scores, boxes, cfg or self.postprocess)


# ----------------------------------------------------------------------------- helpers
def model_size_bytes(path: Path | str) -> int:
    """Bytes on disk of a model: an .onnx file (plus external data files it names) or a checkpoint's weights."""
    path = Path(path)
    if path.is_dir():
        from lpdet.train.checkpoint import WEIGHTS, resolve_checkpoint

        return (resolve_checkpoint(path) / WEIGHTS).stat().st_size
    total = path.stat().st_size
    if path.suffix.lower() == ".onnx":
        try:
            import onnx

            model = onnx.load(str(path), load_external_data=False)
            locations = {entry.value for tensor in model.graph.initializer for entry in tensor.external_data
                         if entry.key == "location"}
            total += sum((path.parent / loc).stat().st_size for loc in locations if (path.parent / loc).is_file())
        except Exception:  # size is informative only
            pass
    return total


def onnx_session(path: Path | str, *, threads: int = 0, optimized_model: Path | None = None):
    """An onnxruntime CPU session with all graph optimisations (the fast NCHWc / QLinearConv
    kernels need ORT_ENABLE_ALL); `threads` > 0 fixes the intra-op thread count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # warnings about unused initializers etc. are noise here
    if threads > 0:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if optimized_model is not None:
        options.optimized_model_filepath = str(optimized_model)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _first_line(error: BaseException) -> str:
    """A short reason from an onnx/onnxruntime exception (its code prefix and the repeated path removed)."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    line = re.sub(r"^\[ONNXRuntimeError\] : \d+ : ", "", line)
    line = re.sub(r"Load model from .* failed:\s*", "", line)
    return line[:300]


def read_onnx_metadata(path: Path | str, custom: dict[str, str] | None = None) -> dict:
    """The decoded "lpdet" metadata entry of an ONNX file (LpdetError if absent or broken)."""
    path = Path(path)
    if custom is None:
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:
            raise LpdetError(f"{path}: not a readable ONNX model ({_first_line(e)}); "
                             f"re-export it with lpdet export") from None
        custom = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in custom:
        raise LpdetError(f"{path}: was not exported by lpdet export; its metadata has no '{METADATA_KEY}' entry "
                         f"(resolution, class names), so export the checkpoint with lpdet export --format onnx")
    try:
        meta = json.loads(custom[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise LpdetError(f"{path}: its '{METADATA_KEY}' metadata is not valid JSON ({e}); "
                         f"re-export it with lpdet export") from None
    if not isinstance(meta, dict):
        raise LpdetError(f"{path}: its '{METADATA_KEY}' metadata is not a JSON object; re-export it with lpdet export")
    return meta


def _check_images(images: Tensor, resolution: int, path: Path) -> None:
    if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (resolution, resolution):
        raise LpdetError(f"{path}: model input must be [B, 3, {resolution}, {resolution}], got {list(images.shape)}; "
                         f"resize images to {resolution}x{resolution}")
    if not images.is_floating_point():
        raise LpdetError(f"{path}: model input must be float in [0, 1], got {images.dtype}; "
                         f"convert with .float() / 255")


# ----------------------------------------------------------------------------- loaders
def _load_onnx(path: Path, threads: int, resolution: int | None) -> DeployedModel:
    try:
        session = onnx_session(path, threads=threads)
    except Exception as e:  # InvalidProtobuf, Fail, NoSuchFile, ...: onnxruntime's own types
        raise LpdetError(f"{path}: not a loadable ONNX model ({_first_line(e)}); "
                         f"export one with lpdet export --format onnx") from None
    meta = read_onnx_metadata(path, session.get_modelmeta().custom_metadata_map)
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if "images" not in inputs or not ({"scores", "boxes"} <= outputs or has_nms_in_graph(meta)):
        raise LpdetError(f"{path}: has inputs {sorted(inputs)} and outputs {sorted(outputs)}, not the lpdet graph "
                         f"contract (images -> scores, boxes); re-export it with lpdet export")
    shape = inputs["images"].shape
    graph_resolution = shape[-1] if isinstance(shape[-1], int) else None
    model_resolution = int(meta.get("resolution") or graph_resolution or 0)
    if not model_resolution:
        raise LpdetError(f"{path}: its metadata names no resolution; re-export it with lpdet export")
    if resolution is not None and resolution != model_resolution:
        raise LpdetError(f"{path}: an ONNX graph has a fixed input size {model_resolution}; "
                         f"export the checkpoint again at resolution {resolution}")
    num_classes = int(meta.get("num_classes") or session.get_outputs()[0].shape[-1] or 0)
    class_names = [str(c) for c in meta.get("class_names") or [f"class{i}" for i in range(1, num_classes + 1)]]
    category_ids = [int(c) for c in meta.get("category_ids") or range(1, len(class_names) + 1)]
    quantization = str(meta.get("quantization", "fp32"))
    fixed_batch = isinstance(shape[0], int)
    input_type = inputs["images"].type  # "tensor(float)"

    def forward(images: Tensor) -> tuple[Tensor, Tensor]:
        _check_images(images, model_resolution, path)
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        if input_type != "tensor(float)":
            raise LpdetError(f"{path}: input type {input_type} is not float32; re-export it with lpdet export")
        if not fixed_batch or shape[0] == len(array):
            scores, boxes = session.run(["scores", "boxes"], {"images": array})
        else:  # batch-1 graph: one image at a time
            parts = [session.run(["scores", "boxes"], {"images": array[i:i + 1]}) for i in range(len(array))]
            if not parts:
                return torch.zeros(0, 0, num_classes), torch.zeros(0, 0, 4)
            scores = np.concatenate([p[0] for p in parts])
            boxes = np.concatenate([p[1] for p in parts])
        return torch.from_numpy(scores), torch.from_numpy(boxes)

    detect = None
    if has_nms_in_graph(meta):
        forward, detect = in_graph_functions(session, path, postprocess_from_metadata(meta),
                                             lambda images: _check_images(images, model_resolution, path))
    return DeployedModel(
        kind="onnx-fp32" if quantization == "fp32" else "onnx-int8",
        path=path, resolution=model_resolution, class_names=class_names, category_ids=category_ids,
        forward=forward, quantization=quantization, arch=str(meta.get("arch", "")), metadata=meta, threads=threads,
        postprocess=postprocess_from_metadata(meta), detect=detect,
    )


def _load_checkpoint(path: Path, resolution: int | None, threads: int = 0) -> DeployedModel:
    from lpdet.train.checkpoint import load_detector

    detector, ckpt = load_detector(path, resolution=resolution)
    detector.eval()
    qat = "qat" in (getattr(ckpt, "quantization", None), getattr(detector, "quantization", None),
                    ckpt.train_state.get("quantization"))
    anchors = detector.anchors
    config = detector.config

    def forward(images: Tensor) -> tuple[Tensor, Tensor]:
        previous = torch.get_num_threads()
        if threads > 0 and previous != threads:
            torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                cls_logits, box_deltas = detector(images)
                return decode(cls_logits, box_deltas, anchors)
        finally:
            if torch.get_num_threads() != previous:
                torch.set_num_threads(previous)

    return DeployedModel(
        kind="torch-qat" if qat else "torch-fp32",
        path=Path(ckpt.path), resolution=int(config.resolution), class_names=list(ckpt.class_names),
        category_ids=list(ckpt.category_ids), forward=forward, quantization="qat" if qat else "fp32",
        arch=config.arch, metadata={"arch": config.arch, "width": config.width, "num_classes": config.num_classes},
        threads=threads,
    )


def load_model(path: Path | str, *, threads: int = 0, resolution: int | None = None) -> DeployedModel:
    """Load a checkpoint (a checkpoint or run directory) or an `.onnx` file exported by lpdet.

    `threads` > 0 sets onnxruntime's intra-op threads, or the torch threads during each
    `forward` of a checkpoint (0: the runtime's / process's default). `resolution` re-sizes a
    checkpoint's anchors; an ONNX graph's input size is fixed. Anything unusable raises
    `LpdetError` naming the file and the fix.
    """
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if path.is_dir():
        return _load_checkpoint(path, resolution, threads)
    if not path.exists():
        if suffix == ".onnx":
            raise LpdetError(f"{path}: no such file; export one with lpdet export --format onnx")
        if suffix or not path.with_name(path.name + ".old").is_dir():
            raise LpdetError(f"{path}: no such model; pass a checkpoint or run directory, or an .onnx file "
                             f"from lpdet export")
        return _load_checkpoint(path, resolution, threads)  # a checkpoint caught mid-swap (NAME.old)
    if suffix == ".onnx":
        return _load_onnx(path, threads, resolution)
    if path.name in ("model.safetensors", "checkpoint.json"):
        return _load_checkpoint(path, resolution, threads)
    if suffix in (".tflite", ".lite"):
        import importlib.util

        if importlib.util.find_spec("ai_edge_litert") is None:
            raise LpdetError(f"{path}: {_TFLITE_HINT}")
        from lpdet.deploy.tflite import load_tflite

        return load_tflite(path, threads, resolution)
    if suffix in _PICKLE_SUFFIXES:
        raise LpdetError(f"{path}: lpdet never unpickles (a pickle can run arbitrary code); pass an lpdet checkpoint "
                         f"directory (model.safetensors + checkpoint.json) or an .onnx file from lpdet export")
    if suffix == ".safetensors":
        raise LpdetError(f"{path}: bare weights without a model description; pass the checkpoint directory "
                         f"that holds model.safetensors and checkpoint.json")
    raise LpdetError(f"{path}: unknown model format {suffix or '(no extension)'!r}; pass a checkpoint or run "
                     f"directory, or an .onnx file from lpdet export")
