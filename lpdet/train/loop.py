"""The training loop: SGD + momentum, warm-up + cosine LR, per-step logs, per-epoch validation (COCO
AP for detectors, top-1/top-5 for classifiers: `lpdet.train.tasks`), atomic `last`/`best`
checkpoints, exact resume; one process, or one rank of a data-parallel run (`lpdet.train.distributed`).

Reads top to bottom: set up data and model, then for each epoch, for each batch, one step.
"""

from __future__ import annotations

import itertools
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lpdet.data.loader import make_loader
from lpdet.data.worker_watch import worker_failure
from lpdet.errors import Interrupted, LpdetError
from lpdet.models.checkpoint_format import load_checkpoint, recover_interrupted_saves, save_checkpoint
from lpdet.progress import progress_bar
from lpdet.quant.qat import set_qat_step
from lpdet.serialize import save_yaml
from lpdet.train.config import TrainConfig, load_train_config
from lpdet.train.distributed import DataParallel, Ranks, errors_named_by_rank, rank_device
from lpdet.train.interrupt import StopFlag, StopRequested, stop_on_signals
from lpdet.train.model_setup import model_and_optimizer
from lpdet.train.multi_scale import resized_batch, step_resolution, trained_at
from lpdet.train.optim import seed_everything, set_lr
from lpdet.train.run_logs import open_run_logs
from lpdet.train.schedule import lr_at
from lpdet.train.tasks import TrainTask, task_for

log = logging.getLogger("lpdet.train")

