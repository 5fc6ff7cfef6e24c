"""The search's results: every candidate as a row, the Pareto front of AP (selection split) against
measured int8 latency, the chosen candidate, and their files (CSV, JSON, plot)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from lpdet.serialize import atomic_write_text

__all__ = ["CandidateRow", "pareto_front", "choose", "write_front", "plot_grid", "FRONT_FILES"]

FRONT_FILES = {"candidates": "candidates.csv", "csv": "pareto.csv", "json": "pareto.json", "plot": "pareto.png"}


@dataclass
class CandidateRow:
    trial: int
    select_ap: float
    latency_ms: float
    latency_low_ms: float | None  # 95% interval of the median latency
    latency_high_ms: float | None
    fits: bool  # latency_ms <= the budget less its margin
    config: str  # the candidate YAML, relative to the output folder
    pareto: bool = False
    kind: str = "search"  # "grid": a width x resolution grid point (`lpdet.design.search.grid`), else "search"
    grid_width: float | None = None  # a grid point's relative width


def pareto_front(rows: list[CandidateRow]) -> list[CandidateRow]:
    """The rows no other row beats on both AP (higher) and latency (lower), fastest first."""
    front, best_ap = [], float("-inf")
    for row in sorted(rows, key=lambda r: (r.latency_ms, -r.select_ap)):
        if row.select_ap > best_ap:  # faster rows came first: this one is beaten unless its AP is higher
            front.append(row)
            best_ap = row.select_ap
    return front


def choose(rows: list[CandidateRow]) -> CandidateRow | None:
    """The fitting candidate with the highest AP (the faster on a tie); None when none fits."""
    fitting = [r for r in rows if r.fits]
    return max(fitting, key=lambda r: (r.select_ap, -r.latency_ms)) if fitting else None


def _csv(rows: list[CandidateRow]) -> str:
    buffer = io.StringIO()
    fields = list(CandidateRow.__dataclass_fields__)
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(row).items()})
    return buffer.getvalue()


def write_front(out: Path, rows: list[CandidateRow], *, budget_ms: float, limit_ms: float,
                chosen: CandidateRow | None, facts: dict) -> dict[str, Path]:
    """candidates.csv (every candidate), pareto.csv / pareto.json (the front, the choice, `facts`)
    and pareto.png under `out`; returns their paths."""
    front = pareto_front(rows)
    for row in rows:
        row.pareto = row in front
    paths = {key: out / name for key, name in FRONT_FILES.items()}
    atomic_write_text(paths["candidates"], _csv(sorted(rows, key=lambda r: r.trial)))
    atomic_write_text(paths["csv"], _csv(front))
    summary = {"budget_ms": budget_ms, "latency_limit_ms": limit_ms, "candidates": len(rows),
               "fitting": sum(r.fits for r in rows), "chosen": asdict(chosen) if chosen else None,
               "front": [asdict(r) for r in front], **facts}
    atomic_write_text(paths["json"], json.dumps(summary, indent=2) + "\n")
    _plot(paths["plot"], rows, front, budget_ms=budget_ms, limit_ms=limit_ms, chosen=chosen)
    return paths


def plot_grid(ax, rows: list[CandidateRow]) -> None:
    """The grid points as grey squares, those of one width joined by a line (by latency). The relative
    width 1.0 line is the resolution-only family (the standard network at the search's width, its
    input resolution the one knob): the models `lpdet design`'s resolution search chooses among."""
    widths = sorted({r.grid_width for r in rows if r.kind == "grid"})
    for i, w in enumerate(widths):
        line = sorted((r for r in rows if r.kind == "grid" and r.grid_width == w), key=lambda r: r.latency_ms)
        ax.plot([r.latency_ms for r in line], [r.select_ap * 100 for r in line], "s-", color=str(0.25 + 0.2 * (i % 3)),
                markersize=5, linewidth=0.8, label=f"grid, width {w:g} (resolutions)" + (": resolution only" if w == 1.0 else ""))


def _plot(path: Path, rows, front, *, budget_ms: float, limit_ms: float, chosen) -> None:
    import matplotlib  # imported here: only the search's last step draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    searched = [r for r in rows if r.kind != "grid"]
    ax.scatter([r.latency_ms for r in searched], [r.select_ap * 100 for r in searched], s=14, color="tab:cyan",
               label=f"searched candidates ({len(searched)})")
    plot_grid(ax, rows)
    ax.plot([r.latency_ms for r in front], [r.select_ap * 100 for r in front], "o-", color="tab:blue",
            label="Pareto front")
    ax.axvline(budget_ms, color="tab:red", linestyle="--", label=f"budget {budget_ms:g} ms")
    ax.axvline(limit_ms, color="tab:red", linestyle=":", label=f"fit limit {limit_ms:.2f} ms")
    if chosen is not None:
        ax.plot([chosen.latency_ms], [chosen.select_ap * 100], "*", color="tab:orange", markersize=16,
                label=f"chosen (trial {chosen.trial})")
    ax.set_xlabel("int8 latency, median end to end (ms, measured)")
    ax.set_ylabel("AP on the selection split (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
