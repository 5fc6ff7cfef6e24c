"""`TrainConfig`: every knob of a training run, saved as RUN_DIR/config.yaml. It holds the model
it trains (`ModelConfig`; the number of classes comes from the dataset) and, for 8-bit
quantization-aware training, a `QatConfig`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from lpdet.errors import raise_first_failed
from lpdet.models.config import MIN_RESOLUTION, ModelConfig, is_resolution
from lpdet.models.registry import is_classifier
from lpdet.quant.qat import QatConfig
from lpdet.train.multi_scale import check_multi_scale
from lpdet.serialize import from_dict, load_mapping


PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    data: str = "synth"                 # dataset YAML path or "synth"
    # arch, width, resolution of the model; num_classes 0: the dataset's (set when training starts)
    model: ModelConfig = field(default_factory=lambda: ModelConfig("mobilenet_v2_ssdlite", num_classes=0))
    qat: QatConfig | None = None        # 8-bit quantization-aware training (fake quant, BN folded, ReLU6); None: float
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.05                    # peak learning rate after warm-up
    momentum: float = 0.9
    weight_decay: float = 4e-5
    # L2 weight of the depthwise conv weights (the quantization-friendly MobileNet's third change keeps
    # them small); None: `weight_decay`, as every other conv weight
    depthwise_weight_decay: float | None = None
    warmup_steps: int = 200
    restart_epochs: int = 0             # cosine warm restarts every N epochs (0: one cosine to the end)
    min_lr_ratio: float = 0.01          # cosine floor as a fraction of lr
    seed: int = 0
    workers: int = 1
    out: Path = Path("runs/train")
    init: Path | None = None            # checkpoint to transfer weights from (any resolution/width)
    backbone_weights: Path | None = None  # ImageNet backbone state dict (torchvision layout) or an lpdet classifier checkpoint
    checkpoint_every: int = 200         # steps between mid-epoch `last` checkpoints (0: only per epoch)
    augment: str = "ssd"                # "ssd" (zoom-out, IoU crop, flip, photometric) or "light" (flip, photometric)
    max_val_images: int = 0             # evaluate on at most N val images per epoch (0: all)
    limit_train_batches: int = 0        # at most N batches per epoch, a fresh shuffle each epoch (0: all)
    # [MIN, MAX]: each step at a multiple of 8 drawn from that range (`lpdet.train.multi_scale`); None: one size
    multi_scale: list[int] | None = None
    threads: int = 0                    # torch intra-op threads (0: torch's default)
    device: str = "cpu"                 # "cpu", "cuda", "cuda:N" or "auto" (cuda when available)
    precision: str = "auto"             # "fp32", "bf16" (autocast) or "auto" (bf16 where the hardware has it)
    # Data-parallel runs (torchrun; batch_size is the global batch): BatchNorm statistics over the
    # global batch (torch's SyncBatchNorm, CUDA only), and how long a rank waits for the others.
    sync_bn: bool = False
    dist_timeout_s: int = 1800

    @property
    def is_qat(self) -> bool:
        return self.qat is not None

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, "--epochs must be >= 1"),
            (self.batch_size >= 2, "--batch-size must be >= 2 (BatchNorm needs more than one image per batch)"),
            (self.lr > 0, "--lr must be > 0"),
            (0 <= self.momentum < 1, "--momentum must be in [0, 1)"),
            (self.weight_decay >= 0, "--weight-decay must be >= 0"),
            (self.depthwise_weight_decay is None or self.depthwise_weight_decay >= 0,
             "--depthwise-weight-decay must be >= 0"),
            (self.warmup_steps >= 0, "--warmup-steps must be >= 0"),
            (self.restart_epochs >= 0, "--restart-epochs must be >= 0"),
            (0 <= self.min_lr_ratio <= 1, "--min-lr-ratio must be in [0, 1]"),
            (self.workers >= 0, "--workers must be >= 0"),
            (self.limit_train_batches >= 0, "--limit-train-batches must be >= 0 (0: every batch)"),
            (is_resolution(self.model.resolution), f"--resolution must be a whole number >= {MIN_RESOLUTION}"),
            (self.model.width > 0, "--width must be > 0"),
            (self.model.quantization == "fp32", "model.quantization: leave it fp32; QAT is the config's qat: entry"),
            (self.qat is None or self.qat.freeze_bn_after >= 0, "--freeze-bn-after must be >= 0"),
            (self.qat is None or self.qat.freeze_observers_after >= 0, "--freeze-observers-after must be >= 0"),
            (self.dist_timeout_s > 0, "--dist-timeout must be > 0 seconds"),
            (not (self.sync_bn and self.is_qat), "--sync-bn cannot be combined with --qat: QAT folds BatchNorm into "
                                                  "its convolutions (per-process statistics); drop --sync-bn"),
        ]
        device_ok = self.device in ("cpu", "cuda", "auto") or re.fullmatch(r"cuda:\d+", self.device) is not None
        checks.append((device_ok, f"--device must be cpu, cuda, cuda:N or auto, got {self.device!r}"))
        checks.append((self.precision in PRECISIONS,
                       f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"))
        checks.append((not (self.is_qat and self.precision == "bf16"),
                       "--precision bf16 cannot be combined with --qat: fake quantization simulates the int8 "
                       "grid in fp32; drop --precision (QAT always runs in fp32)"))
        scale_problem = check_multi_scale(self.multi_scale)
        checks.append((scale_problem is None, scale_problem or ""))
        checks.append((self.multi_scale is None or not is_classifier(self.model),
                       "--multi-scale is for detectors; a classifier trains at its --resolution"))
        raise_first_failed(checks)


# The fields a config.yaml written before TrainConfig nested its model and QAT configs had flat.
_FLAT_MODEL = ("arch", "width", "resolution")
_FLAT_QAT = {"qat_freeze_bn_after": "freeze_bn_after", "qat_freeze_observers_after": "freeze_observers_after"}


def load_train_config(path: Path) -> TrainConfig:
    """A run's config.yaml, also in the flat layout of runs written by earlier lpdet versions."""
    data = dict(load_mapping(path))
    if any(key in data for key in (*_FLAT_MODEL, *_FLAT_QAT)) or isinstance(data.get("qat"), bool):
        model = {"arch": "mobilenet_v2_ssdlite", "num_classes": 0, **data.pop("model", {})}
        model.update({key: data.pop(key) for key in _FLAT_MODEL if key in data})
        qat = {new: data.pop(old) for old, new in _FLAT_QAT.items() if old in data}
        data["model"] = model
        data["qat"] = qat if data.get("qat") is True else None
    return from_dict(TrainConfig, data, where=str(path))
