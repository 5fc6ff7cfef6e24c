"""One loader for every deployable form of a detector: checkpoints (torch) and exported ONNX.

`load_model(path)` returns a `DeployedModel` whose `forward(images)` gives the raw graph
outputs `(scores [B, A, K], boxes [B, A, 4])` (probabilities without background, decoded
normalised xyxy; before NMS) and whose `predict(images)` adds `select_detections`, so
evaluation, benchmarking and `lpdet predict` treat a checkpoint and an int8 ONNX file alike.

ONNX graphs must come from `lpdet export` (or `lpdet quantize`): the "lpdet" metadata entry
they carry holds the resolution, class names and COCO category ids.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor

from lpdet.deploy.cpu_int8 import needs_exact_int8_kernels
from lpdet.deploy.model import (KINDS, METADATA_KEY, DeployedModel, check_images, first_line,
                                read_onnx_metadata)
from lpdet.deploy.nms_graph import has_nms_in_graph, in_graph_functions
from lpdet.deploy.tflite import load_tflite
from lpdet.errors import LpdetError
from lpdet.models.checkpoint_format import WEIGHTS, load_checkpoint, resolve_checkpoint
from lpdet.models.config import is_qat
from lpdet.models.postprocess import decode, postprocess_from_metadata
from lpdet.models.registry import is_classifier
from lpdet.quant.qat import build_model
from lpdet.threads import torch_threads

__all__ = ["DeployedModel", "load_model", "load_detector", "model_size_bytes", "read_onnx_metadata", "onnx_session",
           "METADATA_KEY", "KINDS"]

_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar"}
_TFLITE_HINT = ('TFLite models need the optional LiteRT runtime: pip install "lpdet[tflite]" (ai-edge-litert), '
                "or export the checkpoint with lpdet export --format onnx")


def load_detector(path: Path | str, *, resolution: int | None = None):
    """Build the detector a checkpoint describes (float or QAT, as its config says) and load its
    weights; returns (detector in eval mode, checkpoint)."""
    ckpt = load_checkpoint(path)
    config = ckpt.model_config
    if resolution is not None and resolution != config.resolution:
        config = replace(config, resolution=resolution)
    detector = build_model(config)
    missing, unexpected = detector.load_state_dict(ckpt.model_state, strict=False)
    if missing or unexpected:
        raise LpdetError(f"{ckpt.path}: weights do not fit {config.arch} (missing {len(missing)}, "
                         f"unexpected {len(unexpected)} tensors); the checkpoint is damaged or from another lpdet")
    detector.eval()
    return detector, ckpt


# ----------------------------------------------------------------------------- helpers
def model_size_bytes(path: Path | str) -> int:
    """Bytes on disk of a model: an .onnx file (plus external data files it names) or a checkpoint's weights."""
    path = Path(path)
    if path.is_dir():
        return (resolve_checkpoint(path) / WEIGHTS).stat().st_size
    total = path.stat().st_size
    if path.suffix.lower() == ".onnx":
        try:
            model = onnx.load(str(path), load_external_data=False)
            locations = {entry.value for tensor in model.graph.initializer for entry in tensor.external_data
                         if entry.key == "location"}
            total += sum((path.parent / loc).stat().st_size for loc in locations if (path.parent / loc).is_file())
        except Exception:  # size is informative only
            pass
    return total


