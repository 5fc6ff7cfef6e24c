"""A run's log files: TensorBoard scalars (`RUN/tb`), `metrics.csv` and `val.csv`; only rank 0 of a
data-parallel run writes them (the other ranks get stand-ins)."""

from __future__ import annotations

import logging
from pathlib import Path

from lpdet.train.csv_log import CsvLog, trim_csv

log = logging.getLogger("lpdet.train")



def step_fields(task) -> list[str]:
    """The columns of metrics.csv for a `lpdet.train.tasks.TrainTask`."""
    return ["step", "epoch", "lr", *task.loss_fields, "images_per_s", "skipped_images"]


def val_fields(task) -> list[str]:
    """The columns of val.csv."""
    return ["epoch", "step", *task.val_fields, "seconds"]


def open_run_logs(out: Path, state: dict, is_main: bool, task):
    """(TensorBoard writer, metrics.csv, val.csv) with `task`'s columns, trimmed to the resumed step;
    stand-ins off rank 0."""
    if not is_main:
        return _NoTensorBoard(), _NoLog(), _NoLog()
    trim_csv(out / "metrics.csv", "step", last_kept=state["global_step"] - 1)
    trim_csv(out / "val.csv", "epoch", last_kept=state["epoch"])
    return (_tensorboard(out / "tb", purge_step=state["global_step"]), CsvLog(out / "metrics.csv", step_fields(task)),
            CsvLog(out / "val.csv", val_fields(task)))


def _tensorboard(log_dir: Path, purge_step: int):
    try:  # imported here: a broken tensorboard install must not stop training
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but keep training if it is broken
        log.warning("tensorboard is not importable; TensorBoard scalars are off")
        return _NoTensorBoard()
    return SummaryWriter(str(log_dir), purge_step=purge_step or None)


class _NoLog:
    def write(self, row: dict) -> None: ...


class _NoTensorBoard:
    def add_scalar(self, *args, **kwargs): ...
    def flush(self): ...
    def close(self): ...
