"""`DesignSettings`: every knob of the guided design flow, with the `full()` and `quick()` presets
(described in `lpdet.design.flow`), and the training configs the flow derives from them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from lpdet.data.selection import SELECT_FRACTION
from lpdet.data.transforms import AUGMENTATIONS
from lpdet.errors import raise_first_failed
from lpdet.models.config import MIN_RESOLUTION, AnchorGrid, ModelConfig, is_resolution
from lpdet.quant.qat import QatConfig
from lpdet.serialize import from_dict
from lpdet.train.config import PRECISIONS, TrainConfig

__all__ = ["DesignSettings", "TrainingSettings", "Schedule", "BenchSettings", "train_config", "training_config",
           "finetune_overrides"]


@dataclass
class Schedule:
    """One kind of training run of the design: how long and how fast (`TrainConfig` fields)."""

    epochs: int
    lr: float  # peak learning rate
    warmup_steps: int
    limit_train_batches: int = 0  # at most N batches per epoch (0: all)


@dataclass
class TrainingSettings:
    """What every training run of the design shares (`TrainConfig` fields of the same names)."""

    batch_size: int = 32
    augment: str = "ssd"  # "ssd" (full SSD augmentation) or "light" (flip + photometric; faster early learning)
    seed: int = 0
    workers: int = 2
    threads: int = 0  # torch threads while training (0: torch's default)
    precision: str = "auto"  # float training: "fp32", "bf16" or "auto" (TrainConfig.precision); QAT runs in fp32
    max_val_images: int = 500  # per-epoch validation during training (0: all)
    checkpoint_every: int = 200


@dataclass
class BenchSettings:
    """How every latency of the design is measured (`lpdet.design.latency_trials`): batch 1 on `images`
    real val images with `threads` inference threads (the budget is for this many), the models of a
    decision interleaved, after `warmup`, at least `runs` rounds and then until every median is known
    to ±`target` (95%) or `time_cap_s`; the median over all timed passes, with its interval and p90.
    `repeats`: the NMS sweep's forward benchmark (1: the median of all its runs)."""

    threads: int = 1
    runs: int = 50
    warmup: int = 5
    repeats: int = 1
    target: float = 0.03
    time_cap_s: float = 60.0
    images: int = 16


# The anchor grid of a base the design trains itself (and of the filtering ablation's runs from scratch):
# the stride grid, so that its box offsets hold at the other resolutions the design tries.
FRESH_ANCHOR_GRID: AnchorGrid = "stride"


