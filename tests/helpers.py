"""Small shared fixtures-as-functions for the tests: tiny datasets and tiny training configs."""

from __future__ import annotations

from pathlib import Path

from lpdet.models.config import ModelConfig
from lpdet.quant.qat import QatConfig
from lpdet.train.config import TrainConfig


def tiny_synth(root: Path, n_train: int = 12, n_val: int = 4, seed: int = 0) -> Path:
    """A tiny synthetic dataset; returns its dataset YAML."""
    from lpdet.data.synth import generate_synthetic_coco

    return generate_synthetic_coco(root, n_train, n_val, seed=seed, progress=False)


def tiny_train_config(data_yaml: Path, out: Path, *, arch: str = "mobilenet_v2_ssdlite", width: float = 0.25,
                      resolution: int = 96, qat: bool = False, qat_freeze_bn_after: int = 0,
                      qat_freeze_observers_after: int = 0, **overrides) -> TrainConfig:
    """A model and schedule small enough to train in seconds on 2 cores."""
    settings = dict(data=str(data_yaml), model=ModelConfig(arch, num_classes=0, width=width, resolution=resolution),
                    qat=QatConfig(freeze_bn_after=qat_freeze_bn_after, freeze_observers_after=qat_freeze_observers_after)
                    if qat else None, epochs=2, batch_size=4, lr=0.01, warmup_steps=2, workers=0, out=out,
                    checkpoint_every=2, threads=1,
                    precision="fp32")  # bit-exact runs (resume tests); bf16 has its own test
    settings.update(overrides)
    return TrainConfig(**settings)


def overfit_detector(root: Path, resolution: int = 128, n_images: int = 8):
    """The checked-in trained detector of `tests/fixtures/make_overfit_detector.py` (a width-0.5
    MobileNetV2-SSDLite overfitted on the first 32 synthetic val images, so that its detections
    mean something), loaded rather than trained so that it is the same model on every CPU; returns
    (detector in eval mode, the first `n_images` synthetic val images' dataset, their images)."""
    import json

    import torch
    from safetensors import safe_open

    from lpdet.models.registry import build_detector
    from tests.fixtures.make_overfit_detector import OUT, synthetic_val

    with safe_open(str(OUT), framework="pt") as weights:
        recipe = json.loads(weights.metadata()["recipe"])
        state = {key: weights.get_tensor(key) for key in weights.keys()}
    if resolution != recipe["resolution"]:
        raise ValueError(f"the fixture detector was trained at {recipe['resolution']}, not {resolution}")
    dataset = synthetic_val(root / "data", n_images, resolution)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    detector = build_detector(ModelConfig(recipe["arch"], dataset.num_classes, width=recipe["width"],
                                          resolution=resolution))
    detector.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    detector.eval()
    return detector, dataset, images
