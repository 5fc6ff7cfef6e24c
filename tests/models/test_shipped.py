"""The float base detector shipped for the embedded synthetic data scores what it records."""

from __future__ import annotations

import json

import pytest
import torch

from lpdet.cli import main as lpdet
from lpdet.data.synth import generate_synthetic_coco
from lpdet.models.checkpoint_format import WEIGHTS, load_checkpoint
from lpdet.models.shipped import SYNTH_BASE, synth_base_checkpoint, synth_base_provenance


def test_shipped_base_is_a_float_fp16_checkpoint_with_its_recipe():
    info = synth_base_provenance()
    ckpt = load_checkpoint(synth_base_checkpoint())
    config = ckpt.model_config
    assert (config.arch, config.width, config.resolution, config.quantization) == \
        ("mobilenet_v2_ssdlite", 0.5, 300, "fp32")
    assert all(v.dtype == torch.float16 for v in ckpt.model_state.values() if v.is_floating_point())
    assert (SYNTH_BASE / WEIGHTS).stat().st_size < 8e6  # a few MB, fit for a repository
    assert info["recipe"] and info["training_seconds"] > 0 and info["machine"]["cpu"]
    assert info["data"]["select_fraction"] == 0.1  # the design's default: the base never saw its selection split


def test_shipped_base_scores_its_recorded_ap_on_the_embedded_val(tmp_path, capsys):
    info = synth_base_provenance()
    # the embedded val split alone: images are drawn from (seed, split, index), whatever the train size
    data = generate_synthetic_coco(tmp_path / "synth", 0, info["data"]["val_images"], seed=info["data"]["seed"],
                                   progress=False)
    assert lpdet(["eval", str(SYNTH_BASE), "--data", str(data), "--json", "--quiet", "--threads", "2",
                  "--results", str(tmp_path / "results.json")]) in (None, 0)
    measured = json.loads(capsys.readouterr().out)
    assert measured["images"] == info["val_images"]
    # fp32 arithmetic on another CPU's kernels may move a few scores; the AP holds to the third decimal
    for key in ("AP", "AP_small", "AP_medium", "AP_large"):
        assert measured[key] == pytest.approx(info["val_metrics"][key], abs=0.002), key
