"""The finalists' files: ``finalists.csv`` / ``finalists.json`` and ``search_report.md`` (the Pareto
plot, the finalists table, the search's pick against the best grid model on val with its paired
bootstrap interval, and how well the cheap estimate ranked the finalists)."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from pathlib import Path

import numpy as np

from lpdet.design.noise import INTERVAL_NOTE
from lpdet.design.report import Table, markdown_table
from lpdet.design.search.finalists import BEST_SEARCHED, Finalist, FinalistsResult
from lpdet.design.tables import SIZE_METRICS, ap_or_none, save_json_atomic
from lpdet.eval.bootstrap import format_interval
from lpdet.serialize import atomic_write_text

__all__ = ["write_finalists", "finalists_table", "spearman", "comparison_text", "FINALIST_FILES"]

FINALIST_FILES = {"finalists_csv": "finalists.csv", "finalists_json": "finalists.json", "report": "search_report.md"}
_CSV_FIELDS = ("role", "trial", "kind", "resolution", "select_ap", "AP", "AP50", "AP_small", "AP_medium", "AP_large",
               "select_AP_finetuned", "latency_ms", "latency_low_ms", "latency_high_ms", "fits", "steps", "config",
               "onnx")


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (ties share their mean rank); None below 3 values or with a constant
    list. By hand: numpy has none and scipy is not a dependency for four lines."""
    if len(a) < 3 or len(a) != len(b):
        return None
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(values: list[float]) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    ranks = np.empty(len(x))
    ranks[x.argsort(kind="stable")] = np.arange(len(x))
    for value in np.unique(x):
        ranks[x == value] = ranks[x == value].mean()
    return ranks


def label(f: Finalist) -> str:
    return f"{f.role}: trial {f.trial} ({f.kind}, {f.resolution} px)"


def _row(f: Finalist) -> dict:
    low, high = f.latency_interval_ms or (None, None)
    return {"role": f.role, "trial": f.trial, "kind": f.kind, "resolution": f.resolution, "select_ap": f.select_ap,
            **{k: f.metrics.get(k) for k in ("AP", "AP50", *SIZE_METRICS)},
            "select_AP_finetuned": f.select_metrics.get("AP"), "latency_ms": f.latency_ms, "latency_low_ms": low,
            "latency_high_ms": high, "fits": f.fits, "steps": f.steps, "config": f.config, "onnx": f.onnx}


def finalists_table(result: FinalistsResult) -> Table:
    rows = []
    for f in result.finalists:
        low, high = f.latency_interval_ms or (None, None)
        interval = f"[{low:.2f}, {high:.2f}]" if low is not None else None
        rows.append([label(f), f.select_ap, ap_or_none(f.metrics.get("AP")),
                     *(ap_or_none(f.metrics.get(k)) for k in SIZE_METRICS), ap_or_none(f.select_metrics.get("AP")),
                     f.latency_ms, interval, f.fits])
    s = result.schedule
    note = (f"select AP (cheap): the trial's estimate, inherited weights with BatchNorm recalibrated, no training. "
            f"val AP: after the same QAT fine-tuning for every finalist ({s['epochs']} epoch(s), lr {s['lr']:g}, "
            f"batch {s['batch_size']}{', at most %d batches per epoch' % s['limit_train_batches'] if s.get('limit_train_batches') else ''}"
            f"), int8 ONNX as deployed; AP_S/M/L on val. Latency: int8 median end to end (graph + NMS), batch 1, "
            f"the finalists measured interleaved in one run, with the median's 95% interval; fits: median <= "
            f"{result.limit_ms:.2f} ms (budget {result.budget_ms:g} ms less its margin).")
    return Table("Finalists", ["model", "select AP (cheap)", "val AP (fine-tuned)", "AP_S", "AP_M", "AP_L",
                               "select AP (fine-tuned)", "latency ms", "95% interval ms", "fits"], rows, note=note,
                 formats={"latency ms": ".2f", "select AP (cheap)": ".4f", "val AP (fine-tuned)": ".4f",
                          "select AP (fine-tuned)": ".4f", "AP_S": ".4f", "AP_M": ".4f", "AP_L": ".4f"})


