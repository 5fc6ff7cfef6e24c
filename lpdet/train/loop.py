"""The training loop: SGD + momentum, warm-up + cosine LR, per-step logs, per-epoch validation (COCO
AP for detectors, top-1/top-5 for classifiers: `lpdet.train.tasks`), atomic `last`/`best`
checkpoints, exact resume.

Reads top to bottom: set up data and model, then for each epoch, for each batch, one step.
"""

from __future__ import annotations

import itertools
import logging
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lpdet.data.loader import make_loader
from lpdet.data.worker_watch import worker_failure
from lpdet.errors import Interrupted, LpdetError
from lpdet.models.checkpoint_format import (load_checkpoint, recover_interrupted_saves, restore_optimizer,
                                            save_checkpoint)
from lpdet.models.config import is_qat
from lpdet.models.registry import build_detector, load_backbone_weights, transfer_weights
from lpdet.progress import progress_bar
from lpdet.quant.qat import prepare_qat, set_qat_step
from lpdet.serialize import save_yaml
from lpdet.train.config import TrainConfig, load_train_config
from lpdet.train.csv_log import CsvLog, trim_csv
from lpdet.train.interrupt import StopFlag, StopRequested, stop_on_signals
from lpdet.train.optim import seed_everything, set_lr, sgd
from lpdet.train.schedule import lr_at
from lpdet.train.tasks import TrainTask, task_for

log = logging.getLogger("lpdet.train")

MAX_SKIPPED_STEPS = 20  # consecutive updates skipped for non-finite gradients before training stops


def step_fields(task: TrainTask) -> list[str]:
    """The columns of metrics.csv."""
    return ["step", "epoch", "lr", *task.loss_fields, "images_per_s", "skipped_images"]


def val_fields(task: TrainTask) -> list[str]:
    """The columns of val.csv."""
    return ["epoch", "step", *task.val_fields, "seconds"]



def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train a detector or classifier as `cfg` says (or continue the run in `cfg.out`); returns the best checkpoint.

    SIGINT or SIGTERM stops it at the end of the current step (or validation batch) with a `last`
    checkpoint of that step, then raises `Interrupted`; a second signal exits at once."""
    with stop_on_signals("saving a checkpoint at the end of this step, then stopping") as stop:
        run = _set_up(cfg, resume)
        try:
            stop.check()
            for epoch in range(run.state["epoch"], run.cfg.epochs):
                _train_epoch(run, epoch, progress, stop)
                _validate(run, epoch, progress, stop)
        except StopRequested:
            run.checkpoint("last", with_optimizer=True)
            raise Interrupted(f"stopped by {_signal_name(stop)} at step {run.state['global_step']}; saved "
                              f"{run.out / 'last'}", stop.signum) from None
        except RuntimeError as e:  # torch reports a dead worker wherever we are (from its SIGCHLD handler)
            failure = worker_failure(e, run.reading)
            if failure is None:
                raise
            raise failure from None
        finally:
            run.tb.close()
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
    autocast_bf16: bool
    train_set: object  # the task's datasets (CocoDetection, ImageFolderDataset)
    val_set: object
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    # epoch, step_in_epoch, global_step, best_ap (the best selection metric: AP, or top-1), best_epoch:
    # what a checkpoint records
    state: dict
    tb: object  # TensorBoard writer (or a stand-in)
    step_log: CsvLog
    val_log: CsvLog
    bad_steps: int = 0  # consecutive updates skipped for non-finite gradients
    reading: object = None  # the dataset the current loader's workers read (`lpdet.data.worker_watch`)

    def checkpoint(self, name: str, with_optimizer: bool) -> None:
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise LpdetError(f"weights became non-finite at step {self.state['global_step']}; kept the last good "
                             f"checkpoint in {self.out / 'last'}; lower --lr")
        save_checkpoint(self.out / name, model=self.model, model_config=self.model.config,
                        class_names=self.train_set.class_names, category_ids=self.train_set.category_ids,
                        train_state=dict(self.state), optimizer=self.optimizer if with_optimizer else None)


# ----------------------------------------------------------------------------- set-up
def _set_up(cfg: TrainConfig, resume: bool) -> _Run:
    """Read (or continue) the run's config, seed, load the data, build the model and optimizer, open the logs."""
    out = Path(cfg.out)
    resume_ckpt = None
    for line in recover_interrupted_saves(out):
        log.warning("%s", line)
    if resume:
        cfg = load_train_config(out / "config.yaml")
        cfg.out = out
        resume_ckpt = load_checkpoint(out / "last", with_optimizer=True)
    elif (out / "last").exists() or (out / "best").exists():
        raise LpdetError(f"{out} already holds a run; continue it with --resume {out} or pick a new --out")
    cfg.validate()

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _resolve_device(cfg.device)
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
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")

    model = _build_model(cfg, train_set.num_classes, resume)
    model = model.to(device=device, memory_format=torch.channels_last)  # measurably faster for these convs on CPU
    optimizer = sgd(model, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                    depthwise_weight_decay=cfg.depthwise_weight_decay)
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_ap": -1.0, "best_epoch": -1}
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt.model_state)
        restore_optimizer(optimizer, resume_ckpt)
        state.update({k: resume_ckpt.train_state[k] for k in state})
        log.info("resuming %s at epoch %d, step %d", out, state["epoch"], state["global_step"])
    trim_csv(out / "metrics.csv", "step", last_kept=state["global_step"] - 1)
    trim_csv(out / "val.csv", "epoch", last_kept=state["epoch"])
    return _Run(cfg=cfg, task=task, out=out, device=device, autocast_bf16=autocast_bf16, train_set=train_set, val_set=val_set,
                steps_per_epoch=steps_per_epoch, total_steps=total_steps, warmup_steps=warmup_steps, model=model,
                optimizer=optimizer, state=state, tb=_tensorboard(out / "tb", purge_step=state["global_step"]),
                step_log=CsvLog(out / "metrics.csv", step_fields(task)),
                val_log=CsvLog(out / "val.csv", val_fields(task)))


