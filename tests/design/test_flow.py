"""The whole design flow end to end on a tiny model: report, final model, then fully cached."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

import lpdet.design.trials as trials
from lpdet.design.flow import DesignSettings, design
from lpdet.design.settings import BenchSettings, Schedule, TrainingSettings
from lpdet.errors import LpdetError
from lpdet.serialize import to_dict
from tests.helpers import tiny_synth


def tiny_settings() -> DesignSettings:
    return DesignSettings(width=0.25, base_resolution=128, resolutions=[128, 96], table_resolutions=[],
                          finetune_top=1, float_training=Schedule(epochs=1, lr=0.01, warmup_steps=1),
                          qat_training=Schedule(epochs=1, lr=0.005, warmup_steps=1),
                          finetuning=Schedule(epochs=1, lr=0.005, warmup_steps=1),
                          training=TrainingSettings(batch_size=4, workers=0, threads=1, max_val_images=0,
                                                    checkpoint_every=0, precision="fp32"),
                          bench=BenchSettings(runs=3, warmup=1, repeats=1),
                          compare_runs=2, calibration_images=2, small_max=18.0, nms_ious=[0.6, 0.3])


def test_presets_round_trip():
    quick, full = DesignSettings.quick(), DesignSettings.full()
    assert quick.width < full.width and quick.float_training.epochs < full.float_training.epochs
    assert DesignSettings.from_dict(json.loads(json.dumps(to_dict(quick)))) == quick
    assert full.candidates()[0] == 300 and 236 in full.candidates() and 296 in full.candidates()


def test_design_end_to_end_then_cached(tmp_path, monkeypatch):
    data = tiny_synth(tmp_path / "data", n_train=12, n_val=4)
    out = tmp_path / "design"
    result = design(data, 10_000.0, out, settings=tiny_settings(), progress=False)

    assert result.final_model == out / "final" / "model.onnx" and result.final_model.stat().st_size > 0
    summary = json.loads((out / "final" / "summary.json").read_text())
    for key in ("AP", "AP_small", "AP_medium", "AP_large", "latency_median_ms", "size_mb", "resolution", "nms_iou"):
        assert key in summary
    assert summary["meets_budget"] and summary["resolution"] in (128, 96) and summary["nms_iou"] in (0.6, 0.3)
    # the chosen NMS setting travels in the model, so lpdet bench / eval use what the report measured
    from lpdet.deploy.runtime import load_model

    deployed = load_model(result.final_model)
    assert deployed.postprocess.nms_iou == summary["nms_iou"] and deployed.postprocess.top_k == summary["top_k"]
    md = (out / "report.md").read_text()
    for heading in ("Setup", "Table 11.1", "Table 11.2", "Figure 11.2", "Figures 11.3 / 11.4", "Table 11.3",
                    "Table 11.4", "Final model"):
        assert heading in md, heading
    assert "Why naive 8-bit holds or drops: folded weight range spread" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # Fig 11.2, 11.3, 11.4
    assert json.loads((out / "settings.json").read_text())["settings"]["width"] == 0.25
    for name in ("float-r128", "qat-r128", "quant-compare", "noft-r96-bench", "finetune-r128",
                 "finetune-r128-no-small", "final-finetune-r128-bench"):
        assert (out / "trials" / name / "result.json").is_file(), name
    assert result.trials_run and (out / "resolution" / "resolution_sweep.json").is_file()
    runs = json.loads((out / "filtering" / "filter_ablation.json").read_text())["runs"]
    # the filtered run sees fewer images, so it gets more epochs: about the same number of steps
    assert runs["filtered"]["train_images"] < runs["all"]["train_images"]
    assert runs["filtered"]["epochs"] > runs["all"]["epochs"]
    assert abs(runs["filtered"]["steps"] - runs["all"]["steps"]) <= runs["all"]["steps"] / 2

    # a second call redoes nothing: no training, no measurement
    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(trials, "train", no_training)
    again = design(data, 10_000.0, out, settings=tiny_settings(), progress=False)
    assert again.trials_run == [] and len(again.trials_cached) == len(result.trials_run) + len(result.trials_cached)
    assert again.summary["latency_median_ms"] == summary["latency_median_ms"]

    # an impossible budget: a clear error naming the fastest measured latency (from the cache)
    with pytest.raises(LpdetError, match=r"no resolution fits --budget-ms 0.001 .*: the fastest candidate"):
        design(data, 0.001, out, settings=tiny_settings(), progress=False)
    assert "no model meets the budget" in (out / "report.md").read_text()

    # the margin: a budget the fastest candidate meets, but not with half of it kept in reserve
    fastest = min(json.loads((out / "trials" / f"noft-r{r}-bench" / "result.json").read_text())
                  ["latency"]["median_ms"] for r in (128, 96))
    with pytest.raises(LpdetError, match=r"fits at <= "):
        design(data, fastest * 1.2, out, settings=replace(tiny_settings(), budget_margin=0.5), progress=False)
