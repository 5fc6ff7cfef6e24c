"""The optimizer and seeding every training of lpdet shares: the training loop (`lpdet.train.loop`)
and the architecture search's super-network training (`lpdet.design.search.sandwich`)."""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["param_groups", "sgd", "set_lr", "seed_everything"]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on BatchNorm parameters and biases (standard practice for MobileNets)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def sgd(model: torch.nn.Module, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with momentum over `param_groups`; the rate is set per step (`set_lr`, `lpdet.train.schedule`)."""
    return torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