def _build_model(cfg: TrainConfig, num_classes: int, resume: bool):
    """The detector to train: built, then (a new run) ImageNet backbone weights and --init weights
    loaded, then prepared for QAT when asked (after the float weights: QAT starts from them)."""
    model = build_detector(replace(cfg.model, num_classes=num_classes))
    if cfg.backbone_weights and not resume:
        loaded, skipped = load_backbone_weights(model, cfg.backbone_weights)
        log.info("backbone weights: loaded %d tensors from %s (%d skipped)", loaded, cfg.backbone_weights, skipped)
    if cfg.init and not resume:
        _load_init(model, cfg)
    if cfg.is_qat and not is_qat(model.config):
        prepare_qat(model, cfg.qat)
    return model


def _load_init(model, cfg: TrainConfig) -> None:
    source = load_checkpoint(cfg.init)
    arch = cfg.model.arch
    if source.model_config.arch != arch:
        raise LpdetError(f"--init {cfg.init}: it is a {source.model_config.arch} checkpoint, not {arch}; "
                         f"pass --arch {source.model_config.arch} or a checkpoint of {arch}")
    if is_qat(source.model_config) and not cfg.is_qat:
        raise LpdetError(f"--init {cfg.init}: it is a quantization-aware (QAT) checkpoint; add --qat to "
                         f"continue it, or --init from a float checkpoint")
    if is_qat(source.model_config):
        prepare_qat(model, cfg.qat)  # the source's fake-quant state maps onto a prepared model
    copied, skipped = transfer_weights(model, source.model_state)
    log.info("--init %s: copied %d tensors, %d left at their initial values (shape or name differ)",
             source.path, copied, skipped)
    if copied == 0:
        raise LpdetError(f"--init {cfg.init}: no tensor fits {arch} (width {cfg.model.width}); "
                         f"use a checkpoint of the same architecture")


