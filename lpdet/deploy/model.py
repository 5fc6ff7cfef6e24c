"""What every deployed form of a detector shares: `DeployedModel` (the one interface evaluation,
benchmarking and prediction use), the graph's input/output names, and the ``lpdet`` metadata
entry an exported file carries (its key, the facts in it, reading and writing it in ONNX)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from torch import Tensor

from lpdet.errors import LpdetError
from lpdet.models.postprocess import PostprocessConfig, select_detections

METADATA_KEY = "lpdet"  # the metadata entry (ONNX metadata_props, TFLite Model.metadata) holding our JSON
INPUT_NAME = "images"
OUTPUT_NAMES = ("scores", "boxes")
CLASSIFIER_OUTPUT_NAMES = ("scores",)  # a classifier's graph: class probabilities [1, K]
KINDS = ("torch-fp32", "torch-qat", "onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8")


@dataclass
class DeployedModel:
    """What evaluation, benchmarking and prediction need, whatever the file."""

    kind: str  # one of KINDS
    path: Path  # the checkpoint directory or the .onnx file
    resolution: int
    class_names: list[str]
    category_ids: list[int]
    # raw (scores, boxes) for a batch, before NMS; a classifier's (task "classification"): probabilities [B, K]
    forward: Callable[[Tensor], tuple[Tensor, Tensor] | Tensor]
    quantization: str = "fp32"  # "fp32", "qat", "int8-qat", "int8-ptq", "int8-naive", ...
    arch: str = ""
    metadata: dict = field(default_factory=dict, repr=False)  # the ONNX "lpdet" entry / checkpoint facts
    threads: int = 0  # threads it runs with (0: the runtime's default)
    # Post-processing it is deployed with: from the metadata (a model picked by `lpdet design`
    # carries its tuned NMS setting), else the defaults. `predict` and `benchmark` use it.
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    # A graph with NMS inside (lpdet.deploy.nms_graph): (images, cfg) -> detections; `forward` raises.
    detect: Callable[[Tensor, PostprocessConfig | None], list[dict]] | None = None
    task: str = "detection"  # or "classification" (`lpdet classify`: no post-processing)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def predict(self, images: Tensor, cfg: PostprocessConfig | None = None) -> list[dict]:
        """Detections per image (normalised xyxy boxes, scores, labels 1..K): forward + select_detections
        with `cfg` (default: the model's own `postprocess`), or the graph's own NMS."""
        if self.detect is not None:
            return self.detect(images, cfg)
        scores, boxes = self.forward(images)
        return select_detections(scores, boxes, cfg or self.postprocess)


def check_images(images: Tensor, resolution: int, path: Path) -> None:
    """Raise `LpdetError` naming `path` unless `images` is float `[B, 3, R, R]`."""
    if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (resolution, resolution):
        raise LpdetError(f"{path}: model input must be [B, 3, {resolution}, {resolution}], got {list(images.shape)}; "
                         f"resize images to {resolution}x{resolution}")
    if not images.is_floating_point():
        raise LpdetError(f"{path}: model input must be float in [0, 1], got {images.dtype}; "
                         f"convert with .float() / 255")


def source_metadata(ckpt) -> dict:
    """The facts an export takes from its checkpoint (`lpdet.models.checkpoint_format.Checkpoint`):
    class names, COCO category ids, and where it came from."""
    return {"class_names": ckpt.class_names, "category_ids": ckpt.category_ids, "source": str(ckpt.path)}


def export_metadata(config, resolution: int, quantization: str, extra: dict | None = None, **more) -> dict:
    """The lpdet metadata every exported model carries: the caller's `extra` plus the model's
    facts (which win), so a runtime can rebuild labels and the input contract from the file."""
    info = dict(extra or {})
    info.update(arch=config.arch, width=config.width, resolution=resolution, num_classes=config.num_classes,
                quantization=quantization, input=INPUT_NAME, outputs=list(OUTPUT_NAMES))
    if getattr(config, "quant_friendly", False):  # the variant (`ModelConfig.quant_friendly`), only when set
        info["quant_friendly"] = True
    info.update(more)
    return info


def first_line(error: BaseException) -> str:
    """A short reason from an onnx/onnxruntime exception (its code prefix and the repeated path removed)."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    line = re.sub(r"^\[ONNXRuntimeError\] : \d+ : ", "", line)
    line = re.sub(r"Load model from .* failed:\s*", "", line)
    return line[:300]


def set_onnx_metadata(proto: onnx.ModelProto, info: dict) -> None:
    """Make `info` the model's only metadata entry (``lpdet``: JSON)."""
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(info, default=str)


def read_onnx_metadata(path: Path | str, custom: dict[str, str] | None = None) -> dict:
    """The decoded "lpdet" metadata entry of an ONNX file, or of its already read `custom`
    metadata map (LpdetError if absent or broken)."""
    path = Path(path)
    if custom is None:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:
            raise LpdetError(f"{path}: not a readable ONNX model ({first_line(e)}); "
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
