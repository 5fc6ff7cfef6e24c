"""Float vs 8-bit: COCO AP, latency and size of one detector as fp32, naive int8, calibrated
PTQ int8 and QAT int8, all as ONNX run by onnxruntime on this CPU (the seed of Table 11.1).

Every row is evaluated the same way: `load_model(onnx).predict` on the dataset's val split
(`lpdet.eval.coco_eval.evaluate`) and timed with `benchmark_paired` on real val images (batch 1, `threads`
threads, all rows interleaved image by image so that a shared machine's load affects them
alike; the int8/fp32 ratio is the median of per-iteration ratios).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lpdet.data.spec import resolve_dataset
from lpdet.data.splits import eval_split
from lpdet.deploy.export import export_onnx
from lpdet.deploy.latency import benchmark_paired, cpu_name
from lpdet.deploy.latency_inputs import bench_images
from lpdet.deploy.model import source_metadata
from lpdet.deploy.ptq import load_calibration_images, quantize_calibrated, quantize_naive
from lpdet.deploy.runtime import load_detector, load_model, model_size_bytes
from lpdet.design.noise import save_predictions
from lpdet.design.report import Table, markdown_table
from lpdet.design.tables import ap_or_none
from lpdet.errors import LpdetError
from lpdet.eval.coco_eval import evaluate
from lpdet.models.config import is_qat, variant_name
from lpdet.quant.weight_ranges import format_spread, summarize_spread, weight_spread
from lpdet.serialize import atomic_write_text

__all__ = ["CompareRow", "CompareResult", "compare_quantization", "compare_table", "format_compare",
           "compare_to_dict"]

QAT_HINT = "not run: pass --qat QAT_CKPT (train one with lpdet train --qat --init CKPT)"
ROW_NAMES = ("float", "naive 8-bit", "calibrated PTQ", "QAT")
ROW_FILES = ("fp32", "int8_naive", "int8_ptq", "int8_qat")  # out_dir/model_<file>.onnx
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
    predictions: str = ""  # its val predictions, a file in the comparison's folder (`lpdet.design.noise`)

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
    variant: str = ""  # "standard" | "quant-friendly" (`variant_name`)
    width: float | None = None


def compare_quantization(ckpt: Path, data: str, out_dir: Path, *, qat_ckpt: Path | None = None,
                         calibration_images: int = 100, threads: int = 1, runs: int = 30, max_images: int = 0,
                         progress: bool = True) -> CompareResult:
    """Export `ckpt` (a float checkpoint) to fp32 ONNX, quantize it naively and with calibrated
    PTQ (calibration images from the train split when the dataset has one), export `qat_ckpt`
    (if given) as int8, evaluate and time all of them; writes `out_dir/quant_compare.md` and
    `out_dir/quant_compare.json`."""
    if runs < 1 or threads < 0:
        raise LpdetError("--runs must be >= 1 and --threads >= 0")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    detector, float_ckpt = _load_float(ckpt)
    resolution = int(detector.config.resolution)
    val = eval_split(data, resolution, float_ckpt.category_ids, where=str(float_ckpt.path))
    calibration = load_calibration_images(data, resolution, calibration_images)
    rows, paths = export_rows(detector, ckpt, float_ckpt, qat_ckpt, calibration, out_dir)
    images = _evaluate_rows(rows, paths, val, threads=threads, max_images=max_images, progress=progress)
    time_rows(rows, paths, threads=threads, runs=runs, images=bench_images(data=str(data)))
    notes = ([] if resolve_dataset(str(data)).train else
             ["calibration images come from the val split (the dataset has no train split)"])
    result = CompareResult(
        checkpoint=str(float_ckpt.path), data=str(data), split="val", images=images, rows=rows,
        calibration_images=int(len(calibration)), threads=threads, runs=runs, device=cpu_name(),
        arch=detector.config.arch, resolution=resolution, notes=notes,
        weight_spread=summarize_spread(weight_spread(paths["float"])),
        variant=variant_name(detector.config), width=detector.config.width,
    )
    atomic_write_text(out_dir / "quant_compare.md", format_compare(result) + "\n")
    atomic_write_text(out_dir / "quant_compare.json", json.dumps(compare_to_dict(result), indent=2) + "\n")
    return result


def _load_float(ckpt: Path):
    detector, float_ckpt = load_detector(ckpt)
    if is_qat(detector.config):
        raise LpdetError(f"{float_ckpt.path}: is a QAT checkpoint; pass the float checkpoint it was trained from "
                         f"and the QAT one with --qat")
    return detector, float_ckpt


def export_rows(model, ckpt: Path, float_ckpt, qat_ckpt: Path | None, calibration, out_dir: Path,
                qat_hint: str = QAT_HINT) -> tuple[list[CompareRow], dict[str, Path]]:
    """The four rows' ONNX files in `out_dir` (float, naive, PTQ from `model`; QAT from `qat_ckpt`,
    else that row says `qat_hint`): (rows, row name -> file)."""
    paths = {name: out_dir / f"model_{stem}.onnx" for name, stem in zip(ROW_NAMES, ROW_FILES)}
    export_float_rows(model, paths, calibration, source_metadata(float_ckpt))
    rows = [CompareRow(name) for name in ROW_NAMES]
    if qat_ckpt is not None:
        export_qat_row(qat_ckpt, ckpt, float_ckpt, int(model.config.resolution), paths["QAT"])
    else:
        paths["QAT"].unlink(missing_ok=True)
        rows[3].status = qat_hint
    return rows, paths


def export_float_rows(detector, paths: dict[str, Path], calibration, metadata: dict) -> None:
    """The float row's fp32 export and the two post-training int8 rows quantized from it."""
    export_onnx(detector, paths["float"], metadata=metadata)
    quantize_naive(paths["float"], paths["naive 8-bit"], calibration)
    quantize_calibrated(paths["float"], paths["calibrated PTQ"], calibration)