@dataclass
class DesignSettings:
    """Every knob of the flow; `full()` / `quick()` are the presets (see `lpdet.design.flow`)."""

    arch: str = "mobilenet_v2_ssdlite"
    # The float base (`lpdet.design.base_model`): a user's float detector, else the shipped one for
    # --data synth, else trained by the flow (from ImageNet backbone weights when given).
    base: Path | None = None
    from_scratch: bool = False
    backbone_weights: Path | None = None
    width: float = 1.0
    base_resolution: int = 300
    # The base's anchors (`ModelConfig.anchor_grid` / `anchor_reference`), set from a shipped or
    # given base; a base the flow trains puts them on the stride grid.
    anchor_grid: AnchorGrid = FRESH_ANCHOR_GRID
    anchor_reference: int | None = None
    # candidates for the resolution search, searched from the largest; multiples of 8 preferred
    resolutions: list[int] = field(default_factory=lambda: [300, 296, 288, 280, 272, 264, 256, 248, 240, 232, 224,
                                                            216, 208, 200, 192])
    table_resolutions: list[int] = field(default_factory=lambda: [250, 236])  # non-multiples of 8, for Table 11.2
    finetune_top: int = 2  # fine-tune the largest N fitting resolutions
    synth_train: int | None = None  # --data synth only: images (None: lpdet's default synthetic set)
    synth_val: int | None = None
    training: TrainingSettings = field(default_factory=TrainingSettings)
    float_training: Schedule = field(default_factory=lambda: Schedule(epochs=60, lr=0.05, warmup_steps=500))
    # A float base the flow trains itself ends with a multi-scale stage, as the shipped base was made
    # (scripts/train_synth_base.py): from the float run's best weights, each step at a size drawn from
    # the multiples of 8 between the smallest and the largest size the resolution search measures
    # (`multi_scale_bounds`). Trained at one size, a base keeps little of its AP at the other sizes,
    # which the search measures before any fine-tuning (the shipped base at 192, anchors kept at their
    # pixel sizes: AP 0.088 trained at 300 alone, 0.152 after the stage). epochs 0: no stage.
    multi_scale_training: Schedule = field(default_factory=lambda: Schedule(epochs=10, lr=0.005, warmup_steps=0))
    qat_training: Schedule = field(default_factory=lambda: Schedule(epochs=10, lr=0.005, warmup_steps=100))
    # QAT fine-tuning at each resolution, and each filtering-ablation run
    finetuning: Schedule = field(default_factory=lambda: Schedule(epochs=10, lr=0.005, warmup_steps=100))
    bench: BenchSettings = field(default_factory=BenchSettings)
    # A model fits when its measured latency is at most budget·(1 − budget_margin): the headroom
    # keeps it within the budget when it is benchmarked again on a machine whose speed drifts.
    budget_margin: float = 0.1
    compare_runs: int = 30
    calibration_images: int = 100
    eval_max_images: int = 0  # deployed-model evaluations on val (0: all)
    # filtering and NMS
    filtering: bool = True
    small_max: float = 32.0  # "small" objects: area < small_max² (COCO: 32)
    nms_ious: list[float] = field(default_factory=lambda: [0.6, 0.30, 0.25, 0.20, 0.15, 0.10])  # first: the baseline
    # share of train held out as the selection split every choice is made on (when the YAML has no select:)
    select_fraction: float = SELECT_FRACTION

    @classmethod
    def full(cls, **overrides) -> "DesignSettings":
        """Paper-like defaults (COCO or the full synthetic set, a GPU or hours of CPU)."""
        return cls(**overrides)

    @classmethod
    def quick(cls, **overrides) -> "DesignSettings":
        """About 15 minutes for ``--data synth`` on 2 CPU cores."""
        # The default synthetic set (the one the shipped base was trained on, so that the selection
        # split carved from it holds no image the base saw); every run sees a fixed number of batches.
        settings = dict(width=0.5, resolutions=[300, 288, 256, 240, 224, 208, 192, 160],
                        table_resolutions=[236], finetune_top=1, nms_ious=[0.6, 0.45, 0.3, 0.2],
                        training=TrainingSettings(batch_size=16, augment="light", workers=1, max_val_images=100,
                                                  checkpoint_every=25),
                        float_training=Schedule(epochs=5, lr=0.03, warmup_steps=30, limit_train_batches=75),
                        multi_scale_training=Schedule(epochs=2, lr=0.005, warmup_steps=0, limit_train_batches=75),
                        qat_training=Schedule(epochs=1, lr=0.005, warmup_steps=0, limit_train_batches=40),
                        finetuning=Schedule(epochs=1, lr=0.005, warmup_steps=0, limit_train_batches=40),
                        bench=BenchSettings(runs=50, warmup=5), compare_runs=20, calibration_images=32)
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def from_dict(cls, data: dict) -> "DesignSettings":
        return from_dict(cls, data, where="design settings")

    def validate(self) -> None:
        t, runs = self.training, (self.float_training, self.qat_training, self.finetuning)
        checks = [
            (self.width > 0, "width must be > 0"),
            (is_resolution(self.base_resolution), f"base_resolution must be a whole number >= {MIN_RESOLUTION}"),
            (bool(self.resolutions) and all(map(is_resolution, self.resolutions)),
             f"resolutions: whole numbers >= {MIN_RESOLUTION}"),
            (all(map(is_resolution, self.table_resolutions)), f"table_resolutions: whole numbers >= {MIN_RESOLUTION}"),
            (self.finetune_top >= 1, "finetune_top must be >= 1"),
            (min(r.epochs for r in runs) >= 1, "epochs must be >= 1"),
            (t.batch_size >= 2, "batch_size must be >= 2"),
            (t.augment in AUGMENTATIONS, f"augment must be one of {', '.join(AUGMENTATIONS)}"),
            (t.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.bench.threads >= 0, "--threads must be >= 0"),
            (0 < self.bench.target < 1 and self.bench.time_cap_s > 0 and self.bench.images >= 1,
             "bench: target in (0, 1), time_cap_s > 0, images >= 1"),
            (min(self.bench.runs, self.bench.repeats, self.compare_runs, self.calibration_images) >= 1,
             "bench runs, bench repeats, compare_runs and calibration_images must be >= 1"),
            (bool(self.nms_ious) and all(0 < v <= 1 for v in self.nms_ious), "nms_ious: values in (0, 1]"),
            (self.small_max > 0, "small_max must be > 0"),
            (0 <= self.budget_margin < 1, "budget_margin must be in [0, 1)"),
            (0 < self.select_fraction < 1, "--select-fraction must be between 0 and 1 (exclusive)"),
            (min(r.limit_train_batches for r in runs) >= 0, "limit_train_batches must be >= 0 (0: all)"),
            (self.multi_scale_training.epochs >= 0 and self.multi_scale_training.limit_train_batches >= 0,
             "multi_scale_training: epochs and limit_train_batches must be >= 0 (epochs 0: no multi-scale stage)"),
            (self.base is None or not self.from_scratch, "--base and --from-scratch exclude each other"),
            (self.base is None or self.backbone_weights is None,
             "--base and --backbone-weights exclude each other (the base has its backbone)"),
        ]
        raise_first_failed(checks, "design settings: ")

    def latency_limit(self, budget_ms: float) -> float:
        """The latency a model may measure to fit `budget_ms`, `budget_margin` kept in reserve."""
        return budget_ms * (1.0 - self.budget_margin)

    def multi_scale_bounds(self) -> list[int]:
        """`--multi-scale MIN MAX` of the base's multi-scale stage: the sizes the search measures."""
        sizes = self.candidates()
        return [sizes[-1], sizes[0]]

    def candidates(self) -> list[int]:
        """Every resolution measured in the search, largest first (base and table sizes included)."""
        return sorted(set(self.resolutions) | set(self.table_resolutions) | {self.base_resolution}, reverse=True)


