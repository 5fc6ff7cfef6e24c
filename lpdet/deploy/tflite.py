"""TFLite export and loading through LiteRT (the optional extra: ``pip install "lpdet[tflite]"``).

The second on-device runtime, next to onnxruntime: `litert-torch` converts the detector to a
``.tflite`` flatbuffer and `ai_edge_litert`'s interpreter (XNNPACK CPU delegate) runs it.

Graph contract: the ONNX one (`lpdet.deploy.export`), with named signature tensors:

* input  ``images`` float32 ``[1, 3, R, R]`` RGB in ``[0, 1]`` (NCHW, like the ONNX graph; the
  converter inserts the layout transposes), ImageNet normalisation inside.
* outputs ``scores`` float32 ``[1, A, K]`` (softmax, background dropped) and ``boxes`` float32
  ``[1, A, 4]`` (decoded normalised xyxy, not clipped); no NMS in the graph.
* metadata: the same ``lpdet`` JSON object as the ONNX export (``quantization`` is ``"fp32"`` or
  ``"int8-ptq"``), stored as a TFLite ``Model.metadata`` entry named ``lpdet``.

int8 (when `calibration_images` are given): calibrated post-training quantization with
litert-torch's PT2E quantizer (per-channel symmetric int8 weights, per-tensor int8 activations,
histogram observers). Only the detector body (backbone, extras, heads) is quantized: the float
input is quantized by one ``QUANTIZE`` op right after the normalisation, every conv, depthwise
conv and residual add runs in int8, and the two head outputs are dequantized before the float
softmax and box decoding (int8 probabilities would lose every score below 1/127). The
int8 route is PTQ from a float checkpoint only: litert-torch 0.10's QAT annotation fails with
torchao 0.18, so a QAT checkpoint is refused (export it to ONNX with ``--format onnx-int8``).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lpdet.deploy.export import _ExportGraph
from lpdet.deploy.model import (INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, DeployedModel, check_images,
                                export_metadata)
from lpdet.errors import LpdetError
from lpdet.models.config import is_qat
from lpdet.models.postprocess import postprocess_from_metadata

__all__ = ["export_tflite", "load_tflite", "read_tflite_metadata", "INSTALL_HINT"]

INSTALL_HINT = 'pip install "lpdet[tflite]"'
_FILE_IDENTIFIER = b"TFL3"


def _require(module: str):
    """Import an optional LiteRT module by name (the `[tflite]` extra), or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise LpdetError(f"TFLite needs the optional LiteRT runtime ({module} is not installed): "
                         f"{INSTALL_HINT}") from None


class _NamedGraph(_ExportGraph):
    """`_ExportGraph` returning a dict, so the TFLite signature outputs are named scores / boxes."""

    def forward(self, images: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        scores, boxes = super().forward(images)
        return {OUTPUT_NAMES[0]: scores, OUTPUT_NAMES[1]: boxes}


def _check_calibration(images: Tensor, resolution: int) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (3, resolution, resolution):
        shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise LpdetError(f"calibration images: need [N, 3, {resolution}, {resolution}] in [0, 1], got {shape}")
    if len(images) == 0:
        raise LpdetError("calibration images: need at least 1")
    return images.detach().float().cpu()


def _quantize_body(model: nn.Module, images: Tensor, quantizer) -> nn.Module:
    """PT2E PTQ of the detector alone: export (strict, so residual adds keep the source info the
    quantizer's add annotator needs), observe `images` one at a time, convert to Q/DQ."""
    # torchao comes with the optional [tflite] extra: imported only when this route runs
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = images[:1]
    graph = torch.export.export(model, (example,), strict=True).module()
    graph = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for image in images:
            graph(image[None])
    return convert_pt2e(graph, fold_quantize=False)


def export_tflite(detector: nn.Module, path: Path, *, calibration_images: Tensor | None = None,
                  metadata: dict | None = None) -> Path:
    """Write `detector` (a float `Detector`) as a TFLite model to `path`: fully int8 (calibrated
    PTQ on `calibration_images`, ``[N, 3, R, R]`` in ``[0, 1]``) when given, else fp32. Same I/O
    contract as `export_onnx` (module docstring). The detector is left untouched. Returns `path`."""
    path = Path(path)
    litert_torch = _require("litert_torch")
    if is_qat(detector.config):
        raise LpdetError("a QAT detector cannot be exported to TFLite (litert-torch quantizes float models "
                         "only: export the float checkpoint with --format tflite-int8, or this one with "
                         "--format onnx-int8)")
    model = copy.deepcopy(detector).cpu().to(memory_format=torch.contiguous_format).eval()
    cfg = model.config
    resolution = int(cfg.resolution)
    example = torch.rand(1, 3, resolution, resolution)
    quantized = calibration_images is not None
    sink = io.StringIO()  # the converter prints progress lines on stdout
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        try:
            if quantized:  # the optional [tflite] extra: imported only on this route
                from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
                from litert_torch.quantize.quant_config import QuantConfig

                images = _check_calibration(calibration_images, resolution)
                quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
                body = _quantize_body(model, images, quantizer)
                graph = _NamedGraph(model)
                graph.detector = body  # the anchors stay those of `model`
                converted = litert_torch.convert(graph, sample_kwargs={INPUT_NAME: example},
                                                 quant_config=QuantConfig(pt2e_quantizer=quantizer))
            else:
                converted = litert_torch.convert(_NamedGraph(model).eval(), sample_kwargs={INPUT_NAME: example})
        except LpdetError:
            raise
        except Exception as e:
            raise LpdetError(f"{path}: litert-torch could not convert {cfg.arch} "
                             f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}); "
                             f"export ONNX instead with --format onnx / onnx-int8") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        converted.export(str(path))
    info = export_metadata(cfg, resolution, "int8-ptq" if quantized else "fp32", metadata, runtime="litert")
    if quantized:
        info["calibration_images"] = len(calibration_images)
    _write_metadata(path, json.dumps(info, default=str))
    return path


