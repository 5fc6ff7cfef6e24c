"""Data-parallel training over several processes: torchrun + DistributedDataParallel, as torchvision's
detection references do it (one process per GPU; or several CPU processes with gloo).

torchrun starts the processes and tells each its rank (`Ranks.from_environment`); `DataParallel`
holds the process group (nccl on GPUs, gloo on CPUs, with a timeout) and the few collectives the
loop needs. The run stays the single-process run, only spread out:

* `--batch-size` is the global batch: each rank takes `batch_size / world_size` images per step,
  and rank r's k-th batch is its share of the single-process k-th batch (`DistributedEpochSampler`
  in `lpdet.data.loader`: torch's DistributedSampler with the single-process order);
* the loss divides by the count of the whole global batch (`count_everywhere`: a detector's positive
  anchors, a classifier's images), so DDP's gradient average is the single-process gradient; BatchNorm statistics stay per rank unless
  `--sync-bn` (torch's SyncBatchNorm; CUDA only);
* a stop signal seen by any rank stops every rank after the same step (`agree_to_stop`);
* rank 0 alone writes files; every rank draws the same global RNG stream (augmentation is seeded
  per image, not from it), so rank 0's saved RNG state resumes every rank exactly.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from lpdet.errors import LpdetError
from lpdet.train.interrupt import StopFlag, StopRequested

log = logging.getLogger("lpdet.train")

LINGER_S = 2.0  # a rank that lost its peers waits this long before exiting (torchrun polls every 0.1 s)
DEFAULT_TIMEOUT_S = 1800  # a collective waiting longer than this fails the run (a hung rank, a slow validation)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the rank on this machine: which GPU this process drives

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def from_environment() -> Ranks:
        """This process's place as torchrun's RANK, WORLD_SIZE, LOCAL_RANK say (one process without them)."""
        env = os.environ
        if "WORLD_SIZE" not in env:
            return Ranks()
        try:
            return Ranks(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
        except (KeyError, ValueError):
            raise LpdetError("WORLD_SIZE is set but RANK is missing or not a number; start distributed training "
                             "with torchrun or lpdet train --nproc N") from None


class DataParallel:
    """The process group of a run and its collectives; every method is a no-op for a single process."""

    def __init__(self, ranks: Ranks, device: torch.device):
        self.ranks, self.device = ranks, device

    def start(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> DataParallel:
        """Join the process group (torchrun's MASTER_ADDR/MASTER_PORT): nccl on CUDA, else gloo."""
        if self.ranks.active and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, rank=self.ranks.rank, world_size=self.ranks.world_size,
                                    timeout=timedelta(seconds=timeout_s))
            log.info("rank %d of %d: process group up (%s, timeout %.0f s)", self.ranks.rank, self.ranks.world_size,
                     backend, timeout_s)
        return self

    def close(self) -> None:
        if self.ranks.active and dist.is_initialized():
            dist.destroy_process_group()

    # ------------------------------------------------------------------ set-up
    def per_rank_batch(self, batch_size: int) -> int:
        """This rank's share of the global `--batch-size`."""
        world = self.ranks.world_size
        if batch_size % world:
            raise LpdetError(f"--batch-size {batch_size} is the global batch and must split evenly over the {world} "
                             f"processes; pass a multiple of {world}")
        if batch_size // world < 2:
            raise LpdetError(f"--batch-size {batch_size} leaves {batch_size // world} image per process; BatchNorm "
                             f"needs at least 2: pass --batch-size {2 * world} or more")
        return batch_size // world

    def check_world_size(self, saved: int, run_dir) -> None:
        """Refuse to resume on another number of processes (its data order and BN statistics would differ)."""
        if saved != self.ranks.world_size:
            how = "lpdet train --resume RUN" if saved == 1 else f"lpdet train --resume RUN --nproc {saved} (or torchrun)"
            raise LpdetError(f"--resume {run_dir}: the run was trained on {saved} process(es), this start has "
                             f"{self.ranks.world_size}; resume it on {saved}: {how}")

    def wrap(self, model: nn.Module, sync_bn: bool) -> nn.Module:
        """The module the training steps call: `model` itself, or DDP around it (after SyncBatchNorm
        conversion with `sync_bn`; the conversion happens in place, so `model` stays the one to save)."""
        if sync_bn and self.ranks.active:
            if self.device.type != "cuda":
                raise LpdetError("--sync-bn: torch's SyncBatchNorm runs on CUDA devices only; drop --sync-bn "
                                 "on CPU (BatchNorm statistics then stay per process)")
            converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            assert converted is model  # the root is a Detector, never itself a BatchNorm
        if not self.ranks.active:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        # A [C, K, 1, 1] weight is both contiguous and channels_last, with other strides: DDP compares
        # the strides literally and warns of a slower copy for the QAT convs' gradients. Harmless.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    # ------------------------------------------------------------------ steps
    def count_everywhere(self, count: torch.Tensor) -> torch.Tensor:
        """The loss normaliser of the global batch: `count` (positive anchors, images) summed over every
        rank's share."""
        if not self.ranks.active:
            return count
        total = count.detach().clone()
        dist.all_reduce(total)
        return total

    @property
    def loss_scale(self) -> int:
        """DDP averages the ranks' gradients; losses divided by the global count must be summed."""
        return self.ranks.world_size

    def global_losses(self, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        """The loss values of the whole global batch (what one process would have logged)."""
        names = sorted(losses)
        values = torch.stack([losses[k].detach().float() for k in names])
        if self.ranks.active:
            dist.all_reduce(values)
        return dict(zip(names, values.tolist()))

    def agree_to_stop(self, stop: StopFlag) -> None:
        """`stop.check()` for all ranks at once: raises `StopRequested` everywhere if any rank got a signal."""
        if not self.ranks.active:
            stop.check()
            return
        flag = torch.tensor([stop.signum or 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if int(flag.item()):
            stop.signum = stop.signum or int(flag.item())
            raise StopRequested

    def barrier(self) -> None:
        if self.ranks.active:
            dist.all_reduce(torch.zeros(1, device=self.device))

    def check_replicas_agree(self, model: nn.Module, step: int) -> None:
        """Every rank must hold the same weights; a divergence (a bug, or a rank skipping an update) stops the run."""
        if not self.ranks.active:
            return
        flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
        summary = torch.stack([flat.sum(), flat.square().sum()])
        both = torch.cat([summary, -summary])
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        if not torch.equal(both[:2], -both[2:]):
            raise LpdetError(f"rank {self.ranks.rank}: the processes' weights differ after step {step}; this is a "
                             f"bug in data-parallel training; please report it (resume from the last checkpoint)")

    def share_from_main(self, value: float) -> float:
        """Rank 0's `value` on every rank (e.g. the AP that only rank 0 computed)."""
        if not self.ranks.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def every_rank(self, ok: bool) -> bool:
        """Whether `ok` holds on every rank (a step whose images all failed to load on one rank is skipped by all)."""
        if not self.ranks.active:
            return ok
        flag = torch.tensor([int(ok)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """The device of this rank: GPU `LOCAL_RANK` when training on CUDA with several processes."""
    if not ranks.active or device.type != "cuda":
        return device
    if device.index not in (None, 0):
        log.warning("--device %s: with several processes each drives GPU LOCAL_RANK; ignoring the index", device)
    if ranks.local_rank >= torch.cuda.device_count():
        raise LpdetError(f"rank {ranks.rank}: LOCAL_RANK {ranks.local_rank} but only {torch.cuda.device_count()} GPU(s) "
                         f"here; start at most that many processes per machine (--nproc / --nproc_per_node)")
    device = torch.device("cuda", ranks.local_rank)
    torch.cuda.set_device(device)
    return device


@contextmanager
def errors_named_by_rank(ranks: Ranks):
    """Prefix a failing rank's error with its rank; turn a lost peer into an error, not a traceback."""
    if not ranks.active:
        yield
        return
    if not ranks.is_main:  # one progress report per run: rank 0's
        logging.getLogger("lpdet").setLevel(logging.WARNING)
    try:
        yield
    except LpdetError as e:
        raise LpdetError(f"rank {ranks.rank}: {e}") from None
    except (dist.DistError, RuntimeError) as e:
        if not isinstance(e, dist.DistError) and not _from_backend(e):
            raise  # a bug: keep its traceback
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        # Linger: torchrun names the rank whose exit it sees first, which should be the one that failed.
        time.sleep(LINGER_S)
        raise LpdetError(f"rank {ranks.rank}: lost contact with the other processes ({reason}); another rank "
                         f"failed, hung or was stopped: its error is above") from None


def _from_backend(error: RuntimeError) -> bool:
    """A collective's failure that torch reports as a plain RuntimeError (gloo: "Connection closed by peer";
    a timeout inside DDP's buffer broadcast: "Application timeout caused pair closure")."""
    return any(word in str(error) for word in ("gloo", "NCCL", "Connection closed by peer", "Timed out",
                                               "Application timeout"))
