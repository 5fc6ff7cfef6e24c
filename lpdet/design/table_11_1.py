"""Table 11.1 with all its kinds of rows (the seed's: a standard-convolution classifier, the MobileNetV1
and MobileNetV2 classifiers, MobileNetV1-SSD), built from the two comparisons' saved results: a
detector's `quant_compare.json` (`lpdet compare-quant`, AP) and a `classify_compare.json` (`lpdet
classify compare-quant`, top-1, several classifiers). Nothing is measured again here: every number is
the comparison's own, each row names its metric and the file it came from.

One line per network and variant: its metric as float, naive per-tensor 8-bit, calibrated PTQ and
QAT, each with its end-to-end latency, and the folded weight-range spread of the float model
(`lpdet.quant.weight_ranges`) that explains the naive column."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lpdet.design.quant_compare import ROW_NAMES
from lpdet.design.report import Table, markdown_table
from lpdet.errors import LpdetError
from lpdet.serialize import atomic_write_text

__all__ = ["Table111Row", "Table111", "combine_results", "load_rows", "table_11_1", "format_table_11_1",
           "write_table_11_1", "RESULT_FILES"]

DETECTOR_FILE, CLASSIFIER_FILE = "quant_compare.json", "classify_compare.json"
RESULT_FILES = (DETECTOR_FILE, CLASSIFIER_FILE)  # what a folder given to `lpdet table-11-1` may hold


@dataclass
class Table111Row:
    network: str  # the architecture name
    task: str  # "classification" | "detection"
    variant: str  # "standard" | "quant-friendly" | "unknown" (an older quant_compare.json)
    width: float | None
    resolution: int
    metric: str  # "top-1" | "AP", as a fraction in `values`
    data: str
    images: int
    values: dict[str, float | None]  # precision (float, naive 8-bit, calibrated PTQ, QAT) -> metric; None: not run
    latency_ms: dict[str, float | None]  # precision -> median end-to-end ms
    weight_spread: dict = field(default_factory=dict)  # summarize_spread of the float export
    device: str = ""
    source: str = ""  # the comparison's JSON file

    @property
    def separable(self) -> bool:
        """Whether the float graph has depthwise convolutions (measured, not guessed from the name)."""
        return "depthwise" in self.weight_spread


@dataclass
class Table111:
    rows: list[Table111Row]


def _precisions(rows: list[dict], metric_key: str) -> tuple[dict, dict]:
    by_name = {r["name"]: r for r in rows}
    values, latency = {}, {}
    for name in ROW_NAMES:
        row = by_name.get(name)
        ran = row is not None and row.get("status") == "ok"
        values[name] = row["metrics"].get(metric_key) if ran else None
        latency[name] = row.get("latency_ms") if ran else None
    return values, latency


def _detector_rows(result: dict, source: Path) -> list[Table111Row]:
    values, latency = _precisions(result["rows"], "AP")
    return [Table111Row(network=result["arch"], task="detection", variant=result.get("variant") or "unknown",
                        width=result.get("width"), resolution=int(result["resolution"]), metric="AP",
                        data=result["data"], images=int(result["images"]), values=values, latency_ms=latency,
                        weight_spread=result.get("weight_spread", {}), device=result.get("device", ""),
                        source=str(source))]


def _classifier_rows(result: dict, source: Path) -> list[Table111Row]:
    rows = []
    for model in result["models"]:
        values, latency = _precisions(model["rows"], "top1")
        rows.append(Table111Row(network=model["arch"], task="classification", variant=model["variant"],
                                width=model["width"], resolution=int(model["resolution"]), metric="top-1",
                                data=result["data"], images=int(result["images"]), values=values, latency_ms=latency,
                                weight_spread=model.get("weight_spread", {}), device=result.get("device", ""),
                                source=str(source)))
    return rows


def _result_file(path: Path) -> Path:
    if path.is_dir():
        found = [path / name for name in RESULT_FILES if (path / name).is_file()]
        if not found:
            raise LpdetError(f"{path}: holds neither {DETECTOR_FILE} nor {CLASSIFIER_FILE}; pass the --out folder of "
                             f"lpdet compare-quant or lpdet classify compare-quant")
        return found[0]
    if not path.is_file():
        raise LpdetError(f"{path}: no such file or folder; pass a comparison's JSON file or its --out folder")
    return path


def load_rows(path: Path) -> list[Table111Row]:
    """The Table 11.1 lines of one comparison result (a JSON file, or the folder that holds it)."""
    source = _result_file(Path(path))
    try:
        result = json.loads(source.read_text())
        if "models" in result:
            return _classifier_rows(result, source)
        if "rows" in result and "arch" in result:
            return _detector_rows(result, source)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise LpdetError(f"{source}: not a comparison result ({error.__class__.__name__}: {error}); pass a "
                         f"{DETECTOR_FILE} or {CLASSIFIER_FILE} written by lpdet") from None
    raise LpdetError(f"{source}: not a comparison result; pass a {DETECTOR_FILE} or {CLASSIFIER_FILE} written by lpdet")


def _order(row: Table111Row) -> tuple:
    # the seed's order: classifiers before detectors, standard convolution first; standard before quant-friendly
    return row.task != "classification", row.separable, row.network, row.variant != "standard"


def combine_results(paths: list[Path]) -> Table111:
    """Every comparison in `paths` as one table, rows in the seed's order."""
    if not paths:
        raise LpdetError("give at least one comparison result (quant_compare.json or classify_compare.json)")
    rows = [row for path in paths for row in load_rows(path)]
    return Table111(rows=sorted(rows, key=_order))