def comparison_text(result: FinalistsResult) -> str:
    """The search's pick against the best grid model on val, said plainly, losses included."""
    searched, grid, diff = result.searched, result.grid, result.difference
    if grid is None:
        return "No grid model fits the budget: the search's pick has no width x resolution model to be compared with."
    if searched is None:
        return (f"No searched candidate fits the budget: the best model that fits is the grid's ({label(grid)}); "
                f"the search found nothing better.")
    if diff is None:
        return "The val AP difference has no interval (a predictions file is missing)."
    lines = [f"val AP of the search's pick ({label(searched)}) minus the best grid model that fits ({label(grid)}): "
             f"{format_interval(diff)}."]
    latency = (searched.latency_ms - grid.latency_ms) if None not in (searched.latency_ms, grid.latency_ms) else None
    if latency is not None:
        lines.append(f"Latency: {latency:+.2f} ms ({searched.latency_ms:.2f} vs {grid.latency_ms:.2f} ms, interleaved).")
    if searched.role == BEST_SEARCHED:
        lines.append("The search's chosen candidate is itself a grid model: by the cheap estimate no searched "
                     "architecture beat the grid.")
    if diff.within_noise:
        lines.append("Within noise: on this val set the search's pick and the grid model cannot be told apart.")
    elif diff.difference < 0:
        lines.append("The search's pick LOSES to the grid model, beyond noise. " + _why_lost(result))
    else:
        lines.append("The search's pick beats the grid model, beyond noise.")
    return " ".join(lines)


def _why_lost(result: FinalistsResult) -> str:
    by_cheap, by_val, _ = ranking(result)
    misranked = by_cheap != by_val
    return ("The pick rests on the cheap estimate (inherited weights, no training), " +
            ("which misranked the finalists (see below), and " if misranked else "and ") +
            "the fine-tuning did not confirm it. What would fix it: train the supernet longer (its epochs) so "
            "inherited weights rank sub-networks better, fine-tune the finalists longer, or score more trials.")


def ranking(result: FinalistsResult) -> tuple[list[str], list[str], float | None]:
    """The finalists ordered by the cheap selection AP and by the fine-tuned val AP, and Spearman's rho."""
    fs = result.finalists
    by_cheap = [label(f) for f in sorted(fs, key=lambda f: -f.select_ap)]
    by_val = [label(f) for f in sorted(fs, key=lambda f: -(f.metrics.get("AP") or -1.0))]
    return by_cheap, by_val, spearman([f.select_ap for f in fs], [f.metrics.get("AP") or -1.0 for f in fs])


def _ranking_text(result: FinalistsResult) -> str:
    by_cheap, by_val, rho = ranking(result)
    agree = "the same order" if by_cheap == by_val else "a different order"
    rho_text = (f"Spearman's rho {rho:+.2f} over {len(by_cheap)} finalists." if rho is not None else
                f"Spearman's rho: n/a ({len(by_cheap)} finalist(s); it needs 3 with distinct values).")
    return (f"By the cheap selection AP: {'; '.join(by_cheap)}. By fine-tuned val AP: {'; '.join(by_val)}. "
            f"The cheap estimate gave {agree}. {rho_text}")


def write_finalists(out: Path, result: FinalistsResult, *, facts: list[str]) -> dict[str, Path]:
    """finalists.csv, finalists.json and search_report.md under `out` (`facts`: the search's summary lines)."""
    out = Path(out)
    paths = {key: out / name for key, name in FINALIST_FILES.items()}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for f in result.finalists:
        writer.writerow({k: (round(v, 5) if isinstance(v, float) else v) for k, v in _row(f).items()})
    atomic_write_text(paths["finalists_csv"], buffer.getvalue())
    by_cheap, by_val, rho = ranking(result)
    save_json_atomic({"budget_ms": result.budget_ms, "latency_limit_ms": result.limit_ms, "schedule": result.schedule,
                      "finalists": [asdict(f) for f in result.finalists],
                      "searched_minus_grid": asdict(result.difference) if result.difference else None,
                      "comparison": comparison_text(result),
                      "ranking": {"by_select_ap": by_cheap, "by_val_ap": by_val, "spearman": rho}},
                     paths["finalists_json"])
    parts = ["# Architecture search", "", *[f"- {line}" for line in facts], "", "![Pareto front](pareto.png)", "",
             "*Selection AP (cheap estimate) against measured int8 latency: searched candidates, the width x "
             "resolution grid (grey squares, joined per width), the Pareto front and the chosen candidate.*", "",
             "## Finalists", "", markdown_table(finalists_table(result)), "",
             "## The search against the width x resolution grid", "", comparison_text(result), "",
             f"*{INTERVAL_NOTE}*", "", "## How well the cheap estimate ranked the finalists", "",
             _ranking_text(result), ""]
    atomic_write_text(paths["report"], "\n".join(parts))
    return paths
