"""`python -m tests.faults.launcher`: a Python that has imported torch and lpdet once and forks a fresh
`lpdet` process per request, so that dozens of kill points fit in the suite's time (a cold `python -m
lpdet` spends 4-12 s importing torch and torchvision on a loaded 2-core machine; a fork, none).

Each request is one JSON line on stdin: `argv` (the lpdet arguments), `stderr` (a file for the child's
stderr), `status` (a file the launcher writes the child's exit status into once it ends: -N when a
signal N ended it), optional `at`/`mode`/`ready` (a pause point, as in `tests.faults.pausing_lpdet`),
`design_settings` (a JSON file of the `DesignSettings` that `lpdet design` uses, see
`pausing_lpdet.use_design_settings`) and `own_group` (the child leads a process group of its own, so
that a test can signal it with its DataLoader workers, as `timeout` or a terminal does). The launcher
answers each request with the child's pid. The children are real processes: signals and `kill -9` reach
them as they would reach `lpdet`. Forking is safe here because the launcher runs no torch or onnxruntime
operation (it only imports them), so no thread pool exists yet when it forks.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import traceback
from pathlib import Path

from lpdet.cli import main
from tests.faults import pausing_lpdet


def _child(request: dict) -> None:
    code = 1
    try:
        if request.get("own_group"):
            os.setpgid(0, 0)
        os.dup2(os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        os.dup2(os.open(os.devnull, os.O_RDWR), 0)
        os.dup2(0, 1)
        if request.get("design_settings"):
            pausing_lpdet.use_design_settings(Path(request["design_settings"]))
        if request.get("at"):
            pausing_lpdet._patch(request["at"], request["mode"], Path(request["ready"]))
        code = main(request["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def _reap(children: dict[int, str]) -> None:
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        path = Path(children.pop(pid))
        path.with_suffix(".part").write_text(str(os.waitstatus_to_exitcode(status)))
        path.with_suffix(".part").replace(path)


def serve() -> None:
    children: dict[int, str] = {}
    while True:
        readable, _, _ = select.select([sys.stdin], [], [], 0.02)
        if readable:
            line = sys.stdin.readline()
            if not line:
                break
            request = json.loads(line)
            if request["argv"][:1] == ["design"]:
                # imported once here (the first time), not in every forked `lpdet design`; not
                # before: it takes seconds, which the tests that never run `design` need not wait
                import lpdet.design.commands  # noqa: F401
            pid = os.fork()
            if pid == 0:
                _child(request)
            children[pid] = request["status"]
            print(pid, flush=True)
        _reap(children)
    for pid in children:
        os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    serve()