# ----------------------------------------------------------------------------- steps
def _train_epoch(run: _Run, epoch: int, progress: bool, stop: StopFlag) -> None:
    cfg, state = run.cfg, run.state
    run.model.train()
    loader = make_loader(run.train_set, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch,
                         workers=cfg.workers, skip_batches=state["step_in_epoch"])
    run.reading = loader.dataset
    bar = progress_bar(loader, enabled=progress, total=run.steps_per_epoch, initial=state["step_in_epoch"],
                       desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
    tick = time.perf_counter()
    # islice: with --limit-train-batches the epoch ends early; the next epoch draws a fresh shuffle
    for images, targets, dropped in itertools.islice(bar, run.steps_per_epoch - state["step_in_epoch"]):
        row = {"step": state["global_step"], "epoch": epoch, "skipped_images": dropped}
        if targets:
            lr, losses = _step(run, epoch, images, targets)
            now = time.perf_counter()
            row.update(lr=lr, images_per_s=len(targets) / max(now - tick, 1e-9),
                       **{key: losses[key].item() for key in run.task.loss_fields})
            tick = now
            for key in (*run.task.loss_fields, "lr", "images_per_s"):
                run.tb.add_scalar(f"train/{key}", row[key], state["global_step"])
            bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.4f}", img_s=f"{row['images_per_s']:.1f}",
                            refresh=False)
        else:
            # Still a step: the loader resumes `step_in_epoch` batches in, so every batch must count.
            log.warning("step %d: none of the batch's %d images could be read; no update", state["global_step"],
                        dropped)
        run.step_log.write(row)
        state["global_step"] += 1
        state["step_in_epoch"] += 1
        if cfg.checkpoint_every and state["global_step"] % cfg.checkpoint_every == 0:
            run.checkpoint("last", with_optimizer=True)
        stop.check()
    bar.close()


def _step(run: _Run, epoch: int, images, targets) -> tuple[float, dict]:
    """One optimizer step on a batch; returns its learning rate and losses."""
    cfg, model, optimizer, step = run.cfg, run.model, run.optimizer, run.state["global_step"]
    lr = lr_at(step, base_lr=cfg.lr, total_steps=run.total_steps, warmup_steps=run.warmup_steps,
               restart_steps=cfg.restart_epochs * run.steps_per_epoch, min_lr_ratio=cfg.min_lr_ratio)
    set_lr(optimizer, lr)
    if cfg.is_qat:
        set_qat_step(model, step)
    images = images.to(run.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.autocast_bf16):
        outputs = model(images)
    losses = run.task.loss(outputs, targets, model, cfg)  # in fp32
    loss = losses["loss"]
    if not torch.isfinite(loss):
        raise LpdetError(
            f"loss became {loss.item()} at step {step} (epoch {epoch + 1}); training "
            f"stopped. The last good checkpoint is {run.out / 'last'}; lower --lr or check the data")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
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
    return lr, losses


# ----------------------------------------------------------------------------- validation
def _validate(run: _Run, epoch: int, progress: bool, stop: StopFlag) -> None:
    """The task's metric on val after an epoch (COCO AP, top-1); logs it, then writes `best` (if it
    improved) and `last`."""
    cfg, state = run.cfg, run.state
    run.model.eval()
    # A stop during validation resumes before it: the epoch's steps are all saved.
    metrics, seconds = run.task.validate(run.model, run.val_set, cfg, stop.check, progress,
                                         f"val {epoch + 1}/{cfg.epochs}")
    ap = metrics[run.task.selection_metric]
    run.val_log.write({"epoch": epoch + 1, "step": state["global_step"], **metrics, "seconds": round(seconds, 1)})
    for key, value in metrics.items():
        run.tb.add_scalar(f"val/{key}", value, state["global_step"])
    run.tb.flush()
    log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs,
             " ".join(f"{key} {metrics[key]:.4f}" for key in run.task.val_fields if key in metrics))
    state["epoch"] = epoch + 1
    state["step_in_epoch"] = 0
    if ap > state["best_ap"]:
        state["best_ap"], state["best_epoch"] = ap, epoch + 1
        run.checkpoint("best", with_optimizer=False)
    run.checkpoint("last", with_optimizer=True)


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


def _tensorboard(log_dir: Path, purge_step: int):
    try:  # imported here: a broken tensorboard install must not stop training
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but keep training if it is broken
        log.warning("tensorboard is not importable; TensorBoard scalars are off")
        return _NoTensorBoard()
    return SummaryWriter(str(log_dir), purge_step=purge_step or None)


class _NoTensorBoard:
    def add_scalar(self, *args, **kwargs): ...
    def flush(self): ...
    def close(self): ...
