"""What a latency measurement returns, and how it is printed and serialised.

`LatencyResult` is one model's figures; `LatencyComparison` several models measured together
(interleaved on this machine, or on a device backend) with their ratios to the first model and
whether each pair is told apart.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from lpdet.deploy.latency_stats import Interval, Separation

__all__ = ["LatencyResult", "LatencyComparison", "format_latency", "format_comparison", "latency_to_dict",
           "comparison_to_dict", "describe_postprocess"]


@dataclass
class LatencyResult:
    median_ms: float  # end-to-end per image: forward + post-processing
    p90_ms: float
    min_ms: float
    mean_ms: float
    load_ms: float  # load_model wall time (session creation / checkpoint read)
    postprocess_ms: float  # median of the post-processing (select_detections) alone
    postprocess_share: float  # median over runs of postprocess / end-to-end, in [0, 1]
    runs: int
    threads: int
    kind: str  # DeployedModel.kind
    device: str  # CPU model and logical CPU count, or the device backend's id
    forward_ms: float = 0.0  # median of the graph alone
    path: str = ""
    resolution: int = 0
    runtime: str = ""  # e.g. "onnxruntime 1.32.0" / "torch 2.14.1"
    ratio: float | None = None  # median per-round end-to-end ratio to the baseline model
    forward_ratio: float | None = None  # the same for the graph alone (NMS excluded)
    postprocess: dict | None = None  # the PostprocessConfig timed (the model's own unless overridden)
    repeat_medians_ms: list[float] | None = None  # benchmark(repeats>1): every repeat's median (this is the lowest)
    median_interval_ms: list[float] | None = None  # [low, high]: confidence interval of median_ms
    ratio_interval: list[float] | None = None  # [low, high] of `ratio`
    confidence: float = 0.95
    inputs: str = ""  # what was timed: "16 images" / "random noise"
    measures: str = "graph + post-processing"  # what the time covers (a device command: what it prints)
    samples: int = 0  # what the intervals are over: passes through the images (single runs with one input)

    @property
    def median(self) -> Interval:
        low, high = self.median_interval_ms or (None, None)
        return Interval(self.median_ms, low, high, self.confidence, self.samples or self.runs)

    @property
    def ratio_to_baseline(self) -> Interval | None:
        if self.ratio is None:
            return None
        low, high = self.ratio_interval or (None, None)
        return Interval(self.ratio, low, high, self.confidence, self.samples or self.runs)


@dataclass
class LatencyComparison:
    """Models measured together; `results[i].ratio` is model i over model `baseline`."""

    results: list[LatencyResult]
    baseline: int = 0
    rounds: int = 0
    stop_reason: str = ""  # "precise" | "time cap" | "max rounds" | "fixed rounds" | "device"
    seconds: float = 0.0
    target: float = 0.03
    cpus: list[int] | None = None
    backend: str = "onnxruntime on this machine"
    separations: list[Separation] = field(default_factory=list)  # every pair (a < b)

    @property
    def precise(self) -> bool:
        return self.stop_reason in ("precise", "fixed rounds", "device")

    def separation(self, a: int, b: int) -> Separation:
        for s in self.separations:
            if (s.a, s.b) == (a, b):
                return s
            if (s.a, s.b) == (b, a):
                inverse = Interval(1 / s.ratio.value, *_inverse(s.ratio), s.ratio.confidence, s.ratio.samples)
                return Separation(a, b, inverse, s.separated)
        raise KeyError(f"no separation measured between models {a} and {b}")

    def not_separated(self) -> list[Separation]:
        return [s for s in self.separations if not s.separated]


def _inverse(iv: Interval) -> tuple[float | None, float | None]:
    return (None, None) if iv.low is None else (1 / iv.high, 1 / iv.low)


def describe_postprocess(settings: dict) -> str:
    """e.g. 'score > 0.01, NMS IoU 0.6, top-k 100'."""
    return (f"score > {settings['score_threshold']:g}, NMS IoU {settings['nms_iou']:g}, "
            f"top-k {settings['top_k']}")


def format_latency(result: LatencyResult) -> str:
    """A short human-readable report of one model."""
    repeats = result.repeat_medians_ms
    lines = [
        f"{result.path}  ({result.kind}, {result.resolution}x{result.resolution}, batch 1)",
        f"device       {result.device}; {result.runtime}; {result.threads or 'default'} thread(s)",
        f"latency      median {result.median.text()} ms ({result.confidence:.0%} interval)   p90 {result.p90_ms:.2f}   "
        f"min {result.min_ms:.2f}   mean {result.mean_ms:.2f}   ({result.runs} runs"
        + (f"; the lowest-median of {len(repeats)} repeats: " + ", ".join(f"{m:.2f}" for m in repeats) + ")"
           if repeats else ")"),
        f"  graph      {result.forward_ms:.2f} ms (median)",
        f"  postproc   {result.postprocess_ms:.2f} ms (median; {result.postprocess_share:.1%} of end-to-end)"
        + (f"; {describe_postprocess(result.postprocess)}" if result.postprocess else ""),
        f"load         {result.load_ms:.0f} ms",
    ]
    if result.inputs:
        lines.append(f"inputs       {result.inputs}")
    if result.ratio is not None:
        lines.append(f"ratio        {result.ratio_to_baseline.text(3)} (paired median ratio to the baseline model)")
    return "\n".join(lines)


def format_comparison(comparison: LatencyComparison) -> str:
    """A table of medians with intervals, p90, post-processing share and ratios to the baseline,
    then the measurement's facts and a warning for every pair the noise leaves unseparated."""
    results = comparison.results
    first = results[comparison.baseline]
    conf = f"{first.confidence:.0%}"
    on_device = comparison.stop_reason == "device"
    lines = [f"device: {first.device}; backend: {first.runtime}" if on_device else
             f"device: {first.device}; {first.runtime}; {first.threads or 'default'} thread(s)"
             + (f"; pinned to CPUs {','.join(map(str, comparison.cpus))}" if comparison.cpus else ""),
             f"measures: {first.measures}" if on_device else f"inputs: {first.inputs}; measures: {first.measures}",
             f"{'model':<44}{'median ms [' + conf + ']':>26}{'p90':>8}{'post':>7}{'ratio [' + conf + ']':>26}"]
    for i, r in enumerate(results):
        ratio = r.ratio_to_baseline.text(3) if r.ratio is not None else "-"
        ratio = "baseline" if i == comparison.baseline else ratio
        share = f"{r.postprocess_share:.0%}" if math.isfinite(r.postprocess_share) else "-"
        lines.append(f"{_short(r.path, 43):<44}{r.median.text():>26}{r.p90_ms:>8.2f}{share:>7}{ratio:>26}")
    if on_device:
        lines.append("measured on the device one model after another (results cached per device and model "
                     "content); ratio intervals are unpaired")
    else:
        lines.append(f"{comparison.rounds} interleaved rounds in {comparison.seconds:.1f} s; stopped: "
                     f"{_stop_text(comparison)}")
    for s in comparison.not_separated():
        why = ("too few samples for an interval" if s.ratio.low is None else
               f"ratio {s.ratio.text(3)} includes 1: the measurements are too noisy to tell them apart")
        lines.append(f"warning: {_short(results[s.b].path, 40)} vs {_short(results[s.a].path, 40)}: "
                     f"not separated ({why})")
    return "\n".join(lines)


def _stop_text(comparison: LatencyComparison) -> str:
    target = f"every interval within ±{comparison.target:.0%}"
    return {"precise": target, "fixed rounds": "the fixed number of rounds"}.get(
        comparison.stop_reason, f"{comparison.stop_reason} before {target} (figures less precise than asked)")


def _short(path: str, width: int) -> str:
    return path if len(path) <= width else "…" + path[-(width - 1):]


def _round(value):
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def latency_to_dict(result: LatencyResult) -> dict:
    """Plain data for --json (floats rounded to 0.0001)."""
    return {key: _round(value) for key, value in asdict(result).items()}


def comparison_to_dict(comparison: LatencyComparison) -> dict:
    return {"backend": comparison.backend, "baseline": comparison.baseline, "rounds": comparison.rounds,
            "stop_reason": comparison.stop_reason, "seconds": round(comparison.seconds, 2),
            "target": comparison.target, "cpus": comparison.cpus,
            "models": [latency_to_dict(r) for r in comparison.results],
            "separations": [{"a": s.a, "b": s.b, "ratio_b_over_a": _round(s.ratio.value),
                             "interval": _round([s.ratio.low, s.ratio.high]) if s.ratio.low is not None else None,
                             "separated": s.separated} for s in comparison.separations]}
