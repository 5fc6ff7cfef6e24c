"""A DataLoader worker that dies or hangs, named: which worker, and the image it was reading.

torch reports a dead worker as "DataLoader worker (pid N) is killed by signal: ..." (or "exited
unexpectedly"), and with a `timeout` a stuck one as "DataLoader timed out after T seconds", but
not what the worker was doing. Each worker here writes the index it is reading into a slot of a
small shared array (`ReadingDataset`), so `worker_failure` can turn torch's error into one line
that names the image file, which is usually the cause (a file on a dead network mount, a FIFO, an
image that crashes a decoder).
"""

from __future__ import annotations

import multiprocessing

from torch.utils.data import Dataset, Subset, get_worker_info

from lpdet.errors import LpdetError

__all__ = ["ReadingDataset", "worker_failure", "WORKER_TIMEOUT_S"]

# No batch in this long: a worker is stuck (reading one image never takes minutes).
WORKER_TIMEOUT_S = 600.0
_TORCH_WORKER_ERRORS = ("DataLoader worker", "DataLoader timed out")


class ReadingDataset(Dataset):
    """`dataset` as the workers see it: each notes the index it is reading in its slot (-1: none)."""

    def __init__(self, dataset, workers: int):
        self.dataset = dataset
        self.slots = multiprocessing.RawArray("q", [-1] * workers)  # shared with the forked workers

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int):
        worker = get_worker_info()
        if worker is not None:
            self.slots[worker.id] = index
        item = self.dataset[index]
        if worker is not None:
            self.slots[worker.id] = -1
        return item

    def describe(self, index: int) -> str:
        dataset = self.dataset
        if isinstance(dataset, Subset):
            dataset, index = dataset.dataset, dataset.indices[index]
        return str(dataset.image_path(index)) if hasattr(dataset, "image_path") else f"item {index}"


def worker_failure(error: BaseException, dataset) -> LpdetError | None:
    """torch's error about a dead or stuck worker as a one-line `LpdetError` naming what each busy
    worker was reading; None for any other error."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if not isinstance(error, RuntimeError) or not text.startswith(_TORCH_WORKER_ERRORS):
        return None
    busy = ([f"worker {k} was reading {dataset.describe(i)}" for k, i in enumerate(dataset.slots) if i >= 0]
            if isinstance(dataset, ReadingDataset) else [])
    where = "; ".join(busy) if busy else "no worker was reading an image then"
    return LpdetError(f"data loading failed: {text.rstrip('. ')}; {where}; check that file (a dead network mount, "
                      f"a file that is not an image), or run with --workers 0 to read it in the main process")
