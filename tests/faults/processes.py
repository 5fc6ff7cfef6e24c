"""Real `lpdet` processes for the fault tests: the command lines, starting, pausing, waiting, comparing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
STEPS_PER_EPOCH = 3  # tiny_synth's 12 train images / batch 4
TIMEOUT_S = 180


def train_args(data_yaml: Path, out: Path, *, qat_init: Path | None = None, checkpoint_every: int = 2,
               epochs: int = 2, workers: int = 0) -> list[str]:
    """`lpdet train` on a tiny model: fp32 and one thread, so every run of it is bit-identical (with any
    number of DataLoader workers: the batches do not depend on it)."""
    args = ["train", "--data", str(data_yaml), "--width", "0.25", "--resolution", "96", "--epochs", str(epochs),
            "--batch-size", "4", "--lr", "0.01", "--warmup-steps", "2", "--workers", str(workers), "--threads", "1",
            "--precision", "fp32", "--checkpoint-every", str(checkpoint_every), "--out", str(out), "--quiet"]
    if qat_init is not None:  # BN freezes at step 2, observers at step 4: both phases span a kill at 3
        args += ["--qat", "--init", str(qat_init), "--freeze-bn-after", "2", "--freeze-observers-after", "4"]
    return args


class Process:
    """A started `lpdet` (optionally paused by `tests.faults.pausing_lpdet`), its stderr in a file.

    A cold `python -m lpdet` process, or (`launcher=`) one forked by a `Launcher`; with `own_group`,
    the leader of a process group of its own (its DataLoader workers join it), for `signal_group`;
    with `design_settings` (forked ones only), `lpdet design` uses the `DesignSettings` of that JSON file."""

    def __init__(self, args: list[str], workdir: Path, *, at: str | None = None, mode: str = "freeze",
                 launcher: Launcher | None = None, own_group: bool = False, design_settings: Path | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        stamp = time.monotonic_ns()
        self.ready, self.stderr_path = workdir / f"ready-{stamp}", workdir / f"stderr-{stamp}.txt"
        self.popen = self.forked = None
        if launcher is not None:
            self.forked = launcher.start(args, self.stderr_path, workdir / f"status-{stamp}", at, mode, self.ready,
                                         own_group, design_settings)
            return
        assert design_settings is None, "design_settings needs a launcher"
        if at is None:
            command = [sys.executable, "-m", "lpdet", *args]
        else:
            command = [sys.executable, "-m", "tests.faults.pausing_lpdet", "--at", at, "--mode", mode,
                       "--ready", str(self.ready), "--", *args]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with open(self.stderr_path, "w") as stderr:
            self.popen = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                          start_new_session=own_group)

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen is not None else self.forked[0]

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def returncode(self) -> int | None:
        if self.popen is not None:
            return self.popen.poll()
        pid, status = self.forked
        return int(status.read_text()) if status.exists() else None

    def wait_until(self, condition, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not condition():
            if self.returncode() is not None:
                raise AssertionError(f"lpdet exited ({self.returncode()}) before {what}:\n{self.stderr}")
            if time.monotonic() > deadline:
                self.signal(signal.SIGKILL)
                raise AssertionError(f"lpdet did not reach {what} in {TIMEOUT_S} s:\n{self.stderr}")
            time.sleep(0.02)

    def wait_paused(self) -> None:
        self.wait_until(self.ready.exists, "its pause point")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def signal_group(self, signum: int) -> None:
        """Signal the whole process group (started with `own_group`), as `timeout` and Ctrl-C do."""
        os.killpg(self.pid, signum)

    def finish(self) -> int:
        deadline = time.monotonic() + TIMEOUT_S
        while self.returncode() is None:
            if time.monotonic() > deadline:
                self.signal(signal.SIGKILL)
                raise AssertionError(f"lpdet did not exit in {TIMEOUT_S} s:\n{self.stderr}")
            time.sleep(0.02)
        return self.returncode()


class Launcher:
    """A running `tests.faults.launcher`: forks `lpdet` processes without paying the imports again."""

    def __init__(self):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen([sys.executable, "-m", "tests.faults.launcher"], cwd=ROOT, env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def start(self, args, stderr: Path, status: Path, at, mode, ready: Path, own_group: bool,
              design_settings: Path | None) -> tuple[int, Path]:
        request = {"argv": list(args), "stderr": str(stderr), "status": str(status), "at": at, "mode": mode,
                   "ready": str(ready), "own_group": own_group,
                   "design_settings": str(design_settings) if design_settings else None}
        self.popen.stdin.write(json.dumps(request) + "\n")
        self.popen.stdin.flush()
        line = self.popen.stdout.readline()
        assert line.strip().isdigit(), f"the launcher did not start lpdet (it said {line!r})"
        return int(line), status

    def close(self) -> None:
        """End the launcher (it kills the children still running); on a loaded machine a Python that
        imported torch and onnxruntime can take a minute to exit, so after 60 s it is killed."""
        self.popen.stdin.close()
        try:
            self.popen.wait(60)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(60)


def run_lpdet(args: list[str], workdir: Path, launcher: Launcher | None = None) -> Process:
    """Run `lpdet ARGS` to the end; fails the test unless it exits 0."""
    process = Process(args, workdir, launcher=launcher)
    assert process.finish() == 0, process.stderr
    return process


def resume_command(stderr: str) -> list[str]:
    """The `lpdet ...` arguments of the resume command an interrupted run printed."""
    match = re.search(r"`lpdet (train --resume [^`]+)`", stderr)
    assert match, f"no resume command in:\n{stderr}"
    return match.group(1).split()


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "last" / "model.safetensors"))


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
