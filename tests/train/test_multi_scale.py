import pytest
import torch

import lpdet.train.loop as loop
from lpdet.errors import LpdetError
from lpdet.models.checkpoint_format import load_checkpoint
from lpdet.models.config import ModelConfig
from lpdet.models.registry import build_detector
from lpdet.train.config import TrainConfig, load_train_config
from lpdet.train.multi_scale import (check_multi_scale, multi_scale_sizes, resized_batch, step_resolution,
                                     trained_at)
from lpdet.train.loop import train
from tests.helpers import tiny_synth, tiny_train_config


def test_sizes_are_the_multiples_of_8_in_the_range():
    assert multi_scale_sizes(60, 90) == [64, 72, 80, 88]
    assert multi_scale_sizes(96, 96) == [96]


def test_step_sizes_depend_only_on_seed_and_step():
    drawn = [step_resolution([64, 128], 96, seed=3, step=s) for s in range(200)]
    assert drawn == [step_resolution([64, 128], 96, seed=3, step=s) for s in range(200)]  # resume draws the same
    assert set(drawn) == set(multi_scale_sizes(64, 128))  # every size is used
    assert drawn != [step_resolution([64, 128], 96, seed=4, step=s) for s in range(200)]
    assert step_resolution(None, 96, seed=3, step=7) == 96


@pytest.mark.parametrize("bounds, message", [([128, 64], "MIN <= MAX"), ([8, 64], "MIN must be"),
                                             ([65, 71], "no multiple of 8")])
def test_bad_bounds_are_named(bounds, message):
    assert message in check_multi_scale(bounds)
    with pytest.raises(LpdetError, match="--multi-scale"):
        TrainConfig(multi_scale=bounds).validate()


def test_classifiers_reject_multi_scale():
    cfg = TrainConfig(model=ModelConfig("mobilenet_v2_classifier", num_classes=0, resolution=64), multi_scale=[64, 96])
    with pytest.raises(LpdetError, match="for detectors"):
        cfg.validate()


def test_trained_at_switches_anchors_and_restores_them():
    config = ModelConfig("mobilenet_v2_ssdlite", num_classes=3, width=0.25, resolution=96)
    detector = build_detector(config)
    anchors = detector.anchors.clone()
    images = resized_batch(torch.rand(2, 3, 96, 96), 64)
    assert images.shape == (2, 3, 64, 64)
    with trained_at(detector, 64):
        cls_logits, _ = detector(images)
        assert cls_logits.shape[1] == detector.anchors.shape[0] != anchors.shape[0]
        assert detector.config.anchor_reference == 96  # pixel sizes kept at 64
    assert detector.config.resolution == 96 and torch.equal(detector.anchors, anchors)
    assert detector.config == config  # not pinned: a checkpoint's config is the run's (no reference added)


def test_multi_scale_run_trains_at_drawn_sizes_and_keeps_its_resolution(tmp_path, monkeypatch):
    data_yaml = tiny_synth(tmp_path / "synth")
    seen = []
    real_forward_sizes = loop.resized_batch

    def record(images, resolution):
        seen.append(resolution)
        return real_forward_sizes(images, resolution)

    monkeypatch.setattr(loop, "resized_batch", record)
    cfg = tiny_train_config(data_yaml, tmp_path / "run", multi_scale=[64, 128], epochs=2)
    train(cfg, progress=False)
    expected = [step_resolution([64, 128], 96, cfg.seed, s) for s in range(len(seen))]
    assert seen == expected and len(set(seen)) > 1
    assert load_train_config(tmp_path / "run" / "config.yaml").multi_scale == [64, 128]
    assert load_checkpoint(tmp_path / "run" / "last").model_config.resolution == 96
