"""`torch_threads`: run a block with a given number of torch intra-op threads, then restore."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Use `threads` torch threads inside the block (0 or less: leave the count as it is);
    the previous count comes back on exit, whatever happens inside."""
    previous = torch.get_num_threads()
    if threads > 0 and threads != previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
