"""Table 11.1 for classifiers: top-1 / top-5, latency and folded weight-range spread of several
classifiers (e.g. a standard and a quantization-friendly MobileNet, and a plain-conv network),
each as fp32, naive 8-bit, calibrated PTQ and QAT ONNX run by onnxruntime on this CPU.

The rows are made, timed and measured by the detector comparison's own steps
(`lpdet.design.quant_compare`: the exports and PTQ, `benchmark_paired` on real val images, all
rows of one classifier interleaved; `lpdet.quant.weight_ranges` on the fp32 export); only the
metric differs (`lpdet.eval.accuracy`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lpdet.data.classification import ImageFolderDataset, resolve_classification_data
from lpdet.data.transforms import eval_transforms
from lpdet.deploy.latency import cpu_name
from lpdet.deploy.latency_inputs import bench_images
from lpdet.deploy.ptq import load_calibration_images
from lpdet.deploy.runtime import load_detector, load_model, model_size_bytes
from lpdet.design.quant_compare import QAT_HINT, CompareRow, export_rows, time_rows
from lpdet.design.report import Table, markdown_table
from lpdet.errors import LpdetError
from lpdet.eval.accuracy import evaluate_accuracy
from lpdet.models.config import is_qat, variant_name
from lpdet.models.registry import is_classifier
from lpdet.quant.weight_ranges import summarize_spread, weight_spread
from lpdet.serialize import atomic_write_text

__all__ = ["ClassifierRows", "ClassifyCompareResult", "compare_classifiers", "format_classifier_compare"]


@dataclass
class ClassifierRows:
    checkpoint: str
    arch: str
    variant: str  # "standard" | "quant-friendly"
    width: float
    resolution: int
    rows: list[CompareRow]  # float, naive 8-bit, calibrated PTQ, QAT; metrics top1, top5
    weight_spread: dict = field(default_factory=dict)  # summarize_spread of the fp32 export


@dataclass
class ClassifyCompareResult:
    data: str
    images: int
    calibration_images: int
    threads: int
    runs: int
    device: str
    models: list[ClassifierRows]


def compare_classifiers(ckpts: list[Path], data: str, out_dir: Path, *, qat_ckpts: list[Path] | None = None,
                        calibration_images: int = 100, threads: int = 1, runs: int = 30, max_images: int = 0,
                        progress: bool = True) -> ClassifyCompareResult:
    """Every float classifier checkpoint in `ckpts` (and its QAT checkpoint, same position in
    `qat_ckpts`) as the four rows; writes ``out_dir/classify_compare.md`` and ``.json``."""
    if runs < 1 or threads < 0:
        raise LpdetError("--runs must be >= 1 and --threads >= 0")
    out_dir = Path(out_dir)
    spec = resolve_classification_data(data)
    models, images = [], 0
    for index, ckpt in enumerate(ckpts):
        qat = qat_ckpts[index] if qat_ckpts else None
        folder = out_dir / f"model{index}"
        folder.mkdir(parents=True, exist_ok=True)
        compared, images = _compare_one(ckpt, qat, spec.val, data, folder, calibration_images=calibration_images,
                                        threads=threads, runs=runs, max_images=max_images, progress=progress)
        models.append(compared)
    result = ClassifyCompareResult(data=str(data), images=images, calibration_images=calibration_images,
                                   threads=threads, runs=runs, device=cpu_name(), models=models)
    atomic_write_text(out_dir / "classify_compare.md", format_classifier_compare(result) + "\n")
    atomic_write_text(out_dir / "classify_compare.json", json.dumps(asdict(result), indent=2) + "\n")
    return result


def _compare_one(ckpt: Path, qat_ckpt: Path | None, val_folder: Path, data: str, out_dir: Path, *,
                 calibration_images: int, threads: int, runs: int, max_images: int,
                 progress: bool) -> tuple[ClassifierRows, int]:
    classifier, float_ckpt = load_detector(ckpt)
    config = classifier.config
    if not is_classifier(config) or is_qat(config):
        raise LpdetError(f"{float_ckpt.path}: not a float classifier checkpoint; pass the float one (QAT with --qat)")
    resolution = int(config.resolution)
    calibration = load_calibration_images(data, resolution, calibration_images)
    rows, paths = export_rows(classifier, ckpt, float_ckpt, qat_ckpt, calibration, out_dir,
                              qat_hint=QAT_HINT.replace("lpdet train", "lpdet classify train"))
    val = ImageFolderDataset(val_folder, eval_transforms(resolution), class_names=float_ckpt.class_names)
    images = 0
    for row in (r for r in rows if r.ran):
        model = load_model(paths[row.name], threads=threads)
        row.model, row.quantization = str(paths[row.name]), model.quantization
        row.size_mb = model_size_bytes(paths[row.name]) / 1e6
        result = evaluate_accuracy(model.forward, val, max_images=max_images, progress=progress,
                                   desc=f"eval {config.arch} {row.name}")
        row.metrics, images = result.metrics, result.num_images
    time_rows(rows, paths, threads=threads, runs=runs, images=bench_images(data=str(data)))
    return ClassifierRows(checkpoint=str(float_ckpt.path), arch=config.arch, variant=variant_name(config),
                          width=config.width, resolution=resolution, rows=rows,
                          weight_spread=summarize_spread(weight_spread(paths["float"]))), images


def classifier_table(result: ClassifyCompareResult) -> Table:
    """One line per classifier and precision: top-1, its change from float, latency, spread."""
    lines = []
    for m in result.models:
        float_top1 = m.rows[0].metrics.get("top1") if m.rows[0].ran else None
        depthwise, other = m.weight_spread.get("depthwise", {}), m.weight_spread.get("other", {})
        spread = (f"dw {depthwise['median']:.1f}/{depthwise['max']:.1f}, " if depthwise else "") + \
            (f"conv {other['median']:.1f}/{other['max']:.1f}" if other else "")
        for row in m.rows:
            name = f"{m.arch} ({m.variant}, w{m.width:g}, {m.resolution})"
            if not row.ran:
                lines.append([name, row.name, row.status])
                continue
            top1 = row.metrics["top1"] * 100
            drop = None if float_top1 is None else top1 - float_top1 * 100
            lines.append([name, row.name, top1, row.metrics["top5"] * 100, drop, row.latency_ms,
                          1.0 if row.name == "float" else row.latency_ratio, spread if row.name == "float" else ""])
    return Table("Table 11.1 (classifiers): float vs 8-bit",
                 ["model", "precision", "top-1 %", "top-5 %", "Δ top-1 vs float", "latency ms", "latency vs float",
                  "weight spread median/max"], lines,
                 formats={"top-1 %": ".2f", "top-5 %": ".2f", "Δ top-1 vs float": "+.2f", "latency ms": ".2f",
                          "latency vs float": ".2f"})


def format_classifier_compare(result: ClassifyCompareResult) -> str:
    return "\n".join([
        f"Float vs 8-bit classifiers on {result.data} val, {result.images} images; onnxruntime CPU, "
        f"{result.threads} thread(s), batch 1, median of {result.runs} paired runs; {result.device}",
        "",
        markdown_table(classifier_table(result)),
        "",
        "naive 8-bit: per-tensor int8 weights, MinMax ranges from 2 images; calibrated PTQ: per-channel int8 "
        f"weights, uint8 activations, MinMax ranges from {result.calibration_images} images; QAT: "
        "quantization-aware training exported as int8. Weight spread: max / median over output channels of the "
        "folded conv's max |w| (median and worst layer; dw = depthwise convs, conv = the others): a channel of a "
        "layer with spread s keeps about 127 / s int8 levels under per-tensor (naive) weights.",
    ])
