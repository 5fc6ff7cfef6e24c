"""The finalists: the search's cheap estimates checked by the training they stand for.

After the trials, the chosen candidate (best selection AP that fits), the best grid model that
fits (`lpdet.design.search.grid`) and, with `finalists.runner_up`, the next best fitting searched
candidate are each built with the supernet's inherited weights, BatchNorm recalibrated
(`candidate.inherited`, the trials' own code), and fine-tuned with QAT for the same schedule:
the design's fine-tuning runs (`TrialCache.train`; their best epoch picked on the selection split).
Each is exported int8 and evaluated on **val** (reported; the selection split stays for choosing)
and on select (`measure_int8`), and all are timed together, interleaved, with the design's
harness (`measure_interleaved`) under the machine's latency lock. Every step is a cached trial
under ``OUT/trials``: running the command again redoes nothing that finished.

When the chosen candidate is itself a grid model, the best fitting searched candidate is a
finalist too, so the search is always compared with the grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from filelock import FileLock

from lpdet.design.latency_trials import measure_interleaved
from lpdet.design.noise import NoiseJudge
from lpdet.design.search.candidate import SearchContext, inherited, latency_lock
from lpdet.design.search.front import CandidateRow
from lpdet.design.settings import train_config
from lpdet.design.trials import TrialCache, data_identity, file_identity, measure_int8
from lpdet.eval.bootstrap import BootstrapInterval
from lpdet.models.arch_space import ArchCandidate
from lpdet.models.checkpoint_format import save_checkpoint
from lpdet.models.config import kept_anchors
from lpdet.serialize import to_dict
from lpdet.train.config import TrainConfig

__all__ = ["Finalist", "FinalistsResult", "pick_finalists", "run_finalists", "inherited_checkpoint", "with_detail",
           "CHOSEN", "BEST_GRID", "BEST_SEARCHED", "RUNNER_UP"]

CHOSEN, BEST_GRID, BEST_SEARCHED, RUNNER_UP = "chosen", "best grid", "best searched", "runner-up"


@dataclass
class Finalist:
    """One finalist: its trial's cheap scores, then what fine-tuning and the re-measurement gave."""

    role: str
    trial: int
    kind: str  # "grid" or "search"
    resolution: int
    config: str  # its candidate YAML, relative to the output folder
    select_ap: float  # the cheap estimate: inherited weights, BN recalibrated, no training
    trial_latency_ms: float
    steps: int = 0  # fine-tuning steps
    metrics: dict = field(default_factory=dict)  # COCO metrics on val after fine-tuning
    select_metrics: dict = field(default_factory=dict)  # the same on the selection split
    latency_ms: float | None = None  # median, measured interleaved with the other finalists
    latency_interval_ms: list[float] | None = None
    fits: bool = False  # latency_ms <= the budget less its margin
    onnx: str = ""
    predictions: str = ""  # its val predictions (paired bootstrap)


@dataclass
class FinalistsResult:
    finalists: list[Finalist]
    limit_ms: float
    budget_ms: float
    searched: Finalist | None  # the search's pick compared with the grid (chosen, or best searched)
    grid: Finalist | None  # the best grid model that fits
    difference: BootstrapInterval | None  # val AP(searched) − AP(grid), paired bootstrap over val images
    schedule: dict  # the fine-tuning every finalist had


def pick_finalists(rows: list[CandidateRow], runner_up: bool) -> list[tuple[str, CandidateRow]]:
    """(role, row) of each finalist, in order: chosen, best grid, best searched or runner-up."""
    fitting = sorted((r for r in rows if r.fits), key=lambda r: (-r.select_ap, r.latency_ms))
    if not fitting:
        return []
    chosen = fitting[0]
    picked = [(CHOSEN, chosen)]
    grid = next((r for r in fitting if r.kind == "grid"), None)
    if grid is not None and grid is not chosen:
        picked.append((BEST_GRID, grid))
    searched = [r for r in fitting if r.kind != "grid" and r is not chosen]
    if chosen.kind == "grid" and searched:
        picked.append((BEST_SEARCHED, searched[0]))
    elif runner_up and searched:
        picked.append((RUNNER_UP, searched[0]))
    return picked


