"""SIGINT/SIGTERM during training: finish the current step, save, then stop; a second signal stops at once.

A scheduler pre-empting a job sends SIGTERM (and kills it a grace period later); Ctrl-C sends
SIGINT. Either one only sets a flag here: the loop looks at it between steps (and between
validation batches), where the weights, optimizer and step counters agree, so the checkpoint it
then writes resumes exactly. Raising from the handler instead could stop inside
`optimizer.step()` with half the parameters updated.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(Exception):
    """Raised by `StopFlag.check` at a safe point once a stop signal arrived."""


class StopFlag:
    """The first stop signal received (None until one arrives)."""

    def __init__(self, what_happens: str):
        self.signum: int | None = None
        self.what_happens = what_happens  # told to the user when the first signal arrives
        # Set once the stop's checkpoint is saved: a later signal (torchrun ending the ranks left
        # after the first one exited) then ends the process without a word.
        self.saved = False

    def check(self) -> None:
        """Call where stopping is safe: raises `StopRequested` once a stop signal arrived."""
        if self.signum is not None:
            raise StopRequested

    def handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            if not self.saved:
                # os.write, not print: a handler can run in the middle of a print to the same stream.
                os.write(2, f"\n{signal.Signals(signum).name} again: exiting at once, without a checkpoint\n".encode())
            os._exit(128 + signum)
        self.signum = signum
        os.write(2, f"\n{signal.Signals(signum).name} received: {self.what_happens} "
                    f"(send it again to exit at once)\n".encode())


@contextmanager
def stop_on_signals(what_happens: str):
    """Route SIGINT and SIGTERM to a `StopFlag` while the block runs; restore the old handlers after.

    Only the main thread can install signal handlers; elsewhere the flag never rises."""
    flag = StopFlag(what_happens)
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.signal(s, flag.handle) for s in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
