"""Multi-scale training (`--multi-scale MIN MAX`): each step trains at a resolution drawn from the
multiples of 8 in [MIN, MAX], so the detector works across the input sizes a design will try.

Why: a detector trained at one size loses much of its AP a few pixels away from it (our base
trained at 300 fell from 0.22 to 0.14 AP at 288 without fine-tuning), which turns the design's
resolution search into a search over fine-tuning luck. YOLO-style batch resizing is the usual
cure: the batch is resized on the fly (the data pipeline is unchanged) and the detector's anchors
follow the size. Boxes need no change: the loss sees them normalised by the nominal resolution,
and normalised coordinates do not depend on the size the image is drawn at.

The size of step `s` depends only on (seed, s), so a resumed run draws the same sizes.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import torch.nn.functional as F
from torch import Tensor, nn

from lpdet.models.config import MIN_RESOLUTION

GRID = 8  # the seed's geometry rule: every drawn size is a multiple of 8


def multi_scale_sizes(low: int, high: int) -> list[int]:
    """The multiples of 8 in [low, high] (what `--multi-scale low high` trains at)."""
    return [r for r in range(low, high + 1) if r % GRID == 0]


def check_multi_scale(bounds: list[int] | None) -> str | None:
    """None when `--multi-scale` is usable, else what is wrong with it."""
    if bounds is None:
        return None
    if len(bounds) != 2 or bounds[0] > bounds[1]:
        return f"--multi-scale takes MIN MAX with MIN <= MAX, got {bounds}"
    if bounds[0] < MIN_RESOLUTION:
        return f"--multi-scale: MIN must be >= {MIN_RESOLUTION}, got {bounds[0]}"
    if not multi_scale_sizes(*bounds):
        return f"--multi-scale {bounds[0]} {bounds[1]}: no multiple of 8 in that range; widen it"
    return None


def step_resolution(bounds: list[int] | None, nominal: int, seed: int, step: int) -> int:
    """The input size step `step` trains at: `nominal` without --multi-scale."""
    if bounds is None:
        return nominal
    return random.Random(seed * 1_000_003 + step).choice(multi_scale_sizes(*bounds))


def resized_batch(images: Tensor, resolution: int) -> Tensor:
    """The batch `[B, 3, H, W]` drawn at `resolution` x `resolution` (antialiased when shrinking, as
    the eval transform's resize is)."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False,
                         antialias=True)


@contextlib.contextmanager
def trained_at(model: nn.Module, resolution: int) -> Iterator[None]:
    """The detector at `resolution` (its anchors follow) inside the block, back at its own size after."""
    config = model.config
    if resolution == config.resolution:  # every step without --multi-scale, and every classifier's
        yield
        return
    anchors = model.anchors
    model.set_resolution(resolution)
    try:
        yield
    finally:
        # The model as it was, not set_resolution back: that would recompute the same anchors every
        # step and pin `anchor_reference` to the nominal size, so that a checkpoint's config would
        # differ from its run's for nothing.
        model.config, model.anchors = config, anchors
