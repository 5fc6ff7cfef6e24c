"""Imported by every Python started with this folder first on PYTHONPATH (`site` imports `sitecustomize`):
the tests of `lpdet train --nproc` use it to make one rank of a real torchrun run misbehave.

`LPDET_TEST_RANK_HOOK=ACTION:RANK:STEP` (unset: nothing happens): when rank RANK starts optimizer step
STEP, ACTION happens: `raise` (an unexpected exception in that rank), `sigterm` (the rank sends
itself SIGTERM, as a scheduler pre-empting it would) or `hang` (the rank sleeps for 10 minutes).
"""

import os
import signal
import time

_spec = os.environ.get("LPDET_TEST_RANK_HOOK")
if _spec:
    _action, _rank, _step = _spec.split(":")
    if os.environ.get("RANK") == _rank:
        import lpdet.train.loop as _loop

        _real_lr_at = _loop.lr_at

        def _hooked_lr_at(step, **kwargs):
            if step == int(_step):
                if _action == "raise":
                    raise RuntimeError(f"injected failure on rank {_rank} at step {step}")
                if _action == "hang":
                    time.sleep(600)
                os.kill(os.getpid(), signal.SIGTERM)
            return _real_lr_at(step, **kwargs)

        _loop.lr_at = _hooked_lr_at
