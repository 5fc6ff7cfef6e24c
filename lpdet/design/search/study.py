"""The Optuna study of a search: storage, sampler, the candidate as Optuna parameters, and the
recovery of trials a dead worker left RUNNING.

Storage is any database URL Optuna's `RDBStorage` accepts: by default SQLite in the run folder
(``sqlite:///OUT/study.db``); ``--storage postgresql://…`` lets workers on several machines join
one study (``--study NAME``). Each worker asks the study for its next trial, so no two workers run
the same trial. The sampler is TPE with the latency constraint (``latency − limit ≤ 0``; Optuna's
constrained TPE, Watanabe & Hutter 2023) maximising AP on the selection split.

A worker that dies leaves its trial RUNNING. Two ways bring it back, both failing it and
enqueuing its parameters once more (`RetryFailedTrialCallback`): a worker starting on the same
machine fails at once the RUNNING trials of processes of this machine that no longer exist; any
other trial is failed by Optuna's heartbeat when its worker has been silent for two heartbeats.
An interrupted trial (Ctrl-C) is failed and enqueued again the same way. So a kill loses at most
the trial it interrupted, and the trial is run again, not twice more.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import time
import warnings
from collections.abc import Callable

import optuna
from filelock import FileLock
from optuna.storages import RDBStorage

try:  # Optuna >= 4.9; the older name is deprecated there
    from optuna.storages import RetryHeartbeatStaleTrialCallback as _RetryCallback
except ImportError:
    from optuna.storages import RetryFailedTrialCallback as _RetryCallback
from optuna.trial import FrozenTrial, TrialState

from lpdet.design.search.settings import SearchSettings
from lpdet.errors import LpdetError
from lpdet.models.arch_detail import NUM_EXTRA_LAYERS, ArchDetail, StageDetail, default_stages
from lpdet.models.arch_space import ArchCandidate, stage_choices
from lpdet.serialize import to_dict

__all__ = ["open_storage", "open_study", "suggest_candidate", "candidate_of", "recover_dead_workers", "WORKER",
           "retry", "worker_id", "is_feasible", "params_of", "set_latency_constraint", "LATENCY", "AP"]

LATENCY = "latency_ms"  # user attribute: the measured median int8 latency
AP = "select_ap"
WORKER = "worker"  # user attribute: "host:pid" of the process running the trial
MAX_RETRY = 2
# What a study was created with; a worker joining it must bring the same.
_IDENTITY = ("budget_ms", "latency_limit_ms", "supernet", "space", "width", "threads")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def open_storage(url: str, heartbeat_s: int) -> RDBStorage:
    """`url` as an `RDBStorage` with heartbeats and retries of stale trials; `LpdetError` naming
    --storage when the database cannot be opened."""
    names = inspect.signature(RDBStorage.__init__).parameters
    key = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names else "failed_trial_callback"
    # SQLite: several local workers wait for each other's writes instead of failing at once.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_s,
                                  grace_period=2 * heartbeat_s, **{key: _RetryCallback(max_retry=MAX_RETRY)})
        except Exception as e:  # sqlalchemy and drivers raise many types: one line with the fix
            if any(m in str(e) for m in ("already exists", "UNIQUE constraint")) and attempt < 2:
                continue  # two workers created a new database's tables (or its schema version) at once: the other won
            raise _storage_error(url, e) from None
    raise AssertionError("unreachable")


def _storage_error(url: str, e: Exception) -> LpdetError:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return LpdetError(f"--storage {url}: cannot open the study database ({reason[:200]}); give a database URL "
                      "Optuna accepts, e.g. sqlite:///runs/search/study.db or postgresql://user@host/db")


def open_study(storage: RDBStorage, name: str, settings: SearchSettings, identity: dict,
               on_create: Callable[[optuna.Study], None] | None = None) -> optuna.Study:
    """Create study `name` or join it; a joining worker must bring the same budget, supernet, space.
    `on_create(study)` runs only in the one worker whose create won (the storage's unique study name
    decides, so workers starting together never both run it): e.g. enqueueing the grid's trials."""
    limit = identity["latency_limit_ms"]
    # Optuna 5 reads the constraint the trial sets (`set_latency_constraint`); Optuna 4 asks a function.
    constraints = None if USES_SET_CONSTRAINT else (lambda t: [t.user_attrs.get(LATENCY, 1e9) - limit])
    with warnings.catch_warnings():  # multivariate TPE is "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=settings.seed + os.getpid(), n_startup_trials=settings.startup_trials,
                                             multivariate=True, constant_liar=True, constraints_func=constraints)
    wanted = json.loads(json.dumps(to_dict(identity)))
    study = _open(storage, name, sampler, wanted, on_create)
    _serialise_waiting_pops(study, storage)
    return study


def _serialise_waiting_pops(study: optuna.Study, storage: RDBStorage) -> None:
    """SQLite has no row locks (SELECT ... FOR UPDATE), so two workers on one machine could both take the
    same waiting trial (an enqueued grid point or a re-queued one) and run it twice (seen: "Cannot tell
    a COMPLETE trial"). Taking a waiting trial is made one-at-a-time with a file lock beside the database;
    server databases lock the row themselves."""
    url = str(getattr(storage, "url", ""))
    if not url.startswith("sqlite:///"):
        return
    lock = FileLock(url[len("sqlite:///"):] + ".pop.lock")
    pop = study._pop_waiting_trial_id  # Optuna's own (private) step of `ask`: a waiting trial -> RUNNING

    def pop_one_at_a_time(*args, **kwargs):
        with lock:
            return pop(*args, **kwargs)

    study._pop_waiting_trial_id = pop_one_at_a_time