MAX_SKIPPED_STEPS = 20  # consecutive updates skipped for non-finite gradients before training stops


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train a detector or classifier as `cfg` says (or continue the run in `cfg.out`); returns the best checkpoint.

    SIGINT or SIGTERM stops it at the end of the current step (or validation batch) with a `last`
    checkpoint of that step, then raises `Interrupted`; a second signal exits at once.

    Started by torchrun (`lpdet.train.distributed`), it is one rank of a data-parallel run: all ranks
    stop after the same step, and rank 0 alone writes files and shows progress."""
    ranks = Ranks.from_environment()
    with stop_on_signals("saving a checkpoint at the end of this step, then stopping") as stop, \
            errors_named_by_rank(ranks):
        run = _set_up(cfg, resume, ranks)
        progress = progress and ranks.is_main
        try:
            run.dp.agree_to_stop(stop)
            for epoch in range(run.state["epoch"], run.cfg.epochs):
                _train_epoch(run, epoch, progress, stop)
                _validate(run, epoch, progress, stop)
        except StopRequested:
            run.checkpoint("last", with_optimizer=True)
            run.dp.barrier()  # no rank exits (which ends the others under torchrun) before rank 0 saved
            stop.saved = True
            raise Interrupted(f"stopped by {_signal_name(stop)} at step {run.state['global_step']}; saved "
                              f"{run.out / 'last'}", stop.signum) from None
        except RuntimeError as e:  # torch reports a dead worker wherever we are (from its SIGCHLD handler)
            failure = worker_failure(e, run.reading)
            if failure is None:
                raise
            raise failure from None
        finally:
            run.tb.close()
        run.dp.close()
    return run.out / "best"


def _signal_name(stop: StopFlag) -> str:
    return signal.Signals(stop.signum).name


@dataclass
class _Run:
    """Everything the steps of a run share, made by `_set_up`."""

    cfg: TrainConfig
    task: TrainTask
    out: Path
    device: torch.device
    dp: DataParallel  # the ranks of a data-parallel run (or one process) and their collectives
    autocast_bf16: bool
    train_set: object  # the task's datasets (CocoDetection, ImageFolderDataset)
    val_set: object
    per_rank_batch: int  # --batch-size is the global batch; each rank steps on its share
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    model: torch.nn.Module  # the detector or classifier: saved, validated
    forward_model: torch.nn.Module  # what the steps call: the model, or DDP around it
    optimizer: torch.optim.Optimizer
    # epoch, step_in_epoch, global_step, best_ap (the best selection metric: AP, or top-1), best_epoch,
    # world_size: what a checkpoint records
    state: dict
    tb: object  # TensorBoard writer (or a stand-in)
    step_log: object  # metrics.csv (a CsvLog, or a stand-in off rank 0)
    val_log: object  # val.csv
    bad_steps: int = 0  # consecutive updates skipped for non-finite gradients
    reading: object = None  # the dataset the current loader's workers read (`lpdet.data.worker_watch`)

    def checkpoint(self, name: str, with_optimizer: bool) -> None:
        """Save `name` (called by every rank; rank 0 writes it)."""
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise LpdetError(f"weights became non-finite at step {self.state['global_step']}; kept the last good "
                             f"checkpoint in {self.out / 'last'}; lower --lr")
        self.dp.check_replicas_agree(self.model, self.state["global_step"])
        if not self.dp.ranks.is_main:
            return
        save_checkpoint(self.out / name, model=self.model, model_config=self.model.config,
                        class_names=self.train_set.class_names, category_ids=self.train_set.category_ids,
                        train_state=dict(self.state), optimizer=self.optimizer if with_optimizer else None)


# ----------------------------------------------------------------------------- set-up
def _set_up(cfg: TrainConfig, resume: bool, ranks: Ranks) -> _Run:
    """Read (or continue) the run's config, seed, load the data, build the model and optimizer, open the logs."""
    out = Path(cfg.out)
    if resume:
        cfg = load_train_config(out / "config.yaml")
        cfg.out = out
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = rank_device(_resolve_device(cfg.device), ranks)
    dp = DataParallel(ranks, device).start(cfg.dist_timeout_s)
    if ranks.is_main:
        for line in recover_interrupted_saves(out):
            log.warning("%s", line)
    dp.barrier()  # the other ranks read `last` once rank 0 tidied it
    resume_ckpt = load_checkpoint(out / "last", with_optimizer=True) if resume else None
    if not resume and ((out / "last").exists() or (out / "best").exists()):
        raise LpdetError(f"{out} already holds a run; continue it with --resume {out} or pick a new --out")
    if resume_ckpt is not None:
        dp.check_world_size(resume_ckpt.train_state.get("world_size", 1), out)
    per_rank_batch = dp.per_rank_batch(cfg.batch_size)
    autocast_bf16 = _use_bf16(cfg.precision, device, cfg.is_qat)
    if autocast_bf16:
        log.info("training in bf16 mixed precision (autocast; weights, loss and optimizer in fp32)")
    seed_everything(cfg.seed)

    task = task_for(cfg.model)
    train_set, val_set = task.datasets(cfg)
    steps_per_epoch = len(train_set) // cfg.batch_size
    if steps_per_epoch == 0:
        raise LpdetError(f"the train split has {len(train_set)} images, fewer than --batch-size "
                         f"{cfg.batch_size}; lower --batch-size")
    if cfg.limit_train_batches:
        steps_per_epoch = min(steps_per_epoch, cfg.limit_train_batches)
    total_steps = steps_per_epoch * cfg.epochs
    # A warm-up longer than a fifth of the run would leave too little of it at the peak rate.
    warmup_steps = min(cfg.warmup_steps, total_steps // 5)
    if warmup_steps < cfg.warmup_steps:
        log.info("warm-up shortened to %d steps (a fifth of the %d-step run)", warmup_steps, total_steps)
    if ranks.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, out / "config.yaml")

    model, optimizer, state = model_and_optimizer(cfg, train_set.num_classes, device, resume_ckpt)
    state["world_size"] = ranks.world_size
    tb, step_log, val_log = open_run_logs(out, state, ranks.is_main, task)
    return _Run(cfg=cfg, task=task, out=out, device=device, dp=dp, autocast_bf16=autocast_bf16, train_set=train_set,
                val_set=val_set, per_rank_batch=per_rank_batch, steps_per_epoch=steps_per_epoch,
                total_steps=total_steps, warmup_steps=warmup_steps, model=model,
                forward_model=dp.wrap(model, cfg.sync_bn), optimizer=optimizer, state=state, tb=tb,
                step_log=step_log, val_log=val_log)


