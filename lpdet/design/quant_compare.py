"""Float vs 8-bit: COCO AP, latency and size of one detector as fp32, naive int8, calibrated
PTQ int8 and QAT int8, all as ONNX run by onnxruntime on this CPU (the seed of Table 11.1).

Every row is evaluated the same way: `load_model(onnx).predict` on the dataset's val split
(`lpdet.eval.coco_eval.evaluate`) and timed with `benchmark_paired` (batch 1, `threads`
threads, all rows interleaved image by image so that a shared machine's load affects them
alike; the int8/fp32 ratio is the median of per-iteration ratios).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lpdet.data.coco import CocoDetection
from lpdet.data.spec import resolve_dataset
from lpdet.data.transforms import eval_transforms
from lpdet.deploy.export import export_onnx
from lpdet.deploy.latency import benchmark_paired, cpu_name
from lpdet.deploy.ptq import calibration_batch, quantize_calibrated, quantize_naive
from lpdet.deploy.runtime import load_detector, load_model, model_size_bytes
from lpdet.errors import LpdetError
from lpdet.eval.coco_eval import evaluate
from lpdet.models.config import is_qat
from lpdet.quant.weight_ranges import format_spread, summarize_spread, weight_spread

__all__ = ["CompareRow", "CompareResult", "compare_quantization", "format_compare", "compare_to_dict"]

QAT_HINT = "not run: pass --qat QAT_CKPT (train one with lpdet train --qat --init CKPT)"
ROW_NAMES = ("float", "naive 8-bit", "calibrated PTQ", "QAT")
METRICS = ("AP", "AP50", "AP_small", "AP_medium", "AP_large")


@dataclass
class CompareRow:
    name: str  # "float" | "naive 8-bit" | "calibrated PTQ" | "QAT"
    status: str = "ok"  # "ok" or "not run: ..."
    model: str = ""  # the .onnx file
    quantization: str = ""  # fp32 | int8-naive | int8-ptq | int8-qat
    metrics: dict[str, float] = field(default_factory=dict)  # AP, AP50, AP75, AP_small, AP_medium, AP_large
    latency_ms: float | None = None  # median end-to-end per image (forward + NMS)
    latency_ratio: float | None = None  # paired median ratio to the float row (end to end)
    graph_ms: float | None = None  # median of the graph alone (NMS excluded)
    graph_ratio: float | None = None  # paired median ratio to the float row, graph alone
    size_mb: float | None = None  # model file size

    @property
    def ran(self) -> bool:
        return self.status == "ok"


@dataclass
class CompareResult:
    checkpoint: str
    data: str
    split: str
    images: int
    rows: list[CompareRow]
    calibration_images: int
    threads: int
    runs: int
    device: str
    arch: str = ""
    resolution: int = 0
    notes: list[str] = field(default_factory=list)
    weight_spread: dict = field(default_factory=dict)  # lpdet.quant.weight_ranges.summarize_spread of the fp32 model


def _size_mb(path: Path) -> float:
    return model_size_bytes(path) / 1e6


def compare_quantization(ckpt: Path, data: str, out_dir: Path, *, qat_ckpt: Path | None = None,
                         calibration_images: int = 100, threads: int = 1, runs: int = 30, max_images: int = 0,
                         progress: bool = True) -> CompareResult:
    """Export `ckpt` (a float checkpoint) to fp32 ONNX, quantize it naively and with calibrated
    PTQ (calibration images from the train split when the dataset has one), export `qat_ckpt`
    (if given) as int8, evaluate and time all of them; writes `out_dir/quant_compare.md` and
    `out_dir/quant_compare.json`."""
    if calibration_images < 1:
        raise LpdetError(f"--calibration-images {calibration_images}: must be >= 1")
    if runs < 1 or threads < 0:
        raise LpdetError("--runs must be >= 1 and --threads >= 0")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    detector, float_ckpt = load_detector(ckpt)
    if is_qat(detector.config):
        raise LpdetError(f"{float_ckpt.path}: is a QAT checkpoint; pass the float checkpoint it was trained from "
                         f"and the QAT one with --qat")
    resolution = int(detector.config.resolution)
    metadata = {"class_names": float_ckpt.class_names, "category_ids": float_ckpt.category_ids,
                "source": str(float_ckpt.path)}

    spec = resolve_dataset(data)
    val = CocoDetection(spec.val.annotations, spec.val.images, transform=eval_transforms(resolution))
    if val.category_ids != float_ckpt.category_ids:
        raise LpdetError(f"{spec.val.annotations}: its categories differ from those {float_ckpt.path} was trained on; "
                         f"compare on a dataset with the same categories")
    notes = []
    calib_split = spec.train or spec.val
    if spec.train is None:
        notes.append("calibration images come from the val split (the dataset has no train split)")
    calib_set = val if spec.train is None else CocoDetection(calib_split.annotations, calib_split.images,
                                                             transform=eval_transforms(resolution))
    calibration = calibration_batch(calib_set, calibration_images)

    paths = {"float": out_dir / "model_fp32.onnx", "naive 8-bit": out_dir / "model_int8_naive.onnx",
             "calibrated PTQ": out_dir / "model_int8_ptq.onnx", "QAT": out_dir / "model_int8_qat.onnx"}
    export_onnx(detector, paths["float"], metadata=metadata)
    quantize_naive(paths["float"], paths["naive 8-bit"], calibration)
    quantize_calibrated(paths["float"], paths["calibrated PTQ"], calibration)
    rows = [CompareRow(name) for name in ROW_NAMES]
    if qat_ckpt is not None:
        qat_detector, qat_meta = load_detector(qat_ckpt)
        if not is_qat(qat_detector.config):
            raise LpdetError(f"{qat_meta.path}: is not a QAT checkpoint; "
                             f"train one with lpdet train --qat --init {ckpt}")
        if qat_meta.category_ids != float_ckpt.category_ids or qat_detector.config.resolution != resolution:
            raise LpdetError(f"{qat_meta.path}: its classes or resolution differ from {float_ckpt.path}; "
                             f"train the QAT model with --init {ckpt}")
        export_onnx(qat_detector, paths["QAT"], metadata={**metadata, "source": str(qat_meta.path)})
    else:
        paths["QAT"].unlink(missing_ok=True)
        rows[3].status = QAT_HINT

    images = 0
    for row in rows:
        if not row.ran:
            continue
        model = load_model(paths[row.name], threads=threads)
        row.model, row.quantization = str(paths[row.name]), model.quantization
        row.size_mb = _size_mb(paths[row.name])
        result = evaluate(model.predict, val, batch_size=16, max_images=max_images, progress=progress,
                          desc=f"eval {row.name}")
        row.metrics = result.metrics
        images = result.num_images

    timed = [row for row in rows if row.ran]
    for row, latency in zip(timed, benchmark_paired([paths[r.name] for r in timed], threads=threads, runs=runs)):
        row.latency_ms, row.latency_ratio = latency.median_ms, latency.ratio
        row.graph_ms, row.graph_ratio = latency.forward_ms, latency.forward_ratio

    result = CompareResult(
        checkpoint=str(float_ckpt.path), data=str(data), split="val", images=images, rows=rows,
        calibration_images=int(len(calibration)), threads=threads, runs=runs, device=cpu_name(),
        arch=detector.config.arch, resolution=resolution, notes=notes,
        weight_spread=summarize_spread(weight_spread(paths["float"])),
    )
    (out_dir / "quant_compare.md").write_text(format_compare(result) + "\n")
    (out_dir / "quant_compare.json").write_text(json.dumps(compare_to_dict(result), indent=2) + "\n")
    return result


def _metric(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return "n/a" if value < 0 else f"{100 * value:.1f}"


def format_compare(result: CompareResult) -> str:
    """The comparison as a Markdown table (AP figures in %), with a header line and notes."""
    header = ["model", "AP", "AP50", "AP_S", "AP_M", "AP_L", "latency ms", "graph ms", "int8/fp32", "size MB"]
    lines = [
        f"Float vs 8-bit: {result.arch} @ {result.resolution} ({result.checkpoint}) on {result.data} "
        f"{result.split}, {result.images} images; onnxruntime CPU, {result.threads} thread(s), batch 1, "
        f"median of {result.runs} paired runs; {result.device}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for row in result.rows:
        if not row.ran:
            lines.append(f"| {row.name} | {row.status} |" + " |" * (len(header) - 2))
            continue
        cells = [row.name] + [_metric(row.metrics.get(m)) for m in METRICS] + [
            f"{row.latency_ms:.2f}" if row.latency_ms is not None else "–",
            f"{row.graph_ms:.2f}" if row.graph_ms is not None else "–",
            "1.00" if row.name == "float" else (f"{row.latency_ratio:.2f}" if row.latency_ratio is not None else "–"),
            f"{row.size_mb:.2f}" if row.size_mb is not None else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"naive 8-bit: per-tensor int8 weights, MinMax ranges from 2 images; calibrated PTQ: per-channel "
                 f"symmetric int8 weights, uint8 activations, MinMax ranges from {result.calibration_images} images; "
                 f"QAT: quantization-aware training exported as int8. AP in %; latency = graph + NMS per image, "
                 f"int8/fp32 = median of per-image paired ratios (end to end).")
    if result.weight_spread:
        lines.append(format_spread(result.weight_spread))
    lines.extend(f"note: {note}" for note in result.notes)
    return "\n".join(lines)


def compare_to_dict(result: CompareResult) -> dict:
    data = asdict(result)
    for row in data["rows"]:
        row["metrics"] = {k: round(v, 5) for k, v in row["metrics"].items()}
        for key in ("latency_ms", "latency_ratio", "graph_ms", "graph_ratio", "size_mb"):
            if row[key] is not None:
                row[key] = round(row[key], 4)
    return data
