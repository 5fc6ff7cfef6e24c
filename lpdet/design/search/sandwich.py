"""Super-network training with the sandwich rule (BigNAS, Yu et al. 2020), by weight sharing.

The super-network is the space's largest candidate. Each step trains, on the same batch, the
largest network, the smallest one and `random_subnets` random candidates, and sums their
gradients into the one set of shared weights before the SGD step: the smallest and the largest
bound the space, so every sub-network's accuracy is trained, not only the largest's.

A sub-network is the largest's weights sliced as `lpdet.models.inherit` slices them for a search
candidate (most important channels by filter L1, centre-cropped kernels, a stage's first
blocks), recomputed from the live weights each step, so training shares exactly the weights
the search later inherits. The slicing is indexing, so `torch.func.functional_call` runs the
candidate's module on those slices and the gradients reach the shared weights. A sub-network
with a smaller input sees the batch resized (boxes are normalised, so the targets hold).

The pieces are `lpdet train`'s: the dataset and augmentation, `make_loader`, `multibox_loss`,
SGD with momentum and no decay on BN/biases (`lpdet.train.optim`), warm-up + cosine (`lr_at`).
"""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

from lpdet.data.coco import CocoDetection
from lpdet.data.loader import make_loader
from lpdet.data.spec import load_dataset_yaml
from lpdet.data.transforms import train_transforms
from lpdet.design.search.settings import SearchSettings
from lpdet.errors import LpdetError
from lpdet.models.arch_space import (ArchCandidate, largest_candidate, member_config, sample_candidate,
                                     smallest_candidate, to_model_config)
from lpdet.models.checkpoint_format import Checkpoint, load_checkpoint, save_checkpoint
from lpdet.models.config import kept_anchors
from lpdet.models.detector import Detector
from lpdet.models.inherit import Supernet, embedded_state, inherited_state
from lpdet.models.loss import multibox_loss
from lpdet.models.registry import build_detector
from lpdet.progress import progress_bar
from lpdet.train.optim import seed_everything, set_lr, sgd
from lpdet.train.schedule import lr_at

__all__ = ["train_supernet", "supernet_candidate", "shared_forward", "sandwich_losses"]

log = logging.getLogger("lpdet.search")


def supernet_candidate(settings: SearchSettings) -> ArchCandidate:
    """The space's largest candidate at the search's global width: the super-network."""
    return replace(largest_candidate(settings.space), width=settings.width)


def live_supernet(model: Detector) -> Supernet:
    """`model`'s own tensors (not copies) with their channel importance as it is now."""
    importance = Supernet.from_state(model.config, model.state_dict()).importance
    return Supernet(model.config, {**dict(model.named_parameters()), **dict(model.named_buffers())}, importance)


def shared_forward(module: Detector, supernet: Supernet, images: torch.Tensor):
    """`module` (a candidate's detector, its own weights ignored) run on the supernet's shared weights."""
    state = inherited_state(module.config, supernet, module.state_dict())
    return functional_call(module, state, (images,))


def sandwich_losses(model: Detector, candidates: list[ArchCandidate], images: torch.Tensor, targets: list[dict],
                    loader_resolution: int) -> list[float]:
    """Backward of the largest network's loss (the model itself) and of each candidate's on the shared
    weights; gradients accumulate in `model`. Returns the losses, largest first."""
    norm_targets = [{"boxes": t["boxes"] / loader_resolution, "labels": t["labels"]} for t in targets]
    device = images.device
    cls_logits, box_deltas = model(images)
    loss = multibox_loss(cls_logits, box_deltas, norm_targets, model.anchors)["loss"]
    losses = [_backward(loss)]
    supernet = live_supernet(model)
    for candidate in candidates:
        module = build_detector(member_config(candidate, model.config)).to(device).train()
        r = candidate.resolution
        inputs = images if r == loader_resolution else F.interpolate(
            images, size=(r, r), mode="bilinear", align_corners=False, antialias=True)
        cls_logits, box_deltas = shared_forward(module, supernet, inputs)
        loss = multibox_loss(cls_logits, box_deltas, norm_targets, module.anchors)["loss"]
        losses.append(_backward(loss))
    return losses