# ----------------------------------------------------------------------------- flatbuffer metadata
def _write_metadata(path: Path, text: str) -> None:
    """Add (or replace) the ``lpdet`` entry of the flatbuffer's Model.metadata."""
    # the optional [tflite] extra (flatbuffers comes with it): imported only when writing a .tflite
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    model.buffers = model.buffers or []
    model.metadata = [m for m in (model.metadata or []) if m.name not in (METADATA_KEY, METADATA_KEY.encode())]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(text.encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=_FILE_IDENTIFIER)
    path.write_bytes(bytes(builder.Output()))


def read_tflite_metadata(path: Path | str) -> dict:
    """The decoded ``lpdet`` metadata of a `.tflite` file (LpdetError if unreadable or absent)."""
    path = Path(path)
    schema = _require("ai_edge_litert.schema_py_generated")
    data = path.read_bytes()
    try:
        if len(data) < 8 or data[4:8] != _FILE_IDENTIFIER:
            raise ValueError("no TFL3 file identifier")
        model = schema.Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if (entry.Name() or b"").decode() == METADATA_KEY:
                raw = model.Buffers(entry.Buffer()).DataAsNumpy()
                meta = json.loads(bytes(raw).decode())
                break
        else:
            raise LpdetError(f"{path}: was not exported by lpdet export (no '{METADATA_KEY}' metadata: resolution, "
                             f"class names); export the checkpoint with lpdet export --format tflite")
    except LpdetError:
        raise
    except Exception as e:
        raise LpdetError(f"{path}: not a readable TFLite model ({type(e).__name__}: {str(e)[:120]}); "
                         f"export one with lpdet export --format tflite") from None
    if not isinstance(meta, dict):
        raise LpdetError(f"{path}: its '{METADATA_KEY}' metadata is not a JSON object; re-export it with lpdet export")
    return meta


# ----------------------------------------------------------------------------- loading
def load_tflite(path: Path | str, threads: int = 0, resolution: int | None = None):
    """A `DeployedModel` (kind "tflite-int8" / "tflite-fp32") running `path` with the LiteRT
    interpreter; `threads` > 0 fixes its thread count (0: LiteRT's default). Batches run one
    image at a time (the graph has batch 1)."""
    path = Path(path)
    interpreter_module = _require("ai_edge_litert.interpreter")
    if not path.is_file():
        raise LpdetError(f"{path}: no such file; export one with lpdet export --format tflite")
    meta = read_tflite_metadata(path)
    try:
        interpreter = interpreter_module.Interpreter(model_path=str(path), num_threads=threads if threads > 0 else None)
        interpreter.allocate_tensors()
        runner = interpreter.get_signature_runner()
        signature = next(iter(interpreter.get_signature_list().values()))
    except Exception as e:
        raise LpdetError(f"{path}: LiteRT cannot load it ({type(e).__name__}: {str(e).strip()[:160]}); "
                         f"re-export it with lpdet export --format tflite") from None
    if signature.get("inputs") != [INPUT_NAME] or set(signature.get("outputs", [])) != set(OUTPUT_NAMES):
        raise LpdetError(f"{path}: has inputs {signature.get('inputs')} and outputs {signature.get('outputs')}, not "
                         f"the lpdet graph contract (images -> scores, boxes); re-export it with lpdet export")
    model_resolution = int(meta.get("resolution") or 0)
    if not model_resolution:
        raise LpdetError(f"{path}: its metadata names no resolution; re-export it with lpdet export")
    if resolution is not None and resolution != model_resolution:
        raise LpdetError(f"{path}: a TFLite graph has a fixed input size {model_resolution}; "
                         f"export the checkpoint again at resolution {resolution}")
    num_classes = int(meta.get("num_classes") or 0)
    class_names = [str(c) for c in meta.get("class_names") or [f"class{i}" for i in range(1, num_classes + 1)]]
    category_ids = [int(c) for c in meta.get("category_ids") or range(1, len(class_names) + 1)]
    quantization = str(meta.get("quantization", "fp32"))

    def forward(images: Tensor) -> tuple[Tensor, Tensor]:
        check_images(images, model_resolution, path)
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        if not len(array):
            return torch.zeros(0, 0, len(class_names)), torch.zeros(0, 0, 4)
        scores, boxes = [], []
        for i in range(len(array)):
            out = runner(**{INPUT_NAME: array[i:i + 1]})
            scores.append(out[OUTPUT_NAMES[0]])
            boxes.append(out[OUTPUT_NAMES[1]])
        return torch.from_numpy(np.concatenate(scores)), torch.from_numpy(np.concatenate(boxes))

    return DeployedModel(
        kind="tflite-fp32" if quantization == "fp32" else "tflite-int8",
        path=path, resolution=model_resolution, class_names=class_names, category_ids=category_ids,
        forward=forward, quantization=quantization, arch=str(meta.get("arch", "")), metadata=meta, threads=threads,
        postprocess=postprocess_from_metadata(meta),
    )
