"""The trial cache: finished trials are not redone, changed specs are, interrupted training resumes."""

from __future__ import annotations

import json
import logging

import pytest

import lpdet.design.trials as trials
import lpdet.train.loop as loop
from lpdet.design.trials import TrialCache, read_val_csv
from tests.helpers import tiny_synth, tiny_train_config



def test_finished_trial_is_cached_not_redone(tmp_path, caplog):
    cache = TrialCache(tmp_path / "trials", progress=False)
    calls = []

    def work(directory):
        calls.append(directory)
        (directory / "out.txt").write_text("x")
        return {"files": {"out": "out.txt"}, "value": 42}

    caplog.set_level(logging.INFO, logger="lpdet.design")
    first = cache.run("measure-r240", {"a": 1}, work)
    second = TrialCache(tmp_path / "trials", progress=False).run("measure-r240", {"a": 1}, work)
    assert len(calls) == 1
    assert first["value"] == second["value"] == 42 and second["spec"] == {"a": 1, "kind": "trial"}
    assert cache.file(second, "out").read_text() == "x"
    assert json.loads((tmp_path / "trials" / "measure-r240" / "result.json").read_text())["value"] == 42
    lines = [r.getMessage() for r in caplog.records if r.name == "lpdet.design"]
    assert any(line.startswith("[1/1] measure-r240") and line.endswith("cached") for line in lines)

    # a different spec is a different measurement: redone
    cache.run("measure-r240", {"a": 2}, work)
    assert len(calls) == 2


def test_failed_trial_records_nothing_and_runs_again(tmp_path):
    cache = TrialCache(tmp_path / "trials", progress=False)

    def boom(directory):
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.run("t", {}, boom)
    assert not (tmp_path / "trials" / "t" / "result.json").exists()
    assert cache.run("t", {}, lambda d: {"ok": True})["ok"] is True


def test_interrupted_training_trial_resumes(tmp_path, monkeypatch):
    data = tiny_synth(tmp_path / "data", n_train=8, n_val=2)
    cfg = tiny_train_config(data, tmp_path / "unused", epochs=2, batch_size=4, checkpoint_every=1)
    cache = TrialCache(tmp_path / "trials", progress=False)

    real_lr_at = loop.lr_at

    def interrupt(step, **kwargs):
        if step == 3:  # in epoch 2, after the step-2 checkpoint
            raise KeyboardInterrupt
        return real_lr_at(step, **kwargs)

    monkeypatch.setattr(loop, "lr_at", interrupt)
    with pytest.raises(KeyboardInterrupt):
        cache.train("finetune-r96", cfg)
    monkeypatch.setattr(loop, "lr_at", real_lr_at)
    run = tmp_path / "trials" / "finetune-r96" / "run"
    assert (run / "last").is_dir() and not (run.parent / "result.json").exists()

    seen = []
    real_train = trials.train

    def spy(config, *, resume=False, progress=True):
        seen.append(resume)
        return real_train(config, resume=resume, progress=progress)

    monkeypatch.setattr(trials, "train", spy)
    result = cache.train("finetune-r96", cfg)
    assert seen == [True]
    assert [r["epoch"] for r in read_val_csv(run / "val.csv")] == [1, 2]
    assert result["steps"] == 4 and len(result["val"]) == 2 and cache.file(result, "best").is_dir()

    # finished now: asked again, nothing trains
    def no_training(*args, **kwargs):
        raise AssertionError("a finished trial was trained again")

    monkeypatch.setattr(trials, "train", no_training)
    assert cache.train("finetune-r96", cfg)["steps"] == 4
