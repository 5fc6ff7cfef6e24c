"""The study: a worker joins only with the same budget and supernet; a dead worker's RUNNING trial
is failed and its parameters enqueued once more; candidates round-trip through Optuna parameters."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
from dataclasses import replace

import optuna
import pytest
from optuna.trial import TrialState

from lpdet.design.search.study import (WORKER, candidate_of, open_storage, open_study, recover_dead_workers,
                                       suggest_candidate)
from lpdet.errors import LpdetError
from lpdet.models.arch_space import sample_candidate
from tests.design.search.conftest import tiny_settings


def _identity(budget: float = 5.0) -> dict:
    return {"budget_ms": budget, "latency_limit_ms": budget * 0.9, "supernet": [{"sha256": "abc"}],
            "space": {"resolutions": [96]}, "width": 0.25, "threads": 1}


def test_joining_with_another_budget_is_refused(tmp_path):
    settings = tiny_settings(tmp_path / "lock")
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", settings.heartbeat_s)
    open_study(storage, "s", settings, _identity(5.0))
    open_study(storage, "s", settings, _identity(5.0))  # the same: joins
    with pytest.raises(LpdetError, match="--study s: .*budget_ms"):
        open_study(storage, "s", settings, _identity(6.0))


def test_candidate_round_trips_through_trial_parameters(tmp_path):
    settings = tiny_settings(tmp_path / "lock")
    study = optuna.create_study(direction="maximize")
    wanted = replace(sample_candidate(settings.space, random.Random(7)), width=settings.width)
    study.enqueue_trial({**_params(wanted)})
    trial = study.ask()
    assert suggest_candidate(trial, settings) == wanted
    study.tell(trial, 0.5)
    assert candidate_of(study.trials[0], settings) == wanted


def _params(candidate) -> dict:
    params = {"resolution": candidate.resolution}
    for i, stage in enumerate(candidate.detail.stages):
        params.update({f"s{i}.width": stage.width, f"s{i}.expansion": stage.expansion, f"s{i}.kernel": stage.kernel,
                       f"s{i}.depth": stage.depth})
    params.update({f"extra{j}.width": w for j, w in enumerate(candidate.detail.extra_widths)})
    return params


def test_a_dead_workers_running_trial_is_failed_and_enqueued_once(tmp_path):
    settings = tiny_settings(tmp_path / "lock")
    study = open_study(open_storage(f"sqlite:///{tmp_path / 'study.db'}", settings.heartbeat_s), "s", settings,
                       _identity())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = study.ask()
    suggest_candidate(orphan, settings)
    orphan.set_user_attr(WORKER, f"{socket.gethostname()}:{dead.pid}")
    alive = study.ask()  # this process's own running trial is left alone
    alive.set_user_attr(WORKER, f"{socket.gethostname()}:{subprocess.os.getpid()}")
    assert recover_dead_workers(study) == [orphan.number]
    assert recover_dead_workers(study) == []  # once
    trials = study.get_trials(deepcopy=False)
    assert trials[orphan.number].state == TrialState.FAIL and trials[alive.number].state == TrialState.RUNNING
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].params == trials[orphan.number].params
