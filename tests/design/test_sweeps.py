"""Sweeps: multiple-of-8 flags per resolution, the NMS sweep on a tiny trained checkpoint."""

from __future__ import annotations

import json

import pytest

from lpdet.design.nms import nms_sweep, nms_table
from lpdet.design.resolution import ResolutionRow, resolution_geometry
from lpdet.errors import LpdetError
from lpdet.train.loop import train
from tests.helpers import tiny_synth, tiny_train_config



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("nms")
    data = tiny_synth(root / "data", n_train=8, n_val=3)
    best = train(tiny_train_config(data, root / "run", epochs=1, resolution=64), progress=False)
    return data, best


@pytest.mark.parametrize("resolution, aligned", [(256, True), (128, True), (240, False), (236, False), (300, False)])
def test_resolution_flags_feature_maps_not_multiples_of_8(resolution, aligned):
    geometry = resolution_geometry("mobilenet_v2_ssdlite", 0.25, 3, resolution)
    row = ResolutionRow(resolution=resolution, **geometry)
    assert row.multiple_of_8 == (resolution % 8 == 0)
    assert row.aligned is aligned
    first = geometry["feature_maps"].split()[0]
    assert first == f"{-(-resolution // 16)}x{-(-resolution // 16)}"  # stride-16 map: ceil(R / 16)
    if resolution == 240:  # a multiple of 8 whose 15x15 map is not
        assert row.multiple_of_8 and row.misaligned_maps == ["backbone_s16 15x15"] and "15x15" in row.flag
    if resolution == 236:
        assert "input 236 not a multiple of 8" in row.flag
    if aligned:
        assert row.flag == "ok" and row.misaligned_layers == 0


def test_nms_sweep_one_row_per_iou(trained, tmp_path):
    data, best = trained
    ious = (0.30, 0.25, 0.20, 0.15, 0.10)
    sweep = nms_sweep(best, data, ious, threads=1, runs=2, warmup=0, out_dir=tmp_path / "nms", progress=False)
    assert [r.nms_iou for r in sweep.rows] == list(ious)
    assert sweep.images == 3
    for row in sweep.rows:
        assert set(row.metrics) >= {"AP", "AP_small", "AP_medium", "AP_large"}
        assert row.nms_ms > 0 and row.latency_ms == pytest.approx(row.forward_ms + row.nms_ms)
    # a lower IoU threshold never keeps more boxes
    counts = [r.detections_per_image for r in sweep.rows]
    assert counts == sorted(counts, reverse=True)
    assert len(nms_table(sweep).rows) == len(ious)
    saved = json.loads((tmp_path / "nms" / "nms_sweep.json").read_text())
    assert len(saved["rows"]) == len(ious) and (tmp_path / "nms" / "nms_sweep.md").is_file()
    # settings grid: IoU x score threshold x top-k
    grid = nms_sweep(best, data, (0.5, 0.3), score_thresholds=(0.01, 0.2), top_ks=(10,), runs=1, warmup=0,
                     progress=False)
    assert [(r.nms_iou, r.score_threshold, r.top_k) for r in grid.rows] == [
        (0.5, 0.01, 10), (0.5, 0.2, 10), (0.3, 0.01, 10), (0.3, 0.2, 10)]


def test_nms_sweep_rejects_bad_settings(trained):
    data, best = trained
    with pytest.raises(LpdetError, match="--ious"):
        nms_sweep(best, data, (0.3, 1.5), progress=False)
    with pytest.raises(LpdetError, match="--top-ks"):
        nms_sweep(best, data, (0.3,), top_ks=(0,), progress=False)


def test_filtered_run_gets_the_epochs_that_match_the_steps():
    from lpdet.design.filtering import matching_epochs

    assert matching_epochs(1, images=3600, kept=1800, batch_size=16) == 2  # 225 steps vs 112 per epoch
    assert matching_epochs(2, images=100, kept=100, batch_size=4) == 2
    # an epoch capped at 40 batches: both sets give 40 steps per epoch, so the same epochs
    assert matching_epochs(1, images=3600, kept=1800, batch_size=16, limit_train_batches=40) == 1
    # the filtered set too small for the cap: 30 steps per epoch against 40
    assert matching_epochs(3, images=3600, kept=480, batch_size=16, limit_train_batches=40) == 4