def run_finalists(ctx: SearchContext, picked: list[tuple[str, ArchCandidate, CandidateRow]], *, out: Path,
                  training_yaml: Path, supernet: Path, budget_ms: float, progress: bool = True) -> FinalistsResult:
    """Fine-tune, export, evaluate and time the `picked` finalists (see the module docstring)."""
    settings = ctx.settings
    limit = settings.latency_limit(budget_ms)
    cache = TrialCache(Path(out) / "trials", progress=progress)
    cache.plan(5 * len(picked) + 1)
    finalists = [_fine_tuned(cache, ctx, role, candidate, row, training_yaml, supernet)
                 for role, candidate, row in picked]
    if finalists:
        with FileLock(str(latency_lock(settings))):  # one latency measurement at a time on this machine
            comparison = measure_interleaved(cache, "finalists-latency", [Path(f.onnx) for f in finalists], ctx.data,
                                             settings.bench)
        for finalist, model in zip(finalists, comparison["models"]):
            finalist.latency_ms, finalist.latency_interval_ms = model["median_ms"], model.get("median_interval_ms")
            finalist.fits = finalist.latency_ms <= limit
    grid = next((f for f in finalists if f.kind == "grid" and f.role in (CHOSEN, BEST_GRID)), None)
    searched = next((f for f in finalists if f.kind != "grid" and f.role in (CHOSEN, BEST_SEARCHED)), None)
    difference = None
    if grid is not None and searched is not None:
        difference = NoiseJudge(ctx.data, "val").interval(grid.predictions, searched.predictions)
    return FinalistsResult(finalists, limit, budget_ms, searched, grid, difference,
                           {**asdict(settings.finalists.schedule), "batch_size": settings.finalists.training.batch_size,
                            "qat": True})


def inherited_checkpoint(cache: TrialCache, name: str, candidate: ArchCandidate, ctx: SearchContext,
                         supernet: Path) -> Path:
    """Trial `name`: the candidate built with the supernet's inherited weights, BatchNorm recalibrated on
    the training images of ``ctx.data`` (`candidate.inherited`), saved as a checkpoint; its path."""
    s = ctx.settings

    def start(directory: Path) -> dict:
        detector = inherited(candidate, ctx)
        save_checkpoint(directory / "init", model=detector.eval(), model_config=detector.config,
                        class_names=ctx.class_names, category_ids=ctx.category_ids)
        return {"files": {"checkpoint": "init"}}

    spec = {"supernet": file_identity(supernet), "candidate": to_dict(candidate), "data": data_identity(ctx.data),
            "bn_batches": s.bn_batches, "batch_size": s.supernet.batch_size}
    return cache.file(cache.run(name, spec, start, kind="inherit"), "checkpoint")


def with_detail(cfg: TrainConfig, candidate: ArchCandidate) -> TrainConfig:
    """`cfg` training the candidate's own architecture (its per-stage detail)."""
    return replace(cfg, model=replace(cfg.model, detail=candidate.detail))


def _fine_tuned(cache: TrialCache, ctx: SearchContext, role: str, candidate: ArchCandidate, row: CandidateRow,
                training_yaml: Path, supernet: Path) -> Finalist:
    """Trials ``finalist-tNNNN-init`` (inherited weights, BN recalibrated), ``finalist-tNNNN`` (QAT
    fine-tuning from them) and its int8 export and evaluations on val and select."""
    s, tag = ctx.settings, f"finalist-t{row.trial:04d}"
    init = inherited_checkpoint(cache, f"{tag}-init", candidate, ctx, supernet)
    f = s.finalists
    cfg = train_config(training_yaml, arch=candidate.arch, width=candidate.width, resolution=candidate.resolution,
                       **kept_anchors(ctx.supernet.config), init=init, qat=True, **asdict(f.schedule),
                       **asdict(f.training))
    trained = cache.train(tag, with_detail(cfg, candidate))
    measured = measure_int8(cache, tag, cache.file(trained, "best"), ctx.data, resolution=None,
                            threads=s.bench.threads, runs=s.bench.runs, warmup=s.bench.warmup, max_images=f.max_images,
                            calibration_images=f.calibration_images, select=True, benchmark=False)
    return Finalist(role=role, trial=row.trial, kind=row.kind, resolution=candidate.resolution, config=row.config,
                    select_ap=row.select_ap, trial_latency_ms=row.latency_ms, steps=int(trained["steps"]),
                    metrics=measured.metrics, select_metrics=measured.select_metrics or {},
                    onnx=str(measured.onnx), predictions=str(measured.predictions))
