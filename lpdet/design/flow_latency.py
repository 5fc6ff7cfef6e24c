"""The design flow's latency steps: every resolution candidate measured in one interleaved run with the
base model (the QAT model at the base resolution), the budget resolved from `--budget-ratio` by that
same run, and the search table that says where the measurement cannot decide."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lpdet.design.flow_context import FlowContext
from lpdet.design.latency_trials import interval_text, measure_interleaved, not_separated_from, straddles
from lpdet.design.report import Table
from lpdet.design.settings import DesignSettings
from lpdet.design.trials import TrialCache, measure_int8
from lpdet.errors import LpdetError

__all__ = ["SearchLatency", "search_latencies", "check_budget", "limit_text", "budget_text", "latency_note",
           "fixed_cost_ms", "fixed_cost_text"]


@dataclass
class SearchLatency:
    """The interleaved measurement of every candidate (`comparison_to_dict` models, by resolution)."""

    models: dict[int, dict]
    table: Table
    reference: dict  # the fp32 model at the base resolution, timed in the same run (Table 11.4's float row)

    def median(self, resolution: int) -> float:
        return self.models[resolution]["median_ms"]


def check_budget(budget_ms, budget_ratio) -> tuple[float | None, float | None]:
    """Exactly one of `--budget-ms` (> 0) and `--budget-ratio` (> 0), as floats; else an LpdetError."""
    if (budget_ms is None) == (budget_ratio is None):
        raise LpdetError("give exactly one of --budget-ms MS (a latency budget in milliseconds) and --budget-ratio R "
                         "(R x the base model's int8 latency on this machine, e.g. 0.64)")
    for option, value in (("--budget-ms", budget_ms), ("--budget-ratio", budget_ratio)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or not value > 0):
            unit = "a latency in milliseconds" if option == "--budget-ms" else "a factor, e.g. 0.64"
            raise LpdetError(f"{option} {value}: must be {unit} > 0")
    return (None if budget_ms is None else float(budget_ms)), (None if budget_ratio is None else float(budget_ratio))


def limit_text(s: DesignSettings, budget_ms: float) -> str:
    """e.g. 'a model fits at <= 4.5 ms, 10% of the budget kept in reserve for the machine's drift ...'."""
    if not s.budget_margin:
        return "a model fits at <= the budget"
    return (f"a model fits at <= {s.latency_limit(budget_ms):.3g} ms, {s.budget_margin:.0%} of the budget kept "
            f"in reserve for the machine's drift when it is benchmarked again")


def budget_text(ctx: FlowContext) -> str:
    """'12 ms' or '0.64 x the base model's int8 latency (8.1 ms) = 5.2 ms' (before the search: no ms yet)."""
    base = f"the {ctx.settings.base_resolution} base model's int8 latency on this machine"
    if ctx.budget_ratio is None:
        return f"{ctx.budget_ms:g} ms"
    if ctx.budget_ms is None:
        return f"--budget-ratio {ctx.budget_ratio:g} x {base} (not measured yet)"
    return (f"--budget-ratio {ctx.budget_ratio:g} x {base} ({ctx.base_latency_ms:.2f} ms, measured with the "
            f"candidates) = {ctx.budget_ms:.2f} ms")


def latency_note(s: DesignSettings) -> str:
    b = s.bench
    return (f"Latency: end-to-end (forward + NMS), batch 1, {b.threads} thread(s), on {b.images} real val images; "
            f"the models compared interleaved round by round in one run (drift hits them alike), at least {b.runs} "
            f"rounds, then until every median is known to ±{b.target:.0%} (95%) or {b.time_cap_s:g} s; the median "
            f"over all timed passes, its 95% interval, p90 beside it. Fit decisions read the median.")


def fixed_cost_ms(medians: dict[int, float]) -> float | None:
    """The intercept `a` of the least-squares line ms = a + b * pixels through the candidates' median
    latencies (resolution -> ms): the part of the latency that does not shrink with the input
    (post-processing, per-layer overheads of a runtime). None with fewer than 3 candidates."""
    if len(medians) < 3:
        return None
    pixels = np.array([float(r) ** 2 for r in medians])
    _, intercept = np.polyfit(pixels, np.array(list(medians.values()), dtype=float), 1)
    return float(intercept)