def _cell(row: Table111Row, precision: str) -> str | None:
    value, ms = row.values.get(precision), row.latency_ms.get(precision)
    if value is None:
        return None
    return f"{value * 100:.1f}" + (f" / {ms:.2f} ms" if ms is not None else "")


def _spread(summary: dict) -> str | None:
    return f"{summary['median']:.1f} / {summary['max']:.1f}" if summary else None


def table_11_1(table: Table111) -> Table:
    """The report table: metric % / latency per precision, naive's change from float, the spreads."""
    lines = []
    for row in table.rows:
        naive, floating = row.values.get("naive 8-bit"), row.values.get("float")
        drop = None if naive is None or floating is None else (naive - floating) * 100
        width = "" if row.width is None else f" w{row.width:g}"
        lines.append([f"{row.network} ({row.variant}{width}, {row.resolution})", f"{row.metric} % ({row.data})",
                      *(_cell(row, name) for name in ROW_NAMES), drop,
                      _spread(row.weight_spread.get("depthwise", {})), _spread(row.weight_spread.get("other", {})),
                      "mainly separable convolution" if row.separable else "standard convolution only"])
    return Table("Table 11.1: float vs 8-bit (metric % / latency ms)",
                 ["network", "metric", *ROW_NAMES, "naive Δ vs float", "depthwise spread median / max",
                  "other conv spread median / max", "convolutions"], lines,
                 formats={"naive Δ vs float": "+.1f"})


def format_table_11_1(table: Table111) -> str:
    devices = sorted({row.device for row in table.rows if row.device})
    return "\n".join([
        markdown_table(table_11_1(table)), "",
        "Each cell: the metric in % (top-1 for classifiers, COCO AP for detectors, on the named data's val split) "
        "/ median end-to-end latency (onnxruntime CPU, batch 1). naive 8-bit: per-tensor int8 weights; calibrated "
        "PTQ: per-channel int8 weights, calibrated uint8 activations; QAT: quantization-aware training exported as "
        "int8; —: not run. Spread: max / median over output channels of the folded conv's max |w| (median layer / "
        "worst layer): a channel of a layer with spread s keeps about 127 / s int8 levels under naive weights.",
        f"Measured on: {'; '.join(devices) or 'unknown'}. Sources: "
        + ", ".join(sorted({row.source for row in table.rows})) + ".",
    ])


def write_table_11_1(table: Table111, out_dir: Path) -> tuple[Path, Path]:
    """``out_dir/table_11_1.md`` and ``table_11_1.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "table_11_1.md", out_dir / "table_11_1.json"
    atomic_write_text(md, format_table_11_1(table) + "\n")
    atomic_write_text(js, json.dumps(asdict(table), indent=2) + "\n")
    return md, js