def train_config(data: str | Path, *, arch: str, width: float, resolution: int, anchor_grid: AnchorGrid,
                 anchor_reference: int | None, epochs: int, batch_size: int, init: Path | str | None = None,
                 qat: bool = False, **fields_) -> TrainConfig:
    """Every training run the design makes (the flow, the resolution and filtering experiments) is
    built here: the model it trains (with the anchors of the model it starts from: pass
    `**kept_anchors(that model's config)`), how long, from which checkpoint, float or QAT, then any
    other `TrainConfig` fields (lr, warmup_steps, workers, ...). Its output folder is the trial's."""
    model = ModelConfig(arch, num_classes=0, width=width, resolution=resolution, anchor_grid=anchor_grid,
                        anchor_reference=anchor_reference)
    return TrainConfig(data=str(data), model=model,
                       qat=QatConfig() if qat else None, epochs=epochs, batch_size=batch_size,
                       init=Path(init) if init is not None else None, out=Path("unused"), **fields_)


def training_config(s: DesignSettings, data_path: Path, schedule: Schedule, *, qat: bool = False,
                    init: Path | None = None, backbone_weights: Path | None = None,
                    multi_scale: list[int] | None = None) -> TrainConfig:
    """A training run of the design flow at the base resolution: `train_config` with the settings every
    run shares and `schedule` (`multi_scale`: each step at a size drawn from [MIN, MAX])."""
    return train_config(data_path, arch=s.arch, width=s.width, resolution=s.base_resolution,
                        anchor_grid=s.anchor_grid, anchor_reference=s.anchor_reference, init=init, qat=qat,
                        backbone_weights=backbone_weights, multi_scale=multi_scale, **asdict(schedule),
                        **asdict(s.training))


def finetune_overrides(s: DesignSettings) -> dict:
    """The `train_config` fields of every fine-tuning run of the flow (resolution and filtering
    experiments; their batch size is passed on its own, their precision is QAT's fp32)."""
    shared = {k: v for k, v in asdict(s.training).items() if k not in ("batch_size", "precision")}
    return {"lr": s.finetuning.lr, "warmup_steps": s.finetuning.warmup_steps,
            "limit_train_batches": s.finetuning.limit_train_batches, **shared}
