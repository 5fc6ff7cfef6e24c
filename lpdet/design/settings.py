"""`DesignSettings`: every knob of the guided design flow, with the `full()` and `quick()` presets
(described in `lpdet.design.flow`), and the training configs the flow derives from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lpdet.data.transforms import AUGMENTATIONS
from lpdet.errors import LpdetError
from lpdet.models.config import MIN_RESOLUTION, ModelConfig, is_resolution
from lpdet.quant.qat import QatConfig
from lpdet.serialize import from_dict
from lpdet.train.config import PRECISIONS, TrainConfig

__all__ = ["DesignSettings", "train_config", "training_config", "finetune_overrides"]


@dataclass
class DesignSettings:
    """Every knob of the flow; `full()` / `quick()` are the presets (see the module docstring)."""

    arch: str = "mobilenet_v2_ssdlite"
    width: float = 1.0
    base_resolution: int = 300
    # candidates for the resolution search, searched from the largest; multiples of 8 preferred
    resolutions: list[int] = field(default_factory=lambda: [300, 296, 288, 280, 272, 264, 256, 248, 240, 232, 224,
                                                            216, 208, 200, 192])
    table_resolutions: list[int] = field(default_factory=lambda: [250, 236])  # non-multiples of 8, for Table 11.2
    finetune_top: int = 2  # fine-tune the largest N fitting resolutions
    synth_train: int | None = None  # --data synth only: images (None: lpdet's default synthetic set)
    synth_val: int | None = None
    # training
    base_epochs: int = 60
    qat_epochs: int = 10
    finetune_epochs: int = 10  # QAT fine-tuning at each resolution, and each filtering-ablation run
    batch_size: int = 32
    augment: str = "ssd"  # "ssd" (full SSD augmentation) or "light" (flip + photometric; faster early learning)
    lr: float = 0.05
    warmup_steps: int = 500
    qat_lr: float = 0.005
    finetune_lr: float = 0.005
    finetune_warmup_steps: int = 100
    seed: int = 0
    workers: int = 2
    train_threads: int = 0  # torch threads while training (0: torch's default)
    precision: str = "auto"  # float training: "fp32", "bf16" or "auto" (TrainConfig.precision); QAT runs in fp32
    max_val_images: int = 500  # per-epoch validation during training (0: all)
    checkpoint_every: int = 200
    # measuring
    threads: int = 1  # inference threads for every latency (the budget is for this many)
    # A model fits when its measured latency is at most budget·(1 − budget_margin): the headroom
    # keeps it within the budget when it is benchmarked again on a machine whose speed drifts.
    budget_margin: float = 0.1
    bench_runs: int = 50
    bench_warmup: int = 5
    bench_repeats: int = 3  # each latency: the lowest median of this many benchmarks (shared machines)
    compare_runs: int = 30
    calibration_images: int = 100
    eval_max_images: int = 0  # deployed-model evaluations on val (0: all)
    # filtering and NMS
    filtering: bool = True
    small_max: float = 32.0  # "small" objects: area < small_max² (COCO: 32)
    nms_ious: list[float] = field(default_factory=lambda: [0.6, 0.30, 0.25, 0.20, 0.15, 0.10])  # first: the baseline

    @classmethod
    def full(cls, **overrides) -> "DesignSettings":
        """Paper-like defaults (COCO or the full synthetic set, a GPU or hours of CPU)."""
        return cls(**overrides)

    @classmethod
    def quick(cls, **overrides) -> "DesignSettings":
        """About 15 minutes for ``--data synth`` on 2 CPU cores."""
        settings = dict(width=0.5, resolutions=[300, 288, 272, 256, 240, 224, 208, 192, 176, 160],
                        table_resolutions=[250, 236],
                        finetune_top=1, synth_train=1200, synth_val=200, base_epochs=5, qat_epochs=1,
                        finetune_epochs=1, batch_size=16, augment="light", lr=0.03, warmup_steps=30, qat_lr=0.005,
                        finetune_lr=0.005, finetune_warmup_steps=0, workers=1, max_val_images=100,
                        checkpoint_every=25, bench_runs=50, bench_warmup=5, compare_runs=20, calibration_images=32)
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def from_dict(cls, data: dict) -> "DesignSettings":
        return from_dict(cls, data, where="design settings")

    def validate(self) -> None:
        checks = [
            (self.width > 0, "width must be > 0"),
            (is_resolution(self.base_resolution), f"base_resolution must be a whole number >= {MIN_RESOLUTION}"),
            (bool(self.resolutions) and all(map(is_resolution, self.resolutions)),
             f"resolutions: whole numbers >= {MIN_RESOLUTION}"),
            (all(map(is_resolution, self.table_resolutions)), f"table_resolutions: whole numbers >= {MIN_RESOLUTION}"),
            (self.finetune_top >= 1, "finetune_top must be >= 1"),
            (min(self.base_epochs, self.qat_epochs, self.finetune_epochs) >= 1, "epochs must be >= 1"),
            (self.batch_size >= 2, "batch_size must be >= 2"),
            (self.augment in AUGMENTATIONS, f"augment must be one of {', '.join(AUGMENTATIONS)}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.threads >= 0, "--threads must be >= 0"),
            (min(self.bench_runs, self.bench_repeats, self.compare_runs, self.calibration_images) >= 1,
             "bench_runs, bench_repeats, compare_runs and calibration_images must be >= 1"),
            (bool(self.nms_ious) and all(0 < v <= 1 for v in self.nms_ious), "nms_ious: values in (0, 1]"),
            (self.small_max > 0, "small_max must be > 0"),
            (0 <= self.budget_margin < 1, "budget_margin must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise LpdetError(f"design settings: {message}")

    def latency_limit(self, budget_ms: float) -> float:
        """The latency a model may measure to fit `budget_ms`, `budget_margin` kept in reserve."""
        return budget_ms * (1.0 - self.budget_margin)

    def candidates(self) -> list[int]:
        """Every resolution measured in the search, largest first (base and table sizes included)."""
        return sorted(set(self.resolutions) | set(self.table_resolutions) | {self.base_resolution}, reverse=True)


def train_config(data: str | Path, *, arch: str, width: float, resolution: int, epochs: int, batch_size: int,
                 init: Path | str | None = None, qat: bool = False, **fields_) -> TrainConfig:
    """Every training run the design makes (the flow, the resolution and filtering experiments) is
    built here: the model it trains, how long, from which checkpoint, float or QAT, then any other
    `TrainConfig` fields (lr, warmup_steps, workers, ...). Its output folder is the trial's."""
    return TrainConfig(data=str(data), model=ModelConfig(arch, num_classes=0, width=width, resolution=resolution),
                       qat=QatConfig() if qat else None, epochs=epochs, batch_size=batch_size,
                       init=Path(init) if init is not None else None, out=Path("unused"), **fields_)


def training_config(s: DesignSettings, data_path: Path, *, epochs: int, lr: float, warmup_steps: int,
                    qat: bool = False, init: Path | None = None) -> TrainConfig:
    """A training run of the design flow at the base resolution: `train_config` with the settings every run shares."""
    return train_config(data_path, arch=s.arch, width=s.width, resolution=s.base_resolution, epochs=epochs,
                        batch_size=s.batch_size, init=init, qat=qat, lr=lr, warmup_steps=warmup_steps,
                        augment=s.augment, seed=s.seed, workers=s.workers, threads=s.train_threads,
                        precision=s.precision, max_val_images=s.max_val_images, checkpoint_every=s.checkpoint_every)


def finetune_overrides(s: DesignSettings) -> dict:
    """The `train_config` fields of every fine-tuning run of the flow (resolution and filtering experiments)."""
    return dict(lr=s.finetune_lr, warmup_steps=s.finetune_warmup_steps, augment=s.augment, seed=s.seed, workers=s.workers,
                threads=s.train_threads, max_val_images=s.max_val_images, checkpoint_every=s.checkpoint_every)