# ----------------------------------------------------------------------------- steps
def _train_epoch(run: _Run, epoch: int, progress: bool, stop: StopFlag) -> None:
    cfg, state = run.cfg, run.state
    run.model.train()
    loader = make_loader(run.train_set, run.per_rank_batch, shuffle=True, seed=cfg.seed, epoch=epoch,
                         workers=cfg.workers, skip_batches=state["step_in_epoch"], rank=run.dp.ranks.rank,
                         world_size=run.dp.ranks.world_size)
    run.reading = loader.dataset
    bar = progress_bar(loader, enabled=progress, total=run.steps_per_epoch, initial=state["step_in_epoch"],
                       desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
    tick = time.perf_counter()
    # islice: with --limit-train-batches the epoch ends early; the next epoch draws a fresh shuffle
    for images, targets, dropped in itertools.islice(bar, run.steps_per_epoch - state["step_in_epoch"]):
        row = {"step": state["global_step"], "epoch": epoch, "skipped_images": dropped}
        if run.dp.every_rank(bool(targets)):
            lr, losses = _step(run, epoch, images, targets)
            now = time.perf_counter()
            row.update(lr=lr, images_per_s=len(targets) * run.dp.ranks.world_size / max(now - tick, 1e-9),
                       **{key: losses[key] for key in run.task.loss_fields})
            tick = now
            for key in (*run.task.loss_fields, "lr", "images_per_s"):
                run.tb.add_scalar(f"train/{key}", row[key], state["global_step"])
            bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.4f}", img_s=f"{row['images_per_s']:.1f}",
                            refresh=False)
        else:
            # Still a step: the loader resumes `step_in_epoch` batches in, so every batch must count.
            log.warning("step %d: none of the batch's %d images could be read%s; no update", state["global_step"],
                        dropped, " (on this rank's share, or another rank's)" if run.dp.ranks.active else "")
        run.step_log.write(row)
        state["global_step"] += 1
        state["step_in_epoch"] += 1
        if cfg.checkpoint_every and state["global_step"] % cfg.checkpoint_every == 0:
            run.checkpoint("last", with_optimizer=True)
        run.dp.agree_to_stop(stop)
    bar.close()


def _step(run: _Run, epoch: int, images, targets) -> tuple[float, dict[str, float]]:
    """One optimizer step on a batch (this rank's share of it); returns its learning rate and the
    global batch's losses."""
    cfg, model, optimizer, step = run.cfg, run.model, run.optimizer, run.state["global_step"]
    lr = lr_at(step, base_lr=cfg.lr, total_steps=run.total_steps, warmup_steps=run.warmup_steps,
               restart_steps=cfg.restart_epochs * run.steps_per_epoch, min_lr_ratio=cfg.min_lr_ratio)
    set_lr(optimizer, lr)
    if cfg.is_qat:
        set_qat_step(model, step)
    resolution = step_resolution(cfg.multi_scale, cfg.model.resolution, cfg.seed, step)
    images = resized_batch(images.to(run.device, non_blocking=True), resolution)
    images = images.contiguous(memory_format=torch.channels_last)
    with trained_at(model, resolution):
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.autocast_bf16):
            outputs = run.forward_model(images)
        # In fp32; normalised by the global batch's count (positive anchors, images) of every rank's share.
        losses = run.task.loss(outputs, targets, model, cfg, run.dp.count_everywhere)
    logged = run.dp.global_losses(losses)
    if not math.isfinite(logged["loss"]):
        raise LpdetError(
            f"loss became {logged['loss']} at step {step} (epoch {epoch + 1}); training "
            f"stopped. The last good checkpoint is {run.out / 'last'}; lower --lr or check the data")
    optimizer.zero_grad(set_to_none=True)
    (losses["loss"] * run.dp.loss_scale).backward()
    if _gradients_finite(model):
        optimizer.step()
        run.bad_steps = 0
    else:
        # A finite loss with a non-finite gradient: seen (rarely) from oneDNN's bf16 depthwise
        # backward on 1x1 maps. Skip the update, as mixed-precision training does (GradScaler).
        run.bad_steps += 1
        log.warning("step %d: non-finite gradient with a finite loss; update skipped", step)
        if run.bad_steps >= MAX_SKIPPED_STEPS:
            raise LpdetError(
                f"{run.bad_steps} steps in a row had non-finite gradients (step {step}); "
                f"training stopped. The last good checkpoint is {run.out / 'last'}; lower --lr"
                + (" or use --precision fp32" if run.autocast_bf16 else ""))
    return lr, logged


