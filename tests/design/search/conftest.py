"""A tiny search: a few synthetic images, width 0.25 at 96/128 pixels, a supernet trained for one
epoch with the sandwich rule, latency timed for a few rounds. Seconds, not minutes."""

from __future__ import annotations

from pathlib import Path

import pytest

from lpdet.design.search.sandwich import train_supernet
from lpdet.design.search.settings import FinalistSettings, SearchSettings, SupernetSettings
from lpdet.design.settings import BenchSettings, Schedule, TrainingSettings
from lpdet.design.splits import design_data
from lpdet.models.arch_space import SearchSpace
from tests.helpers import tiny_synth


def tiny_settings(lock: Path, **overrides) -> SearchSettings:
    settings = dict(space=SearchSpace(resolutions=[96, 128]), width=0.25,
                    supernet=SupernetSettings(epochs=1, batch_size=4, lr=0.01, warmup_steps=0, random_subnets=1,
                                              augment="light", workers=0),
                    trials=2, bn_batches=1, calibration_batches=1, select_fraction=0.25,
                    bench=BenchSettings(runs=3, warmup=0, time_cap_s=1.0, images=1),
                    latency_lock=str(lock), heartbeat_s=5,
                    # off unless a test turns them on: fine-tuning 2 batches of 4 in fp32
                    finalists=FinalistSettings(enabled=False, schedule=Schedule(epochs=1, lr=0.005, warmup_steps=0,
                                                                                limit_train_batches=2),
                                               training=TrainingSettings(batch_size=4, augment="light", workers=0,
                                                                         precision="fp32", max_val_images=3)))
    settings.update(overrides)
    return SearchSettings(**settings)


@pytest.fixture(scope="package")
def tiny_search(tmp_path_factory):
    """(settings, the dataset YAML with its selection split, the trained supernet checkpoint)."""
    root = tmp_path_factory.mktemp("search")
    settings = tiny_settings(root / "latency.lock")
    data = design_data(tiny_synth(root / "data", n_train=12, n_val=4), root / "selection",
                       settings.select_fraction).evaluation
    supernet = train_supernet(settings, data, root / "supernet", progress=False)
    return settings, data, supernet
