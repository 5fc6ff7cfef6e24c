"""`TrainConfig`: every knob of a training run, saved as RUN_DIR/config.yaml."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lpdet.errors import LpdetError
from lpdet.models.config import MIN_RESOLUTION, is_resolution


PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    data: str = "synth"                 # dataset YAML path or "synth"
    arch: str = "mobilenet_v2_ssdlite"
    width: float = 1.0
    resolution: int = 320
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.05                    # peak learning rate after warm-up
    momentum: float = 0.9
    weight_decay: float = 4e-5
    warmup_steps: int = 200
    restart_epochs: int = 0             # cosine warm restarts every N epochs (0: one cosine to the end)
    min_lr_ratio: float = 0.01          # cosine floor as a fraction of lr
    seed: int = 0
    workers: int = 1
    out: Path = Path("runs/train")
    init: Path | None = None            # checkpoint to transfer weights from (any resolution/width)
    backbone_weights: Path | None = None  # ImageNet backbone state dict, torchvision layout
    checkpoint_every: int = 200         # steps between mid-epoch `last` checkpoints (0: only per epoch)
    augment: str = "ssd"                # "ssd" (zoom-out, IoU crop, flip, photometric) or "light" (flip, photometric)
    max_val_images: int = 0             # evaluate on at most N val images per epoch (0: all)
    threads: int = 0                    # torch intra-op threads (0: torch's default)
    device: str = "cpu"                 # "cpu", "cuda", "cuda:N" or "auto" (cuda when available)
    precision: str = "auto"             # "fp32", "bf16" (autocast) or "auto" (bf16 where the hardware has it)
    qat: bool = False                   # 8-bit quantization-aware training (fake quant, BN folded, ReLU6)
    qat_freeze_bn_after: int = 0        # QAT: steps after which BN statistics freeze (0: never)
    qat_freeze_observers_after: int = 0  # QAT: steps after which activation ranges freeze (0: never)

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, "--epochs must be >= 1"),
            (self.batch_size >= 2, "--batch-size must be >= 2 (BatchNorm needs more than one image per batch)"),
            (self.lr > 0, "--lr must be > 0"),
            (0 <= self.momentum < 1, "--momentum must be in [0, 1)"),
            (self.weight_decay >= 0, "--weight-decay must be >= 0"),
            (self.warmup_steps >= 0, "--warmup-steps must be >= 0"),
            (self.restart_epochs >= 0, "--restart-epochs must be >= 0"),
            (0 <= self.min_lr_ratio <= 1, "--min-lr-ratio must be in [0, 1]"),
            (self.workers >= 0, "--workers must be >= 0"),
            (is_resolution(self.resolution), f"--resolution must be a whole number >= {MIN_RESOLUTION}"),
            (self.width > 0, "--width must be > 0"),
            (self.qat_freeze_bn_after >= 0, "--freeze-bn-after must be >= 0"),
            (self.qat_freeze_observers_after >= 0, "--freeze-observers-after must be >= 0"),
        ]
        device_ok = self.device in ("cpu", "cuda", "auto") or re.fullmatch(r"cuda:\d+", self.device) is not None
        checks.append((device_ok, f"--device must be cpu, cuda, cuda:N or auto, got {self.device!r}"))
        checks.append((self.precision in PRECISIONS,
                       f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"))
        checks.append((not (self.qat and self.precision == "bf16"),
                       "--precision bf16 cannot be combined with --qat: fake quantization simulates the int8 "
                       "grid in fp32; drop --precision (QAT always runs in fp32)"))
        for ok, message in checks:
            if not ok:
                raise LpdetError(message)