# ----------------------------------------------------------------------------- validation
def _validate(run: _Run, epoch: int, progress: bool, stop: StopFlag) -> None:
    """The task's metric on val after an epoch (COCO AP, top-1); logs it, then writes `best` (if it
    improved) and `last`.

    With several ranks, rank 0 validates (the single-process metric) while the others wait for it."""
    state = run.state
    run.model.eval()
    metric = -1.0
    if run.dp.ranks.is_main:
        try:
            metric = _evaluate_and_log(run, epoch, progress, stop)
        except StopRequested:
            pass  # the ranks agree to stop just below: a stop during validation resumes before it
    run.dp.agree_to_stop(stop)
    metric = run.dp.share_from_main(metric)
    state["epoch"] = epoch + 1
    state["step_in_epoch"] = 0
    if metric > state["best_ap"]:
        state["best_ap"], state["best_epoch"] = metric, epoch + 1
        run.checkpoint("best", with_optimizer=False)
    run.checkpoint("last", with_optimizer=True)


def _evaluate_and_log(run: _Run, epoch: int, progress: bool, stop: StopFlag) -> float:
    """The task's validation (stopping between batches: the epoch's steps are all saved by then), logged;
    returns its selection metric."""
    cfg, state = run.cfg, run.state
    metrics, seconds = run.task.validate(run.model, run.val_set, cfg, stop.check, progress,
                                         f"val {epoch + 1}/{cfg.epochs}")
    run.val_log.write({"epoch": epoch + 1, "step": state["global_step"], **metrics, "seconds": round(seconds, 1)})
    for key, value in metrics.items():
        run.tb.add_scalar(f"val/{key}", value, state["global_step"])
    run.tb.flush()
    log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs,
             " ".join(f"{key} {metrics[key]:.4f}" for key in run.task.val_fields if key in metrics))
    return metrics[run.task.selection_metric]


def _resolve_device(name: str) -> torch.device:
    """`--device` as a torch device; a clear error when CUDA is asked for but absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LpdetError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        index = torch.device(name).index or 0
        if index >= torch.cuda.device_count():
            raise LpdetError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return torch.device(name)


def _gradients_finite(model: torch.nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return bool(torch.stack(torch._foreach_norm(grads)).isfinite().all()) if grads else True


def _use_bf16(precision: str, device: torch.device, qat: bool) -> bool:
    """Whether to autocast the forward pass to bf16 (`--precision`; see `TrainConfig.precision`)."""
    if precision == "fp32" or qat:  # fake quantization simulates the int8 grid in fp32
        return False
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:  # oneDNN runs bf16 convolutions natively only with AVX512-BF16 or AMX; emulated it is slower
        try:
            supported = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a private op: absent from some builds
            supported = False
    if precision == "bf16" and not supported:
        raise LpdetError(f"--precision bf16: this {device.type.upper()} has no native bf16 support; "
                         f"use --precision fp32")
    return supported
