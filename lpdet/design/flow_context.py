"""What the steps of the design flow share: its context (settings, where things go, the report
sections and Table 11.4 rows built so far), the candidates it measures, and how a step's change
is recorded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lpdet.design.base_model import BaseStart
from lpdet.design.noise import NoiseJudge
from lpdet.design.report import Section
from lpdet.design.settings import DesignSettings

SAME_GRAPH = "same graph as in the resolution search: its latency"


class NoFit(Exception):
    """No candidate meets the budget (the report says so; `design` raises LpdetError)."""


@dataclass
class FlowContext:
    data: str
    data_path: Path
    budget_ms: float | None  # None until the search measured the base model when the budget is a ratio
    settings: DesignSettings
    out_dir: Path
    quick: bool
    preset: str = "full preset"
    setup: Section | None = None
    sections: list[Section] = field(default_factory=list)
    steps: list[StepRow] = field(default_factory=list)  # Table 11.4
    summary: dict = field(default_factory=dict)
    train_path: Path | None = None  # the YAML training runs use: train (fit part), val = the selection split
    select_source: str = ""  # where the selection split comes from (the report says)
    budget_ratio: float | None = None  # --budget-ratio: the budget is this x the base model's int8 latency
    base_latency_ms: float | None = None  # the base model's int8 median, measured with the candidates
    noise: NoiseJudge | None = None  # paired bootstrap intervals of AP differences on val (None: not computed)
    base: BaseStart | None = None  # where the float base model comes from (None: trained by the flow)

    @property
    def given_base(self) -> Path | None:
        """The float base checkpoint the flow starts from (shipped or --base); None: the flow trains one."""
        return self.base.checkpoint if self.base is not None else None

    def interval(self, before, after) -> str | None:
        """AP(after) − AP(before) with its 95% interval (predictions files), e.g. "+0.012 [−0.004, +0.027],
        within noise"; None without a judge or a predictions file."""
        return self.noise.text(before, after) if self.noise is not None else None


@dataclass
class Candidate:
    """A deployable candidate: an int8 ONNX with its measured AP and latency."""

    label: str
    tag: str
    resolution: int
    onnx: Path
    checkpoint: Path
    metrics: dict
    latency_ms: float
    size_mb: float | None = None
    predictions: Path | None = None  # its val predictions (`lpdet.design.noise`)
    select_metrics: dict | None = None  # COCO AP on the selection split: what choices compare


def bench_kw(s: DesignSettings) -> dict:
    """How every latency of the flow is measured."""
    return dict(threads=s.bench.threads, runs=s.bench.runs, warmup=s.bench.warmup, repeats=s.bench.repeats)


def ap_of(metrics: dict | None) -> float:
    value = (metrics or {}).get("AP")
    return float(value) if value is not None else float("-inf")


def choice_ap(candidate: Candidate) -> float:
    """The AP a choice between candidates compares: on the selection split (val is only reported)."""
    return ap_of(candidate.select_metrics)


def compare_row(compare: dict, name: str) -> dict:
    return next(r for r in compare["rows"] if r["name"] == name)


@dataclass
class StepRow:
    """A row of Table 11.4: one step of the flow, what it measured, and its change against the step it
    is compared with (`basis`). A skipped step has no resolution, AP or latency."""

    step: str
    model: str
    resolution: int | None = None
    AP: float | None = None
    AP_small: float | None = None
    AP_medium: float | None = None
    AP_large: float | None = None
    latency_ms: float | None = None
    kept: bool = True
    basis: str = ""
    note: str = ""
    delta_AP: float | None = None
    delta_latency_ms: float | None = None
    delta_latency_pct: float | None = None
    delta_AP_interval: str | None = None  # paired bootstrap interval of delta_AP over val images
    select_AP: float | None = None  # on the selection split (None: not measured there)
    predictions: str | None = None  # its val predictions file

    @property
    def measured(self) -> bool:
        return self.latency_ms is not None


def record_step(ctx: FlowContext, step: str, model: str, resolution: int, metrics: dict, latency_ms: float, *,
                predictions: Path | str | None = None, previous: tuple[dict, float, Path | str | None] | None = None,
                basis: str | None = None, kept: bool = True, note: str = "", select_metrics: dict | None = None) -> None:
    """Add `step` to Table 11.4, compared with `previous` ((metrics, latency_ms, predictions file)) or else
    with the last kept measured step; the AP change gets its interval from the two predictions files."""
    if previous is None:
        last = next((p for p in reversed(ctx.steps) if p.kept and p.measured), None)
        previous = (last.__dict__, last.latency_ms, last.predictions) if last else None
        basis = basis or (f"previous step ({last.step})" if last else "")
    row = StepRow(step, model, resolution, metrics.get("AP"), metrics.get("AP_small"), metrics.get("AP_medium"),
                  metrics.get("AP_large"), latency_ms, kept, basis or "", note,
                  predictions=str(predictions) if predictions is not None else None,
                  select_AP=(select_metrics or {}).get("AP"))
    if previous is not None:
        prev_metrics, prev_lat, prev_predictions = previous
        prev_ap = prev_metrics.get("AP")
        row.delta_AP = (row.AP - prev_ap) if row.AP is not None and prev_ap is not None else None
        row.delta_latency_ms = latency_ms - prev_lat if prev_lat is not None else None
        row.delta_latency_pct = 100 * (latency_ms - prev_lat) / prev_lat if prev_lat else None
        row.delta_AP_interval = ctx.interval(prev_predictions, row.predictions)
    ctx.steps.append(row)
