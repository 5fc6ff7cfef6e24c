"""Where the design's float base comes from: the shipped detector, --base, or a training here."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lpdet.data.synth.style import SYNTH_CLASSES
from lpdet.design.base_model import BaseSource, check_base_classes, choose_base
from lpdet.design.settings import DesignSettings
from lpdet.errors import LpdetError
from lpdet.models.checkpoint_format import save_checkpoint
from lpdet.models.config import ModelConfig
from lpdet.models.registry import build_detector
from lpdet.models.shipped import SYNTH_BASE
from tests.helpers import tiny_synth


def _checkpoint(path: Path, config: ModelConfig, class_names=SYNTH_CLASSES) -> Path:
    detector = build_detector(config)
    return save_checkpoint(path, model=detector, model_config=config, class_names=list(class_names),
                           category_ids=list(range(1, len(class_names) + 1)))


def test_synth_starts_from_the_shipped_base_unless_told_otherwise():
    settings, start = choose_base(DesignSettings.quick(), "synth")
    assert start.source is BaseSource.SHIPPED and start.checkpoint == SYNTH_BASE
    assert (settings.arch, settings.width, settings.base_resolution) == ("mobilenet_v2_ssdlite", 0.5, 300)
    assert (settings.anchor_grid, settings.anchor_reference) == ("stride", 300)  # the base's anchors travel
    assert "AP" in start.description and "--from-scratch" in start.description
    for quick in (replace(DesignSettings.quick(), from_scratch=True),
                  replace(DesignSettings.quick(), backbone_weights=Path("mnv2.pth"))):
        assert choose_base(quick, "synth")[1].source is BaseSource.TRAINED
    # another width or architecture than the shipped one's, or the user's own data: trained here
    assert choose_base(DesignSettings.quick(), "synth", width=1.0)[1].source is BaseSource.TRAINED
    assert choose_base(DesignSettings.quick(), "synth", arch="mobilenet_v1_ssd")[1].source is BaseSource.TRAINED
    assert choose_base(DesignSettings.quick(), "my/data.yaml")[1].source is BaseSource.TRAINED
    assert "ImageNet backbone weights mnv2.pth" in choose_base(
        replace(DesignSettings.full(), backbone_weights=Path("mnv2.pth")), "my/data.yaml")[1].description


def test_given_base_decides_architecture_width_and_resolution(tmp_path):
    config = ModelConfig("mobilenet_v1_ssdlite", num_classes=len(SYNTH_CLASSES), width=0.25, resolution=96)
    path = _checkpoint(tmp_path / "base", config)
    settings, start = choose_base(replace(DesignSettings.quick(), base=path), "synth")
    assert start.source is BaseSource.GIVEN and start.checkpoint == path
    assert (settings.arch, settings.width, settings.base_resolution) == ("mobilenet_v1_ssdlite", 0.25, 96)
    assert (settings.anchor_grid, settings.anchor_reference) == ("map", None)  # an older checkpoint's anchors
    with pytest.raises(LpdetError, match="--width 0.5 contradicts --base"):
        choose_base(replace(DesignSettings.quick(), base=path), "synth", width=0.5)
    with pytest.raises(LpdetError, match="--base: .*no such checkpoint"):
        choose_base(replace(DesignSettings.quick(), base=tmp_path / "missing"), "synth")
    qat = _checkpoint(tmp_path / "qat", replace(config, quantization="qat"))
    with pytest.raises(LpdetError, match="a QAT checkpoint; pass the float detector"):
        choose_base(replace(DesignSettings.quick(), base=qat), "synth")


def test_base_must_know_the_dataset_classes(tmp_path):
    data = tiny_synth(tmp_path / "data", n_train=2, n_val=1)
    config = ModelConfig("mobilenet_v2_ssdlite", num_classes=2, width=0.25, resolution=96)
    _, start = choose_base(replace(DesignSettings.quick(), base=_checkpoint(tmp_path / "b", config, ["a", "b"])),
                           str(data))
    with pytest.raises(LpdetError, match=r"trained on classes \['a', 'b'\].*--from-scratch"):
        check_base_classes(start, data)
    good = replace(config, num_classes=len(SYNTH_CLASSES))
    _, start = choose_base(replace(DesignSettings.quick(), base=_checkpoint(tmp_path / "g", good)), str(data))
    check_base_classes(start, data)  # no error


def test_base_and_from_scratch_exclude_each_other():
    with pytest.raises(LpdetError, match="--base and --from-scratch"):
        replace(DesignSettings.quick(), base=Path("x"), from_scratch=True).validate()


def test_every_model_the_design_derives_keeps_the_base_anchors_in_pixels():
    from lpdet.design.settings import train_config, training_config
    from lpdet.models.config import kept_anchors

    settings, _ = choose_base(DesignSettings.quick(), "synth")
    base = training_config(settings, Path("data.yaml"), settings.qat_training, qat=True)
    assert (base.model.anchor_grid, base.model.anchor_reference) == ("stride", 300)
    at_192 = train_config("data.yaml", arch=base.model.arch, width=base.model.width, resolution=192,
                          **kept_anchors(base.model), epochs=1, batch_size=2)
    assert (at_192.model.resolution, at_192.model.anchor_grid, at_192.model.anchor_reference) == (192, "stride", 300)
    small, large = build_detector(replace(at_192.model, num_classes=2)), build_detector(replace(base.model, num_classes=2))
    # same box sizes in pixels: the 192 model's normalised sizes are 300/192 of the base's
    assert torch.allclose(small.anchors[0, 2:] * 192, large.anchors[0, 2:] * 300)
