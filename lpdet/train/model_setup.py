"""The model a training run steps on: built (new run: ImageNet backbone weights, `--init` weights,
then QAT preparation), moved to its device, with its SGD optimizer and the run's training state
(continued from a `last` checkpoint on --resume)."""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from lpdet.errors import LpdetError
from lpdet.models.checkpoint_format import load_checkpoint, restore_optimizer
from lpdet.models.config import is_qat
from lpdet.models.registry import build_detector, load_backbone_weights, transfer_weights
from lpdet.quant.qat import prepare_qat
from lpdet.train.config import TrainConfig
from lpdet.train.optim import sgd

log = logging.getLogger("lpdet.train")


def model_and_optimizer(cfg: TrainConfig, num_classes: int, device: torch.device, resume_ckpt):
    """The model on `device`, its SGD optimizer and the training state (continued from `resume_ckpt`)."""
    model = build_model(cfg, num_classes, resume_ckpt is not None)
    model = model.to(device=device, memory_format=torch.channels_last)  # measurably faster for these convs on CPU
    optimizer = sgd(model, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                    depthwise_weight_decay=cfg.depthwise_weight_decay)
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_ap": -1.0, "best_epoch": -1}
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt.model_state)
        restore_optimizer(optimizer, resume_ckpt)
        state.update({k: resume_ckpt.train_state[k] for k in state})
        log.info("resuming %s at epoch %d, step %d", cfg.out, state["epoch"], state["global_step"])
    return model, optimizer, state


def build_model(cfg: TrainConfig, num_classes: int, resume: bool):
    """The model to train (a detector or classifier): built, then (a new run) ImageNet backbone weights
    and --init weights loaded, then prepared for QAT when asked (after the float weights: QAT starts from them)."""
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