def _backward(loss: torch.Tensor) -> float:
    if not torch.isfinite(loss):
        raise LpdetError(f"super-network training: the loss became {loss.item()}; lower the supernet's lr")
    loss.backward()
    return loss.item()


def _start_from(model: Detector, base: Checkpoint, init: Path, class_names: list[str]) -> None:
    """`model` (the supernet) holding the trained detector `base`, loaded from `init`
    (`inherit.embedded_state`)."""
    if base.model_config.quantization != "fp32" or base.model_config.detail is not None:
        raise LpdetError(f"supernet init {init}: give a float checkpoint of the standard network (not QAT, not a "
                         f"searched architecture)")
    if list(base.class_names) != list(class_names):
        raise LpdetError(f"supernet init {init}: its classes {base.class_names} are not the data's {class_names}; "
                         f"start from a detector of this dataset, or train the supernet from scratch")
    model.load_state_dict(embedded_state(model.config, base.model_config, base.model_state, model.state_dict()))
    log.info("supernet: starting from %s (%s, width %g)", init, base.model_config.arch, base.model_config.width)


def train_supernet(settings: SearchSettings, data_yaml: Path, out: Path, *, progress: bool = True) -> Path:
    """Train the super-network on the train split of `data_yaml` (the fit part: the selection split is
    held out) with the sandwich rule; save it as the checkpoint `out`."""
    s = settings.supernet
    seed_everything(s.seed)
    spec = load_dataset_yaml(Path(data_yaml))
    largest = supernet_candidate(settings)
    resolution = largest.resolution
    train_set = CocoDetection(spec.train.annotations, spec.train.images,
                              transform=train_transforms(resolution, s.augment), seed=s.seed)
    steps_per_epoch = len(train_set) // s.batch_size
    if steps_per_epoch == 0:
        raise LpdetError(f"{spec.train.annotations}: {len(train_set)} training images, fewer than the supernet's "
                         f"batch size {s.batch_size}; add images")
    base = load_checkpoint(Path(s.init)) if s.init else None
    config = to_model_config(largest, train_set.num_classes)
    if base is not None:  # the anchors the base's weights learned, in its pixels
        config = replace(config, **kept_anchors(base.model_config))
    model = build_detector(config).train()
    if base is not None:
        _start_from(model, base, Path(s.init), train_set.class_names)
    lr = s.init_lr if s.init else s.lr
    optimizer = sgd(model, lr=lr, momentum=s.momentum, weight_decay=s.weight_decay)
    total = steps_per_epoch * s.epochs
    warmup = min(s.warmup_steps, total // 5)
    rng = random.Random(s.seed)
    smallest = replace(smallest_candidate(settings.space), width=settings.width)
    step = 0
    bar = progress_bar(total=total, enabled=progress, desc="supernet (sandwich)", unit="step")
    for epoch in range(s.epochs):
        for images, targets, _dropped in make_loader(train_set, s.batch_size, shuffle=True, seed=s.seed,
                                                     epoch=epoch, workers=s.workers):
            if targets:
                set_lr(optimizer, lr_at(step, base_lr=lr, total_steps=total, warmup_steps=warmup,
                                        min_lr_ratio=s.min_lr_ratio))
                randoms = [replace(sample_candidate(settings.space, rng), width=settings.width)
                           for _ in range(s.random_subnets)]
                optimizer.zero_grad(set_to_none=True)
                losses = sandwich_losses(model, [smallest, *randoms], images, targets, resolution)
                optimizer.step()
                bar.set_postfix(largest=f"{losses[0]:.3f}", smallest=f"{losses[1]:.3f}", refresh=False)
            step += 1
            bar.update()
    bar.close()
    return save_checkpoint(out, model=model.eval(), model_config=model.config, class_names=train_set.class_names,
                           category_ids=train_set.category_ids, train_state={"steps": step, "epochs": s.epochs})
