"""Progress bars that suit both a terminal and a log file.

In a terminal the bar redraws smoothly. When stderr is a file or a pipe (CI, `nohup`, a
job scheduler) every redraw would be a new line, so the bar updates at most every 30 s.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs) -> tqdm:
    """`tqdm(iterable, **kwargs)`, disabled unless `enabled`, throttled when not on a terminal."""
    interactive = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.5 if interactive else LOG_INTERVAL_S)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not enabled, **kwargs)