def export_qat_row(qat_ckpt: Path, ckpt: Path, float_ckpt, resolution: int, out: Path) -> None:
    qat_detector, qat_meta = load_detector(qat_ckpt)
    if not is_qat(qat_detector.config):
        raise LpdetError(f"{qat_meta.path}: is not a QAT checkpoint; train one with lpdet train --qat --init {ckpt}")
    if qat_meta.category_ids != float_ckpt.category_ids or qat_detector.config.resolution != resolution:
        raise LpdetError(f"{qat_meta.path}: its classes or resolution differ from {float_ckpt.path}; "
                         f"train the QAT model with --init {ckpt}")
    export_onnx(qat_detector, out, metadata=source_metadata(qat_meta))  # a QAT detector exports as int8 QDQ


def _evaluate_rows(rows: list[CompareRow], paths: dict[str, Path], val, *, threads: int, max_images: int,
                   progress: bool) -> int:
    """COCO AP of every row that ran (as deployed); returns the number of val images evaluated."""
    images = 0
    for row in rows:
        if not row.ran:
            continue
        model = load_model(paths[row.name], threads=threads)
        row.model, row.quantization = str(paths[row.name]), model.quantization
        row.size_mb = model_size_bytes(paths[row.name]) / 1e6
        result = evaluate(model.predict, val, batch_size=16, max_images=max_images, progress=progress,
                          desc=f"eval {row.name}")
        row.metrics = result.metrics
        row.predictions = f"predictions_{ROW_FILES[ROW_NAMES.index(row.name)]}.json"
        save_predictions(paths[row.name].parent / row.predictions, result.results, result.image_ids)
        images = result.num_images
    return images


def time_rows(rows: list[CompareRow], paths: dict[str, Path], *, threads: int, runs: int, images: list) -> None:
    """Latency of every row that ran on real val `images`, interleaved image by image (`benchmark_paired`)."""
    timed = [row for row in rows if row.ran]
    for row, latency in zip(timed, benchmark_paired([paths[r.name] for r in timed], threads=threads, runs=runs,
                                                    images=images)):
        row.latency_ms, row.latency_ratio = latency.median_ms, latency.ratio
        row.graph_ms, row.graph_ratio = latency.forward_ms, latency.forward_ratio


def compare_table(compare: dict, title: str = "", intervals: dict[str, str] | None = None) -> Table:
    """The comparison (`compare_to_dict` form, as cached by the design flow) as a report table;
    `intervals` (row name -> text) adds a column: its AP minus the float row's, with an interval."""
    rows = []
    for r in compare["rows"]:
        if r["status"] != "ok":
            rows.append([r["name"], r["status"]])
            continue
        m = r["metrics"]
        extra = [(intervals or {}).get(r["name"])] if intervals is not None else []
        rows.append([r["name"], *(ap_or_none(m.get(k)) for k in METRICS), *extra, r["latency_ms"], r["graph_ms"],
                     1.0 if r["name"] == "float" else r["latency_ratio"], r["size_mb"]])
    interval_column = ["Δ AP vs float [95%]"] if intervals is not None else []
    return Table(title, ["model", *METRICS, *interval_column, "latency ms", "graph ms", "latency vs float",
                         "size MB"], rows,
                 formats={"latency ms": ".2f", "graph ms": ".2f", "latency vs float": ".2f", "size MB": ".2f"})


def format_compare(result: CompareResult) -> str:
    """The comparison as a Markdown table, with a header line and notes."""
    lines = [
        f"Float vs 8-bit: {result.arch} @ {result.resolution} ({result.checkpoint}) on {result.data} "
        f"{result.split}, {result.images} images; onnxruntime CPU, {result.threads} thread(s), batch 1, "
        f"median of {result.runs} paired runs; {result.device}",
        "",
        markdown_table(compare_table(compare_to_dict(result))),
        "",
        f"naive 8-bit: per-tensor int8 weights, MinMax ranges from 2 images; calibrated PTQ: per-channel "
        f"symmetric int8 weights, uint8 activations, MinMax ranges from {result.calibration_images} images; "
        f"QAT: quantization-aware training exported as int8. AP as a fraction; latency = graph + NMS per image, "
        f"latency vs float = median of per-image paired ratios (end to end).",
    ]
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
