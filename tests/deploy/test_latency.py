import json

import pytest
import torch

from lpdet.deploy.export import export_onnx
from lpdet.deploy.latency import LatencyResult, benchmark, benchmark_paired, format_latency, latency_to_dict
from lpdet.errors import LpdetError
from tests.deploy.tiny import CATEGORY_IDS, CLASS_NAMES, tiny_checkpoint, tiny_detector



@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("latency")
    detector = tiny_detector()
    ckpt = tiny_checkpoint(root / "ckpt", detector)
    onnx_path = export_onnx(detector, root / "m.onnx", metadata={"class_names": CLASS_NAMES,
                                                                  "category_ids": CATEGORY_IDS})
    return ckpt, onnx_path


def _sane(result: LatencyResult, runs: int) -> None:
    assert result.runs == runs and result.threads == 1
    assert 0 < result.min_ms <= result.median_ms <= result.p90_ms
    assert result.min_ms <= result.mean_ms
    assert 0 <= result.postprocess_share <= 1 and result.postprocess_ms >= 0
    assert 0 < result.forward_ms <= result.median_ms
    assert result.load_ms > 0 and result.device and result.resolution == 96


@pytest.mark.parametrize("which, kind", [(0, "torch-fp32"), (1, "onnx-fp32")])
def test_benchmark(models, which, kind):
    threads_before = torch.get_num_threads()
    result = benchmark(models[which], threads=1, runs=5, warmup=1)
    _sane(result, 5)
    assert result.kind == kind
    assert torch.get_num_threads() == threads_before  # restored
    text = format_latency(result)
    assert "median" in text and kind in text
    assert json.loads(json.dumps(latency_to_dict(result)))["kind"] == kind


def test_checkpoint_at_another_resolution(models):
    assert benchmark(models[0], runs=2, warmup=0, resolution=128).resolution == 128
    with pytest.raises(LpdetError, match="m.onnx: an ONNX graph has a fixed input size"):
        benchmark(models[1], runs=2, resolution=128)


def test_paired(models):
    results = benchmark_paired([models[1], models[0]], threads=1, runs=4, warmup=1)
    assert [r.kind for r in results] == ["onnx-fp32", "torch-fp32"]
    assert results[0].ratio == 1.0 and results[1].ratio > 0
    for r in results:
        _sane(r, 4)


def test_repeats_keep_the_lowest_median(models):
    result = benchmark(models[1], threads=1, runs=3, warmup=0, repeats=3)
    _sane(result, 3)
    assert len(result.repeat_medians_ms) == 3 and result.median_ms == min(result.repeat_medians_ms)
    assert "lowest-median of 3 repeats" in format_latency(result)
    assert len(latency_to_dict(result)["repeat_medians_ms"]) == 3
    assert benchmark(models[1], runs=2, warmup=0).repeat_medians_ms is None  # one repeat: nothing to list


def test_bad_arguments(models):
    with pytest.raises(LpdetError, match="runs"):
        benchmark(models[1], runs=0)
    with pytest.raises(LpdetError, match="repeats"):
        benchmark(models[1], runs=2, repeats=0)


def test_warm_up_runs_for_a_minimum_time(monkeypatch):
    import lpdet.deploy.latency as latency

    calls = []
    monkeypatch.setattr(latency, "WARMUP_SECONDS", 0.05)
    latency._warm_up(lambda: calls.append(1), 2)
    assert len(calls) > 2  # a fast run goes on until the time is up, not just twice
    calls.clear()
    latency._warm_up(lambda: calls.append(1), 0)
    assert calls == []  # warmup 0: none at all
