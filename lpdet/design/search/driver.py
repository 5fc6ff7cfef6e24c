"""`run_search`: the whole `lpdet search`, one function per step.

1. data: the dataset's train split less a held-out selection split (`lpdet.design.splits`);
2. the super-network: trained with the sandwich rule (`sandwich`), a cached trial under
   ``OUT/trials/supernet`` (or ``--supernet CKPT``, which every worker of a shared study passes);
3. the study (`study`): created in ``OUT/study.db`` or joined (``--storage``, ``--study``), dead
   workers' trials recovered, then trials until the study holds ``--trials`` (`worker`);
4. the results (`front`): every candidate's YAML, the Pareto front of selection AP against measured
   int8 latency (CSV, JSON, plot), the chosen candidate's YAML and int8 ONNX under ``OUT/chosen``;
5. the finalists (`finalists`): the chosen candidate, the best grid model that fits and the
   runner-up, fine-tuned alike and reported on val (finalists.csv / .json, search_report.md).

Run the same command again after an interruption: the supernet is reused, finished trials stay
in the study, and the interrupted trial runs again.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from lpdet.design.search.candidate import CANDIDATE_YAML, MODEL_ONNX, export_candidate, load_context
from lpdet.design.search.front import CandidateRow, choose, write_front
from lpdet.design.search.finalists import FinalistsResult, pick_finalists, run_finalists
from lpdet.design.search.finalists_report import write_finalists
from lpdet.design.search.grid import GRID, enqueue_grid
from lpdet.design.search.sandwich import train_supernet
from lpdet.design.search.settings import SearchSettings
from lpdet.design.search.study import (AP, LATENCY, candidate_of, open_storage, open_study, recover_dead_workers)
from lpdet.design.search.worker import Worker, trial_folder
from lpdet.design.splits import design_data
from lpdet.design.trials import TrialCache, data_identity, dataset_yaml, file_identity
from lpdet.errors import LpdetError
from lpdet.serialize import save_yaml, to_dict

__all__ = ["SearchOptions", "SearchResult", "run_search"]

log = logging.getLogger("lpdet.search")
DEFAULT_STUDY = "lpdet-search"


@dataclass
class SearchOptions:
    data: str
    budget_ms: float
    out: Path
    storage: str | None = None  # database URL (None: sqlite in OUT)
    study: str = DEFAULT_STUDY
    supernet: Path | None = None  # a trained supernet checkpoint (None: train one)
    progress: bool = True


@dataclass
class SearchResult:
    rows: list[CandidateRow]
    chosen: CandidateRow | None
    files: dict[str, Path]
    chosen_onnx: Path | None
    ran_here: int
    recovered: list[int]
    finalists: FinalistsResult | None = None


def run_search(settings: SearchSettings, opts: SearchOptions) -> SearchResult:
    settings.validate()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says what a trial log line would
    if not opts.budget_ms > 0:
        raise LpdetError(f"--budget-ms {opts.budget_ms}: must be > 0 (milliseconds of int8 latency)")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    storage = open_storage(opts.storage or f"sqlite:///{(out / 'study.db').resolve()}", settings.heartbeat_s)
    save_yaml(settings, out / "settings.yaml")
    data_yaml = dataset_yaml(opts.data, synth_train=settings.synth_train, synth_val=settings.synth_val)
    splits = design_data(data_yaml, out / "selection", settings.select_fraction)
    data = splits.evaluation
    supernet = Path(opts.supernet) if opts.supernet else _supernet(settings, data, out, opts.progress)
    limit = settings.latency_limit(opts.budget_ms)
    identity = {"budget_ms": opts.budget_ms, "latency_limit_ms": limit, "supernet": file_identity(supernet),
                "space": to_dict(settings.space), "width": settings.width, "threads": settings.bench.threads}
    study = open_study(storage, opts.study, settings, identity,
                       on_create=(lambda new: enqueue_grid(new, settings)) if settings.grid else None)
    recovered = recover_dead_workers(study)
    if recovered:
        log.warning("search: trial(s) %s of a worker that died are run again", recovered)
    ctx = load_context(settings, data, supernet)
    worker = Worker(study, ctx, out / "candidates", limit)
    ran = worker.run(settings, progress=opts.progress)
    rows = _rows(study, settings, out, limit)
    chosen = choose(rows)
    chosen_onnx = _write_chosen(out, chosen, study, ctx) if chosen else None
    facts = {"study": opts.study, "storage": opts.storage or "sqlite (OUT/study.db)", "supernet": str(supernet),
             "threads": settings.bench.threads, "selection": "AP on the selection split held out from train",
             "latency": "median end to end (graph + NMS), batch 1, real val images, onnxruntime int8"}
    files = write_front(out, rows, budget_ms=opts.budget_ms, limit_ms=limit, chosen=chosen, facts=facts)
    finalists = None
    if settings.finalists.enabled and chosen is not None:
        picked = [(role, candidate_of(study.get_trials(deepcopy=False)[row.trial], settings), row)
                  for role, row in pick_finalists(rows, settings.finalists.runner_up)]
        finalists = run_finalists(ctx, picked, out=out, training_yaml=splits.training, supernet=supernet,
                                  budget_ms=opts.budget_ms, progress=opts.progress)
        files.update(write_finalists(out, finalists, facts=_report_facts(settings, opts, rows, chosen, splits)))
    return SearchResult(rows, chosen, files, chosen_onnx, ran, recovered, finalists)


def _report_facts(settings: SearchSettings, opts: SearchOptions, rows: list[CandidateRow], chosen: CandidateRow,
                  splits) -> list[str]:
    """The search_report's opening lines: what was searched, on which data, with what result."""
    grid = sum(r.kind == "grid" for r in rows)
    synth = (f" ({settings.synth_train} training / {settings.synth_val} val images generated)"
             if opts.data == "synth" and settings.synth_train else "")
    return [f"data: {opts.data}{synth}; candidates scored on the selection split: {splits.select_source}; "
            f"finalists reported on val",
            f"budget {opts.budget_ms:g} ms, fit limit {settings.latency_limit(opts.budget_ms):.2f} ms "
            f"(margin {settings.budget_margin:g}), {settings.bench.threads} thread(s)",
            f"{len(rows)} candidates scored: {grid} width x resolution grid points, {len(rows) - grid} searched "
            f"(Optuna TPE); {sum(r.fits for r in rows)} fit",
            f"supernet: {settings.supernet.epochs} epoch(s), sandwich rule; chosen: trial {chosen.trial} "
            f"({chosen.kind}), select AP {chosen.select_ap:.4f}, {chosen.latency_ms:.2f} ms"]


