"""Real `lpdet search` processes on one study: two workers finish it together with no trial run
twice; a worker killed mid-trial and started again loses only that trial, which runs once more."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import TrialState

from lpdet.design.search.grid import grid_candidates
from lpdet.design.search.study import candidate_of
from lpdet.serialize import save_yaml

ROOT = Path(__file__).resolve().parents[3]


def _command(tiny_search, tmp_path: Path, out: str, storage: str, trials: int) -> list[str]:
    settings, data, supernet = tiny_search
    settings_file = tmp_path / "settings.yaml"
    if not settings_file.is_file():
        save_yaml(settings, settings_file)
    return [sys.executable, "-m", "lpdet", "-q", "search", "--data", str(data), "--budget-ms", "1000",
            "--out", str(tmp_path / out), "--storage", storage, "--study", "shared", "--supernet", str(supernet),
            "--settings", str(settings_file), "--trials", str(trials)]


def _start(command: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=900)  # minutes only on a machine busy with other jobs
    assert proc.returncode == 0, err
    return out


def _trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="shared", storage=storage).get_trials(deepcopy=False)
    except KeyError:  # the worker has not created the study yet
        return []
    except sqlalchemy.exc.OperationalError:  # ... or is creating the database's tables right now
        return []


def test_two_workers_finish_one_study_without_running_a_trial_twice(tiny_search, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = _start(_command(tiny_search, tmp_path, "a", storage, trials=3))
    time.sleep(1.0)  # let the first create the study; the second joins it
    second = _start(_command(tiny_search, tmp_path, "b", storage, trials=3))
    _finish(first), _finish(second)
    trials = _trials(storage)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3
    assert all(t.state == TrialState.COMPLETE or t.user_attrs.get("surplus") for t in trials)
    for trial in complete:  # each finished trial was scored in exactly one worker's folder
        folders = [tmp_path / w / "candidates" / f"trial-{trial.number:04d}" / "model.onnx" for w in ("a", "b")]
        assert sum(f.is_file() for f in folders) == 1, trial.number
    if hasattr(optuna.Trial, "set_constraint"):  # Optuna 5: TPE reads the latency constraint from the trial
        assert all(t.constraints == {"latency": t.user_attrs["latency_ms"] - 900.0} for t in complete)
    # the study's first trials are the width x resolution grid's, each run once (3 trials: its first 2)
    grid = [repr(candidate_of(t, tiny_search[0])) for t in complete if "grid_width" in t.user_attrs]
    assert sorted(grid) == sorted(map(repr, grid_candidates(tiny_search[0])[:2]))
    workers = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in complete}
    assert workers <= {str(first.pid), str(second.pid)}
    for w in ("a", "b"):  # each worker writes the whole study's front and every candidate's YAML
        assert len((tmp_path / w / "candidates.csv").read_text().splitlines()) == 1 + 3
        assert (tmp_path / w / "candidates.csv").read_text().count(",grid,") == 2
        assert (tmp_path / w / "chosen" / "model.onnx").is_file()


def test_a_killed_worker_loses_only_its_running_trial(tiny_search, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    command = _command(tiny_search, tmp_path, "a", storage, trials=2)
    worker = _start(command)
    deadline = time.monotonic() + 900
    killed = None
    while killed is None and worker.poll() is None and time.monotonic() < deadline:
        trials = _trials(storage) if (tmp_path / "study.db").exists() else []  # the worker creates it
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        running = [t for t in trials if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
        if done and running:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            killed, finished_before = running[0].number, {t.number for t in done}
        time.sleep(0.1)
    assert killed is not None, "the worker finished before it could be killed mid-trial"
    assert _trials(storage)[killed].state == TrialState.RUNNING  # left behind by the dead worker
    _finish(_start(command))
    trials = _trials(storage)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(complete) == 2 and [t.number for t in failed] == [killed]
    assert finished_before <= {t.number for t in complete}  # finished work kept, not redone
    retried = [t for t in complete if t.system_attrs.get("failed_trial") == killed]
    assert len(retried) == 1 and retried[0].params == trials[killed].params  # run again, once
    assert len(trials) == 3
