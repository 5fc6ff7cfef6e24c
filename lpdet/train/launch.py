"""`lpdet train --nproc N`: start N training processes on this machine with torchrun's own launcher
(`torch.distributed.run`, run in this process: no shell, no command string).

It is `torchrun --standalone --nproc-per-node N -m lpdet train ...` with the same arguments; each
process sees torchrun's RANK/WORLD_SIZE (`lpdet.train.distributed.Ranks`). When a process fails,
torchrun stops the others at once; this turns its report into one error naming the rank.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from lpdet.errors import Interrupted, LpdetError
from lpdet.train.distributed import Ranks

STOP_STATUSES = {128 + signal.SIGINT, 128 + signal.SIGTERM}  # what an `Interrupted` rank exits with
CRASH_STATUS = 1  # what Python exits with on an uncaught exception


def started_by_torchrun() -> bool:
    return Ranks.from_environment().active or "TORCHELASTIC_RUN_ID" in os.environ


def check_nproc(nproc: int) -> None:
    """Under torchrun, `--nproc` may only repeat the number of processes torchrun started here."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", Ranks.from_environment().world_size))
    if nproc not in (0, local):
        raise LpdetError(f"--nproc {nproc}: torchrun already started {local} process(es) on this machine; "
                         f"drop --nproc when starting lpdet with torchrun")


def launch(nproc: int, argv: list[str], run_dir: Path) -> None:
    """Run `python -m lpdet ARGV` in `nproc` processes (ARGV holds `--nproc`, which they check) and wait."""
    from torch.distributed import run as torchrun  # the launcher is only needed here
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "lpdet"])
    args.training_script_args = list(argv)  # set, not parsed: torchrun's parser would take --nproc for its own
    try:
        torchrun.run(args)
    except ChildFailedError as e:
        raise _failure(e, run_dir, nproc) from None
    except SignalException as e:  # this launcher got SIGINT/SIGTERM: torchrun passed it on to every rank
        raise Interrupted(f"stopped by {signal.Signals(e.sigval).name}; the training processes were asked to save "
                          f"{run_dir / 'last'} and stop", int(e.sigval)) from None


def _failure(error, run_dir: Path, nproc: int) -> BaseException:
    """An `Interrupted` when the first rank to end stopped on a signal (ranks do so only once rank 0 saved
    `last`; torchrun then ends the others), else an error naming the rank that failed first."""
    rank, failure = error.get_first_failure()
    crashes = {r: f for r, f in error.failures.items() if f.exitcode == CRASH_STATUS}
    if crashes and failure.exitcode not in STOP_STATUSES:
        # torchrun stamps a failure with the second it saw it (`get_first_failure` then picks the lowest rank
        # of that second), so a rank that crashed and rank 0 ending on the broken connection tie; the crash
        # (an uncaught exception, status 1) is the cause, the lost contact (lpdet's handled error, 2) its effect.
        rank = min(crashes, key=lambda r: (crashes[r].timestamp, r))
        failure = crashes[rank]
    if failure.exitcode in STOP_STATUSES:
        signum = failure.exitcode - 128
        return Interrupted(f"stopped by {signal.Signals(signum).name}; rank 0 saved {run_dir / 'last'}", signum)
    if failure.exitcode < 0:
        how = f"was killed by {signal.Signals(-failure.exitcode).name}"
    else:
        how = f"exited with status {failure.exitcode}"
    return LpdetError(f"training process rank {rank} {how}; its error is above; the other ranks were stopped "
                      f"(continue from the last checkpoint: lpdet train --resume {run_dir} --nproc {nproc})")