def onnx_session(path: Path | str | onnx.ModelProto, *, threads: int = 0, optimized_model: Path | None = None,
                 profile: Path | None = None, exact_int8_kernels: bool | None = None):
    """An onnxruntime CPU session of a file or an in-memory model, with all graph optimisations
    (the fast NCHWc / QLinearConv kernels need ORT_ENABLE_ALL); `threads` > 0 fixes the intra-op
    thread count; `profile` turns onnxruntime's profiler on, its trace file named from that prefix
    (`session.end_profiling()` returns it). `exact_int8_kernels`: onnxruntime's exact u8 x s8
    kernels on or off (None: on where the CPU needs them, `lpdet.deploy.cpu_int8`)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # warnings about unused initializers etc. are noise here
    # x86 CPUs without VNNI (AVX2, AVX-512 before VNNI) sum pairs of u8 x s8 products in int16 and
    # saturate; a fully int8 graph then computes something else than the model (logits up to 50
    # steps off, seen under AVX2 emulation). This makes onnxruntime use its exact kernels there. On
    # VNNI/AMX CPUs it is left off: they do not saturate, and there the option made MobileNetV2-SSDLite's
    # int8 graph 2.6x slower (1.25x fp32 instead of 0.48x; 2-core AMX Xeon, benchmarks/int8_profile.py).
    if needs_exact_int8_kernels() if exact_int8_kernels is None else exact_int8_kernels:
        options.add_session_config_entry("session.x64quantprecision", "1")
    if threads > 0:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if optimized_model is not None:
        options.optimized_model_filepath = str(optimized_model)
    if profile is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile)
    source = path.SerializeToString() if isinstance(path, onnx.ModelProto) else str(path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------- loaders
def _load_onnx(path: Path, threads: int, resolution: int | None) -> DeployedModel:
    try:
        session = onnx_session(path, threads=threads)
    except Exception as e:  # InvalidProtobuf, Fail, NoSuchFile, ...: onnxruntime's own types
        raise LpdetError(f"{path}: not a loadable ONNX model ({first_line(e)}); "
                         f"export one with lpdet export --format onnx") from None
    meta = read_onnx_metadata(path, session.get_modelmeta().custom_metadata_map)
    if meta.get("task") == "classification":
        return _onnx_classifier(path, session, meta, threads)
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

    def raw_forward(images: Tensor) -> tuple[Tensor, Tensor]:
        check_images(images, model_resolution, path)
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

    forward, detect = raw_forward, None
    if has_nms_in_graph(meta):  # NMS inside the graph: no raw outputs, detections come whole
        forward, detect = in_graph_functions(session, path, postprocess_from_metadata(meta),
                                             lambda images: check_images(images, model_resolution, path))
    return DeployedModel(
        kind="onnx-fp32" if quantization == "fp32" else "onnx-int8",
        path=path, resolution=model_resolution, class_names=class_names, category_ids=category_ids,
        forward=forward, quantization=quantization, arch=str(meta.get("arch", "")), metadata=meta, threads=threads,
        postprocess=postprocess_from_metadata(meta), detect=detect,
    )


def _onnx_classifier(path: Path, session, meta: dict, threads: int) -> DeployedModel:
    """A classifier's graph (`lpdet classify export`): images [1, 3, R, R] -> scores [1, K]."""
    inputs, outputs = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    if inputs != ["images"] or outputs != ["scores"]:
        raise LpdetError(f"{path}: has inputs {inputs} and outputs {outputs}, not the lpdet classifier contract "
                         f"(images -> scores); re-export it with lpdet classify export")
    resolution = int(meta.get("resolution") or 0)
    quantization = str(meta.get("quantization", "fp32"))

    def forward(images: Tensor) -> Tensor:
        check_images(images, resolution, path)
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        scores = [session.run(["scores"], {"images": array[i:i + 1]})[0] for i in range(len(array))]
        return torch.from_numpy(np.concatenate(scores)) if scores else torch.zeros(0, int(meta["num_classes"]))

    class_names = [str(c) for c in meta.get("class_names") or range(int(meta.get("num_classes", 0)))]
    return DeployedModel(kind="onnx-fp32" if quantization == "fp32" else "onnx-int8", path=path,
                         resolution=resolution, class_names=class_names, category_ids=list(range(len(class_names))),
                         forward=forward, quantization=quantization, arch=str(meta.get("arch", "")), metadata=meta,
                         threads=threads, task="classification")


def _load_checkpoint(path: Path, resolution: int | None, threads: int = 0) -> DeployedModel:
    detector, ckpt = load_detector(path, resolution=resolution)
    if is_classifier(detector.config):
        return _checkpoint_classifier(detector, ckpt, threads)
    qat = is_qat(detector.config)
    anchors = detector.anchors
    config = detector.config

    def forward(images: Tensor) -> tuple[Tensor, Tensor]:
        with torch_threads(threads), torch.inference_mode():
            cls_logits, box_deltas = detector(images)
            return decode(cls_logits, box_deltas, anchors)

    return DeployedModel(
        kind="torch-qat" if qat else "torch-fp32",
        path=Path(ckpt.path), resolution=int(config.resolution), class_names=list(ckpt.class_names),
        category_ids=list(ckpt.category_ids), forward=forward, quantization=config.quantization,
        arch=config.arch, metadata={"arch": config.arch, "width": config.width, "num_classes": config.num_classes},
        threads=threads,
    )


def _checkpoint_classifier(classifier, ckpt, threads: int) -> DeployedModel:
    config = classifier.config

    def forward(images: Tensor) -> Tensor:
        with torch_threads(threads), torch.inference_mode():
            return torch.softmax(classifier(images), dim=-1)

    return DeployedModel(
        kind="torch-qat" if is_qat(config) else "torch-fp32", path=Path(ckpt.path), resolution=int(config.resolution),
        class_names=list(ckpt.class_names), category_ids=list(ckpt.category_ids), forward=forward,
        quantization=config.quantization, arch=config.arch,
        metadata={"arch": config.arch, "width": config.width, "num_classes": config.num_classes,
                  "quant_friendly": config.quant_friendly, "task": "classification"},
        threads=threads, task="classification")


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
        if importlib.util.find_spec("ai_edge_litert") is None:
            raise LpdetError(f"{path}: {_TFLITE_HINT}")

        return load_tflite(path, threads, resolution)
    if suffix in _PICKLE_SUFFIXES:
        raise LpdetError(f"{path}: lpdet never unpickles (a pickle can run arbitrary code); pass an lpdet checkpoint "
                         f"directory (model.safetensors + checkpoint.json) or an .onnx file from lpdet export")
    if suffix == ".safetensors":
        raise LpdetError(f"{path}: bare weights without a model description; pass the checkpoint directory "
                         f"that holds model.safetensors and checkpoint.json")
    raise LpdetError(f"{path}: unknown model format {suffix or '(no extension)'!r}; pass a checkpoint or run "
                     f"directory, or an .onnx file from lpdet export")
