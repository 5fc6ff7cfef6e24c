"""`python -m tests.faults.pausing_lpdet --at WHERE --mode MODE --ready FILE -- ARGS...`: the `lpdet`
command (`lpdet ARGS...`), paused at one chosen point so a test can signal or kill it exactly there.

WHERE is `step:N` (before training step N), `val:E` (inside the E-th validation, 1-based),
`save:N:PHASE` (inside the save of `last` at global step N: PHASE `files` after the weights file is
written, `swap` between the two renames that swap it in), or a design trial (`lpdet.design.trials`):
`trial:NAME:start` (its spec written, its work not begun), `trial:NAME:end` (its work done, its result
not yet recorded) or `trial:NAME:step:N` (a training trial, before its step N). On arriving, the process
writes FILE, then with MODE `freeze` sleeps until killed, with `hold` waits until a stop signal reached
the training loop's handler (so that the signal lands at that point), and with `wait` waits until
FILE.go exists (the test changes something meanwhile); then it goes on.

Only the test suite uses this; it patches lpdet from outside instead of adding test hooks to it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import lpdet.design.trials as trials
import lpdet.models.checkpoint_format as checkpoint_format
import lpdet.train.loop as loop
import lpdet.train.tasks as tasks
from lpdet.cli import main
from lpdet.design.settings import DesignSettings

HOLD_LIMIT_S = 120


def _pause(mode: str, ready: Path) -> None:
    ready.write_text(str(os.getpid()))
    if mode == "freeze":
        while True:
            time.sleep(1)
    go = ready.with_name(ready.name + ".go")
    deadline = time.monotonic() + HOLD_LIMIT_S
    while time.monotonic() < deadline:
        if mode == "wait" and go.exists():
            return
        handler = signal.getsignal(signal.SIGTERM)
        if mode == "hold" and getattr(getattr(handler, "__self__", None), "signum", None) is not None:
            return
        time.sleep(0.02)


def _patch(where: str, mode: str, ready: Path) -> None:
    kind, _, rest = where.partition(":")
    if kind == "step":
        real_step, target = loop._step, int(rest)

        def paused_step(run, *args, **kwargs):
            if run.state["global_step"] == target:
                _pause(mode, ready)
            return real_step(run, *args, **kwargs)

        loop._step = paused_step
    elif kind == "val":
        real_evaluate, target, calls = tasks.evaluate, int(rest), [0]

        def paused_evaluate(predict, *args, **kwargs):
            calls[0] += 1
            if calls[0] == target:
                _pause(mode, ready)
            return real_evaluate(predict, *args, **kwargs)

        tasks.evaluate = paused_evaluate
    elif kind == "save":
        _patch_save(int(rest.split(":")[0]), rest.split(":")[1], mode, ready)
    elif kind == "trial":
        name, _, phase = rest.partition(":")
        _patch_trial(name, phase, mode, ready)
    else:
        raise SystemExit(f"--at {where}: expected step:N, val:E, save:N:PHASE or trial:NAME:PHASE")


def _patch_trial(target: str, phase: str, mode: str, ready: Path) -> None:
    real_run, inside = trials.TrialCache.run, [False]

    def paused_run(cache, name, spec, fn, **kwargs):
        if name != target:
            return real_run(cache, name, spec, fn, **kwargs)

        def paused_fn(directory):
            if phase == "start":
                _pause(mode, ready)
            inside[0] = True
            result = fn(directory)
            inside[0] = False
            if phase == "end":
                _pause(mode, ready)
            return result

        return real_run(cache, name, spec, paused_fn, **kwargs)

    trials.TrialCache.run = paused_run
    if phase.startswith("step:"):
        real_step, step = loop._step, int(phase.split(":")[1])

        def paused_step(run, *args, **kwargs):
            if inside[0] and run.state["global_step"] == step:
                _pause(mode, ready)
            return real_step(run, *args, **kwargs)

        loop._step = paused_step


def use_design_settings(path: Path) -> None:
    """`lpdet design` (without --quick) uses the `DesignSettings` in the JSON file `path`: a test's tiny ones."""
    settings = DesignSettings.from_dict(json.loads(Path(path).read_text()))
    DesignSettings.full = classmethod(lambda cls, **overrides: replace(settings, **overrides))


def _patch_save(target: int, phase: str, mode: str, ready: Path) -> None:
    real_save, real_save_file, real_replace = loop.save_checkpoint, checkpoint_format.save_file, os.replace
    active = [False]

    def watched_save(path, **kwargs):
        active[0] = Path(path).name == "last" and kwargs["train_state"]["global_step"] == target
        try:
            return real_save(path, **kwargs)
        finally:
            active[0] = False

    def watched_save_file(tensors, filename, *args, **kwargs):
        real_save_file(tensors, filename, *args, **kwargs)
        if active[0] and phase == "files" and filename.endswith(checkpoint_format.WEIGHTS):
            _pause(mode, ready)

    def watched_replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        if active[0] and phase == "swap" and str(dst).endswith(".old"):
            _pause(mode, ready)

    loop.save_checkpoint, checkpoint_format.save_file = watched_save, watched_save_file
    checkpoint_format.os.replace = watched_replace


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--at", required=True)
    parser.add_argument("--mode", choices=["freeze", "hold", "wait"], required=True)
    parser.add_argument("--ready", type=Path, required=True)
    parser.add_argument("lpdet_args", nargs=argparse.REMAINDER)
    options = parser.parse_args()
    _patch(options.at, options.mode, options.ready)
    sys.exit(main([a for a in options.lpdet_args if a != "--"]))