def _supernet(settings: SearchSettings, data: Path, out: Path, progress: bool) -> Path:
    """The trained super-network: a cached trial (trained once, reused when run again)."""
    cache = TrialCache(out / "trials", progress=progress)
    spec = {"supernet": asdict(settings.supernet), "space": to_dict(settings.space), "width": settings.width,
            "data": data_identity(data),
            # the weights it starts from, by content: a retrained base at the same path is another start
            "init_identity": file_identity(settings.supernet.init or None)}

    def fn(directory: Path) -> dict:
        train_supernet(settings, data, directory / "supernet", progress=progress)
        return {"files": {"checkpoint": "supernet"}}

    return cache.file(cache.run("supernet", spec, fn, kind="supernet"), "checkpoint")


def _rows(study, settings: SearchSettings, out: Path, limit: float) -> list[CandidateRow]:
    """Every finished trial as a row; its candidate YAML written here if another worker scored it."""
    rows = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        config = trial_folder(out / "candidates", trial.number) / CANDIDATE_YAML
        if not config.is_file():
            config.parent.mkdir(parents=True, exist_ok=True)
            save_yaml(candidate_of(trial, settings), config)
        low, high = trial.user_attrs.get("latency_interval_ms") or (None, None)
        latency = float(trial.user_attrs[LATENCY])
        width = trial.user_attrs.get(GRID)
        rows.append(CandidateRow(trial=trial.number, select_ap=float(trial.user_attrs[AP]), latency_ms=latency,
                                 latency_low_ms=low, latency_high_ms=high, fits=latency <= limit,
                                 config=str(config.relative_to(out)), kind="search" if width is None else "grid",
                                 grid_width=width))
    return rows


def _write_chosen(out: Path, chosen: CandidateRow, study, ctx) -> Path:
    """``OUT/chosen/candidate.yaml`` and its int8 ``model.onnx``: copied from the trial's folder, or
    exported again from the supernet when another worker scored it (inheritance and calibration
    are deterministic, so it is the same model)."""
    folder = out / "chosen"
    source = trial_folder(out / "candidates", chosen.trial)
    if not (source / MODEL_ONNX).is_file():
        candidate = candidate_of(study.get_trials(deepcopy=False)[chosen.trial], ctx.settings)
        return export_candidate(candidate, ctx, folder, source=f"lpdet search trial {chosen.trial}")
    folder.mkdir(parents=True, exist_ok=True)
    for name in (CANDIDATE_YAML, MODEL_ONNX):
        tmp = folder / f".{name}.tmp"
        shutil.copyfile(source / name, tmp)
        tmp.replace(folder / name)
    return folder / MODEL_ONNX
