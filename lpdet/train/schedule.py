"""Learning-rate schedule: linear warm-up, then cosine decay, optionally with warm restarts.

A pure function of the step, so resuming a run needs only the step counter.
"""

from __future__ import annotations

import math


def lr_at(step: int, *, base_lr: float, total_steps: int, warmup_steps: int = 0,
          restart_steps: int = 0, min_lr_ratio: float = 0.0) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Warm-up rises linearly from base_lr/warmup_steps to base_lr over `warmup_steps`.
    After it, cosine decay from base_lr to base_lr*min_lr_ratio over the remaining
    steps, or, with `restart_steps` > 0, over each period of that length (SGDR).
    """
    min_lr = base_lr * min_lr_ratio
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = step - warmup_steps
    period = restart_steps if restart_steps > 0 else max(1, total_steps - warmup_steps)
    progress = (t % period) / period if restart_steps > 0 else min(1.0, t / period)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