def _open(storage: RDBStorage, name: str, sampler, wanted: dict, on_create) -> optuna.Study:
    """Create study `name` (the identity, then `on_create`) or join it (checking the identity)."""
    try:
        study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=name, sampler=sampler)
    else:
        # The identity first (a joining worker waits for all of it), then what only the creator does.
        for key in _IDENTITY:
            study.set_user_attr(key, wanted[key])
        if on_create is not None:
            on_create(study)
        return study
    stored = _identity_of(study)
    if not stored:  # a study created without them (by an earlier lpdet): this worker's become its identity
        for key in _IDENTITY:
            study.set_user_attr(key, wanted[key])
        return study
    for key in _IDENTITY:
        if stored.get(key) != wanted[key]:
            raise LpdetError(f"--study {name}: it was started with {key} {stored.get(key)!r}, this worker has "
                             f"{wanted[key]!r}; join it with the same options (and --supernet), or pick a new --study")
    return study


def _identity_of(study: optuna.Study, wait_s: float = 60.0) -> dict:
    """The study's identity attributes; a worker joining a study that another one is creating right
    now waits (up to `wait_s`) until the creator has written all of them."""
    deadline = time.monotonic() + wait_s
    stored = study.user_attrs
    while not all(key in stored for key in _IDENTITY) and time.monotonic() < deadline:
        time.sleep(0.5)
        stored = study.user_attrs
    return stored


USES_SET_CONSTRAINT = hasattr(optuna.Trial, "set_constraint")


def set_latency_constraint(trial: optuna.Trial, latency_ms: float, limit_ms: float) -> None:
    """The trial is feasible when its measured latency is at most the limit (Optuna 5's way)."""
    if USES_SET_CONSTRAINT:
        trial.set_constraint("latency", latency_ms - limit_ms)


def _stage_key(index: int, name: str) -> str:
    return f"s{index}.{name}"


def suggest_candidate(trial: optuna.Trial, settings: SearchSettings) -> ArchCandidate:
    """The candidate trial `trial` proposes: one categorical parameter per choice of the space."""
    space = settings.space
    stages = []
    for index in range(len(default_stages(space.arch))):
        values = {name: trial.suggest_categorical(_stage_key(index, name), choices)
                  for name, choices in stage_choices(space, index).items()}
        stages.append(StageDetail(**values))
    extras = [trial.suggest_categorical(f"extra{j}.width", space.extra_widths) for j in range(NUM_EXTRA_LAYERS)]
    resolution = trial.suggest_categorical("resolution", space.resolutions)
    return ArchCandidate(space.arch, resolution, ArchDetail(stages=stages, extra_widths=extras), width=settings.width)


def params_of(candidate: ArchCandidate) -> dict:
    """The trial parameters `suggest_candidate` turns into `candidate` (for `study.enqueue_trial`)."""
    params: dict = {}
    for index, stage in enumerate(candidate.detail.stages):
        params.update({_stage_key(index, name): getattr(stage, name) for name in ("width", "expansion", "kernel", "depth")})
    params.update({f"extra{j}.width": w for j, w in enumerate(candidate.detail.extra_widths)})
    params["resolution"] = candidate.resolution
    return params


def candidate_of(trial: FrozenTrial, settings: SearchSettings) -> ArchCandidate:
    """The candidate a finished trial scored (from its parameters)."""
    p, space = trial.params, settings.space
    stages = [StageDetail(**{name: p[_stage_key(i, name)] for name in ("width", "expansion", "kernel", "depth")})
              for i in range(len(default_stages(space.arch)))]
    detail = ArchDetail(stages=stages, extra_widths=[p[f"extra{j}.width"] for j in range(NUM_EXTRA_LAYERS)])
    return ArchCandidate(space.arch, p["resolution"], detail, width=settings.width)


def retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue `trial`'s parameters again (at most MAX_RETRY times per original trial)."""
    with warnings.catch_warnings():  # "experimental" in Optuna since 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        _RetryCallback(max_retry=MAX_RETRY)(study, trial)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def recover_dead_workers(study: optuna.Study) -> list[int]:
    """Fail and re-enqueue the RUNNING trials of processes of this machine that no longer exist
    (a killed worker); Optuna's heartbeat does the same for other machines. Returns their numbers."""
    host = socket.gethostname()
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(trial.user_attrs.get(WORKER, ""))
        owner_host, _, pid = owner.rpartition(":")
        if owner_host != host or not pid.isdigit() or _alive(int(pid)) or int(pid) == os.getpid():
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):  # another worker starting now failed it first
            continue
        retry(study, trial)
        recovered.append(trial.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # the heartbeat's: other machines' silent workers
    return recovered


def is_feasible(trial: FrozenTrial, limit_ms: float) -> bool:
    return trial.state == TrialState.COMPLETE and trial.user_attrs.get(LATENCY, float("inf")) <= limit_ms
