"""Deterministic detection DataLoaders with exact mid-epoch resume.

The order of an epoch is ``torch.randperm(n)`` from ``torch.Generator().manual_seed(seed *
1000003 + epoch)`` (or ``0..n-1`` without shuffling); resuming after ``k`` batches starts the
sampler ``k * batch_size`` items into that order, so the remaining batches are exactly the ones
an uninterrupted run would have seen, and the skipped items are never loaded. Augmentation is
seeded per (seed, epoch, index) by the dataset (`CocoDetection.set_epoch`), so neither the
number of workers nor the resume point changes a batch. Creating the loader does not touch the
global torch RNG.

A stop signal sent to the whole process group (`timeout`, a batch scheduler, Ctrl-C in a terminal)
reaches the workers too. A worker leaves the first SIGINT/SIGTERM to the main process, which
handles it (a checkpoint at the end of the step, then a clean exit) and then ends its workers as
usual; had the worker died of it, torch would raise "DataLoader worker ... is killed by signal" in
the main process, wherever it happened to be. A second signal ends a worker (torch's own
`terminate()` of a stuck worker too). Workers start with both signals blocked and install this
before unblocking them, so a signal sent while a worker starts is not lost on the default action.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler, get_worker_info

from lpdet.data import worker_watch
from lpdet.data.worker_watch import ReadingDataset, worker_failure

__all__ = ["collate_detection", "make_loader", "EpochSampler", "DistributedEpochSampler", "epoch_generator_seed"]

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}  # the signals `lpdet.train.interrupt` turns into a clean stop


def epoch_generator_seed(seed: int, epoch: int) -> int:
    return int(seed) * 1000003 + int(epoch)


class EpochSampler(Sampler[int]):
    """The indices of one epoch (shuffled or in order), starting `start` items in."""

    def __init__(self, n: int, *, shuffle: bool, seed: int, epoch: int, start: int = 0):
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.n, self.shuffle, self.seed, self.epoch, self.start = int(n), shuffle, seed, epoch, int(start)

    def order(self) -> list[int]:
        """The full order of the epoch (before skipping)."""
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(epoch_generator_seed(self.seed, self.epoch))
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start:])

    def __len__(self) -> int:
        return max(self.n - self.start, 0)


class DistributedEpochSampler(DistributedSampler):
    """One rank's share of an epoch for data-parallel training: torch's DistributedSampler (rank r takes
    items r, r + W, r + 2W, ... of the order) seeded so that its order is `EpochSampler`'s; with a
    per-rank batch of B / W, the ranks' k-th batches together are the single-process k-th batch of B.
    Starts `start` items into this rank's share (exact mid-epoch resume)."""

    def __init__(self, n: int, *, rank: int, world_size: int, seed: int, epoch: int, start: int = 0):
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=True,
                         seed=epoch_generator_seed(seed, 0), drop_last=True)
        self.set_epoch(epoch)  # its generator seed: self.seed + epoch = epoch_generator_seed(seed, epoch)
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)


def _leave_the_first_stop_to_the_main_process(signum: int, frame) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second one ends the worker


def _start_worker(epoch: int, worker_id: int) -> None:
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _leave_the_first_stop_to_the_main_process)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by `_Loader.__iter__` in the parent
    # Workers copy the dataset when an iterator starts; pin the loader's epoch in each copy in
    # case the same dataset object was set to another epoch in between.
    ds = get_worker_info().dataset
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)


def collate_detection(batch) -> tuple[torch.Tensor, list[dict], int]:
    """Stack the images of the non-``None`` items; return ``(images [B,3,R,R], targets, dropped)``.

    Items are ``None`` when their image could not be read (the dataset logged why). If every
    item is dropped, ``images`` is an empty ``[0, 3, 0, 0]`` tensor and ``targets`` is ``[]``.
    """
    items = [b for b in batch if b is not None]
    dropped = len(batch) - len(items)
    if not items:
        return torch.empty(0, 3, 0, 0), [], dropped
    shapes = {tuple(img.shape) for img, _ in items}
    if len(shapes) > 1:
        raise ValueError(f"cannot batch images of different sizes {sorted(shapes)}; "
                         "give the dataset a transform that resizes (eval_transforms/train_transforms)")
    images = torch.stack([img for img, _ in items])
    return images, [t for _, t in items], dropped


class _Loader(DataLoader):
    """A DataLoader whose workers start with SIGINT/SIGTERM blocked (a forked worker inherits the
    mask; `_start_worker` unblocks them once it handles them). The main process gets a signal sent
    meanwhile as soon as the workers are started."""

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            batches = super().__iter__()  # starts the workers (persistent_workers=False: every epoch)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return self._named_failures(batches)

    def _named_failures(self, batches):
        """The batches; a dead or stuck worker raises `worker_failure`'s error instead of torch's."""
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except RuntimeError as e:
                failure = worker_failure(e, self.dataset)
                if failure is None:
                    raise
                raise failure from None
            yield batch


def make_loader(dataset, batch_size: int, *, shuffle: bool, seed: int, epoch: int, workers: int,
                skip_batches: int = 0, rank: int = 0, world_size: int = 1) -> DataLoader:
    """A DataLoader over `dataset` for one epoch; `skip_batches` resumes mid-epoch exactly.

    Training (`shuffle=True`) drops the last incomplete batch; evaluation keeps it. With
    `world_size` > 1 (training only), rank `rank`'s share of each batch (`DistributedEpochSampler`):
    `batch_size` is then the per-rank batch.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)  # workers are forked per iterator and copy this
    n = len(dataset) if isinstance(dataset, Sized) else 0
    start = int(skip_batches) * int(batch_size)
    if world_size > 1:
        if not shuffle:
            raise ValueError("a sharded loader is for training (shuffle=True)")
        sampler = DistributedEpochSampler(n, rank=rank, world_size=world_size, seed=seed, epoch=epoch, start=start)
    else:
        sampler = EpochSampler(n, shuffle=shuffle, seed=seed, epoch=epoch, start=start)
    return _Loader(
        ReadingDataset(dataset, workers) if workers > 0 else dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=int(workers),
        collate_fn=collate_detection,
        drop_last=bool(shuffle),
        persistent_workers=False,
        worker_init_fn=functools.partial(_start_worker, int(epoch)) if workers > 0 else None,
        # A private generator: DataLoader draws its worker base seed from it instead of
        # consuming the global torch RNG (which would shift e.g. dropout after a resume).
        generator=torch.Generator().manual_seed(epoch_generator_seed(seed, epoch)),
        timeout=worker_watch.WORKER_TIMEOUT_S if workers > 0 else 0,
    )
