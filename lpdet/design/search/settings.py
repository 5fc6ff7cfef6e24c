"""`SearchSettings`: every knob of `lpdet search`, with the `full()` and `quick()` presets."""

from __future__ import annotations

from dataclasses import dataclass, field

from lpdet.data.selection import SELECT_FRACTION
from lpdet.design.settings import BenchSettings, Schedule, TrainingSettings
from lpdet.errors import raise_first_failed
from lpdet.models.arch_space import SearchSpace
from lpdet.serialize import from_dict

__all__ = ["SupernetSettings", "FinalistSettings", "SearchSettings"]


@dataclass
class SupernetSettings:
    """How the super-network (the space's largest candidate) is trained: the sandwich rule, each
    step the largest, the smallest and `random_subnets` random sub-networks, their gradients summed
    into the shared weights (BigNAS, Yu et al. 2020), SGD + warm-up + cosine as `lpdet train`."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 0.05
    warmup_steps: int = 200
    momentum: float = 0.9
    weight_decay: float = 4e-5
    min_lr_ratio: float = 0.01
    random_subnets: int = 2
    augment: str = "ssd"
    workers: int = 1
    seed: int = 0
    # A trained detector of the standard network at the search's width that the supernet starts from
    # (`lpdet.models.inherit.embedded_state`; "": from scratch), trained on from there at `init_lr`.
    # `lpdet search --data synth` starts from the shipped base when its width is the search's.
    init: str = ""
    init_lr: float = 0.01


@dataclass
class FinalistSettings:
    """How the finalists (the chosen candidate, the best grid model that fits, and with `runner_up` the
    next best fitting searched candidate) are fine-tuned: each from its inherited, BatchNorm-recalibrated
    weights, QAT for the same `schedule` (the design's fine-tuning runs, `TrialCache.train`), then
    exported int8, evaluated on val and timed interleaved (`lpdet.design.search.finalists`)."""

    enabled: bool = True
    runner_up: bool = True
    schedule: Schedule = field(default_factory=lambda: Schedule(epochs=10, lr=0.005, warmup_steps=100))
    training: TrainingSettings = field(default_factory=TrainingSettings)
    max_images: int = 0  # val (and selection) images their AP is measured on (0: all)
    calibration_images: int = 100  # int8 export of a QAT checkpoint needs none; kept for a float one


@dataclass
class SearchSettings:
    """Every knob of the search (see `lpdet.design.search.driver`)."""

    space: SearchSpace = field(default_factory=SearchSpace)
    width: float = 1.0  # global width multiplier; the space's widths are relative to it
    supernet: SupernetSettings = field(default_factory=SupernetSettings)
    trials: int = 100  # completed trials the study stops at (all workers together)
    time_budget_min: float = 0.0  # this worker stops starting trials after this many minutes (0: no limit)
    bn_batches: int = 8  # training batches BatchNorm statistics are recalibrated on, per candidate
    calibration_batches: int = 4  # training batches the int8 activation ranges are calibrated on
    select_max_images: int = 0  # AP on at most N selection images (0: all)
    bench: BenchSettings = field(default_factory=BenchSettings)
    budget_margin: float = 0.1  # a candidate fits when it measures at most budget · (1 − margin)
    select_fraction: float = SELECT_FRACTION
    startup_trials: int = 10  # TPE's random trials before it models the space
    # The width x resolution grid (`grid`) as the study's first trials, scored like every candidate
    grid: bool = True
    seed: int = 0  # the sampler's
    synth_train: int | None = None  # --data synth only
    synth_val: int | None = None
    latency_lock: str = ""  # file serialising latency measurements across processes ("": per machine)
    heartbeat_s: int = 60  # a worker's trials are failed and retried when it is silent this long ×2
    finalists: FinalistSettings = field(default_factory=FinalistSettings)

    @classmethod
    def full(cls, **overrides) -> "SearchSettings":
        return cls(**overrides)

    @classmethod
    def quick(cls, **overrides) -> "SearchSettings":
        """About 30 minutes for ``--data synth`` on 2 CPU cores, at least 40 candidates scored."""
        settings = dict(space=SearchSpace(resolutions=[160, 192, 224, 256, 288, 320]), width=0.5,
                        supernet=SupernetSettings(epochs=3, batch_size=16, lr=0.03, warmup_steps=30, augment="light",
                                                  random_subnets=1),
                        trials=40, bn_batches=4, calibration_batches=2, select_max_images=0,
                        bench=BenchSettings(runs=30, warmup=2, time_cap_s=10.0, images=8), startup_trials=10,
                        synth_train=1200, synth_val=200,
                        # the design's quick fine-tuning: 40 batches of 16, QAT, lr 0.005
                        finalists=FinalistSettings(
                            schedule=Schedule(epochs=1, lr=0.005, warmup_steps=0, limit_train_batches=40),
                            training=TrainingSettings(batch_size=16, augment="light", workers=1, max_val_images=100,
                                                      checkpoint_every=25)))
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def from_dict(cls, data: dict) -> "SearchSettings":
        return from_dict(cls, data, where="search settings")

    def validate(self) -> None:
        s = self.supernet
        checks = [
            (self.width > 0, "--width must be > 0"),
            (self.trials >= 1, "--trials must be >= 1"),
            (self.time_budget_min >= 0, "--time-budget-min must be >= 0 (0: no limit)"),
            (min(s.epochs, s.batch_size - 1, s.random_subnets + 1) >= 1,
             "supernet: epochs >= 1, batch_size >= 2, random_subnets >= 0"),
            (s.lr > 0 and s.init_lr > 0 and 0 <= s.momentum < 1 and s.weight_decay >= 0 and s.warmup_steps >= 0,
             "supernet: lr > 0, init_lr > 0, momentum in [0, 1), weight_decay >= 0, warmup_steps >= 0"),
            (self.bn_batches >= 1 and self.calibration_batches >= 1, "bn_batches and calibration_batches >= 1"),
            (self.bench.threads >= 0, "--threads must be >= 0"),
            (self.bench.runs >= 1 and self.bench.images >= 1 and self.bench.time_cap_s > 0,
             "bench: runs >= 1, images >= 1, time_cap_s > 0"),
            (0 <= self.budget_margin < 1, "--budget-margin must be in [0, 1)"),
            (0 < self.select_fraction < 1, "--select-fraction must be between 0 and 1 (exclusive)"),
            (self.heartbeat_s >= 1, "heartbeat_s must be >= 1"),
            (self.finalists.schedule.epochs >= 1 and self.finalists.training.batch_size >= 2
             and self.finalists.schedule.limit_train_batches >= 0,
             "finalists: epochs >= 1, batch_size >= 2, limit_train_batches >= 0"),
        ]
        raise_first_failed(checks, "search settings: ")

    def latency_limit(self, budget_ms: float) -> float:
        """The latency a candidate may measure to fit `budget_ms`, `budget_margin` kept in reserve."""
        return budget_ms * (1.0 - self.budget_margin)