def fixed_cost_text(medians: dict[int, float], base_r: int) -> str:
    """One sentence on how much of the base's latency an input size can trade, for the search table."""
    fixed = fixed_cost_ms(medians)
    if fixed is None:
        return ""
    share = fixed / medians[base_r]
    if share <= 0:
        return " A line through the medians against the pixel count shows no fixed cost: latency falls with the pixels."
    return (f" A line through the medians against the pixel count (ms = a + b x pixels) puts a = {fixed:.2f} ms, "
            f"{share:.0%} of the {base_r} model's latency, in costs that do not shrink with the input "
            f"(post-processing, per-layer overheads of the runtime): a smaller input trades latency at "
            f"{1 - share:.0%} of the rate its pixel count suggests.")


def search_latencies(ctx: FlowContext, cache: TrialCache, qat_ckpt: Path, float_onnx: Path) -> SearchLatency:
    """Step 4, first half: the QAT model exported int8 at every candidate, all measured in one interleaved
    run with the base resolution as the baseline, and the fp32 model (`float_onnx`) with them, so that
    every latency of Table 11.4 comes from one measurement; resolves `--budget-ratio` into `ctx.budget_ms`."""
    s, base_r = ctx.settings, ctx.settings.base_resolution
    candidates = s.candidates()
    onnx = [measure_int8(cache, f"noft-r{r}", qat_ckpt, ctx.data_path, resolution=r, evaluate=False, benchmark=False,
                         calibration_images=s.calibration_images, threads=s.bench.threads, runs=s.bench.runs,
                         warmup=s.bench.warmup).onnx for r in candidates]
    base = candidates.index(base_r)
    comparison = measure_interleaved(cache, "search-latency", [*onnx, float_onnx], ctx.data_path, s.bench,
                                     baseline=base)
    models = dict(zip(candidates, comparison["models"]))
    reference = comparison["models"][len(candidates)]
    ctx.base_latency_ms = models[base_r]["median_ms"]
    if ctx.budget_ratio is not None:
        ctx.budget_ms = ctx.budget_ratio * ctx.base_latency_ms
    limit = s.latency_limit(ctx.budget_ms)
    rows = []
    for i, r in enumerate(candidates):
        m = models[r]
        tied = [candidates[j] for j in not_separated_from(comparison, i) if abs(j - i) == 1 and j < len(candidates)]
        caveats = (["its interval straddles the fit limit: the machine cannot tell whether it fits"]
                   if straddles(m, limit) else [])
        caveats += [f"not told apart from {', '.join(map(str, tied))} (paired ratio's interval contains 1)"] if tied else []
        rows.append([r, r % 8 == 0, m["median_ms"], interval_text(m), m["p90_ms"], m.get("ratio"),
                     m["median_ms"] <= limit, "; ".join(caveats)])
    table = Table("Resolution search: int8 latency of the QAT model at each candidate (no training)",
                  ["resolution", "input multiple of 8", "int8 median ms", "95% interval ms", "p90 ms",
                   f"vs {base_r}", f"fits (<= {limit:.3g} ms)", "precision"], rows,
                  note=f"Budget: {budget_text(ctx)}; {limit_text(s, ctx.budget_ms)}. {latency_note(s)} This run: "
                       f"{comparison['rounds']} rounds, stopped by {comparison['stop_reason']}. 'vs {base_r}': the "
                       f"median of per-round paired ratios to the base resolution. The fp32 model at {base_r}, timed "
                       f"in the same rounds: {reference['median_ms']:.2f} ms "
                       f"({reference.get('ratio') or float('nan'):.3f} of the int8 {base_r})."
                       f"{fixed_cost_text({r: models[r]['median_ms'] for r in candidates}, base_r)}",
                  formats={"int8 median ms": ".2f", "p90 ms": ".2f", f"vs {base_r}": ".3f"})
    return SearchLatency(models=models, table=table, reference=reference)


def budget_latency(ctx: FlowContext, paired: dict) -> float:
    """The latency a budget check reads from a model timed interleaved with the base model (the base
    first): with `--budget-ratio`, its paired ratio to the base times the base's latency in the
    resolution search, so that the machine's drift between the two runs cancels (the budget itself
    is a ratio); with `--budget-ms`, a real deadline, its own median."""
    return budget_view(ctx, paired)["median_ms"]


def budget_view(ctx: FlowContext, paired: dict) -> dict:
    """`budget_latency` with its 95% interval (``median_ms``, ``median_interval_ms``), as `straddles` reads it."""
    if ctx.budget_ratio is None or paired.get("ratio") is None:
        return paired
    low, high = paired.get("ratio_interval") or (None, None)
    base = ctx.base_latency_ms
    return {"median_ms": paired["ratio"] * base,
            "median_interval_ms": None if low is None else [low * base, high * base]}
