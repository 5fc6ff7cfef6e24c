"""The optimizer and seeding every training of lpdet shares: the training loop (`lpdet.train.loop`)
and the architecture search's super-network training (`lpdet.design.search.sandwich`)."""

from __future__ import annotations

import random

import numpy as np
import torch

from lpdet.models.layers import is_depthwise

__all__ = ["param_groups", "sgd", "set_lr", "seed_everything"]


def param_groups(model: torch.nn.Module, weight_decay: float,
                 depthwise_weight_decay: float | None = None) -> list[dict]:
    """No weight decay on BatchNorm parameters and biases (standard practice for MobileNets); the
    depthwise conv weights in their own group, decayed by `depthwise_weight_decay` (None: `weight_decay`,
    in the same group, so runs saved before the depthwise group existed still resume)."""
    depthwise_ids = {id(m.weight) for m in model.modules() if is_depthwise(m)}
    decay, depthwise, no_decay = [], [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else depthwise if id(param) in depthwise_ids else decay).append(param)
    if depthwise_weight_decay is None:
        return [{"params": decay + depthwise, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": depthwise, "weight_decay": depthwise_weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def sgd(model: torch.nn.Module, *, lr: float, momentum: float, weight_decay: float,
        depthwise_weight_decay: float | None = None) -> torch.optim.SGD:
    """SGD with momentum over `param_groups`; the rate is set per step (`set_lr`, `lpdet.train.schedule`)."""
    return torch.optim.SGD(param_groups(model, weight_decay, depthwise_weight_decay), lr=lr, momentum=momentum)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
