"""Small shared fixtures-as-functions for the tests: tiny datasets and tiny training configs."""

from __future__ import annotations

from pathlib import Path

from lpdet.train.config import TrainConfig


def tiny_synth(root: Path, n_train: int = 12, n_val: int = 4, seed: int = 0) -> Path:
    """A tiny synthetic dataset; returns its dataset YAML."""
    from lpdet.data.synth import generate_synthetic_coco

    return generate_synthetic_coco(root, n_train, n_val, seed=seed, progress=False)


def tiny_train_config(data_yaml: Path, out: Path, **overrides) -> TrainConfig:
    """A model and schedule small enough to train in seconds on 2 cores."""
    settings = dict(data=str(data_yaml), arch="mobilenet_v2_ssdlite", width=0.25, resolution=96, epochs=2,
                    batch_size=4, lr=0.01, warmup_steps=2, workers=0, out=out, checkpoint_every=2, threads=1)
    settings.update(overrides)
    return TrainConfig(**settings)
