"""The int8 export recipe, in one place: a QAT detector is exported as its own int8 QDQ graph;
a float detector is exported fp32 and quantized after training (calibrated PTQ by default, or
the naive per-tensor baseline)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from lpdet.deploy.export import export_onnx
from lpdet.deploy.ptq import quantize_calibrated, quantize_naive
from lpdet.models.config import is_qat
from lpdet.models.detector import Detector


def quantize_float(detector: Detector, out: Path, calibration: Tensor, *, metadata: dict | None = None,
                   naive: bool = False) -> Path:
    """Post-training int8 of a float detector: an fp32 export (in a temporary folder), then
    `quantize_calibrated` (or `quantize_naive`) on the `calibration` images. Returns `out`."""
    with tempfile.TemporaryDirectory(prefix="lpdet-int8-") as tmp:
        fp32 = export_onnx(detector, Path(tmp) / "fp32.onnx", metadata=metadata)
        return (quantize_naive if naive else quantize_calibrated)(fp32, Path(out), calibration)


def export_int8(detector: Detector, out: Path, calibration: Callable[[], Tensor], *,
                metadata: dict | None = None) -> str:
    """`detector` as a fully int8 ONNX at `out`: a QAT detector's own QDQ graph, or a float one
    through calibrated PTQ on `calibration()` (called only then: reading images costs time).
    Returns how it was quantized: "int8-qat" or "int8-ptq"."""
    if is_qat(detector.config):
        export_onnx(detector, out, metadata=metadata)
        return "int8-qat"
    quantize_float(detector, out, calibration(), metadata=metadata)
    return "int8-ptq"
