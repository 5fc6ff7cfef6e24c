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


# ----------------------------------------------------------------------------- the interleaved harness
from lpdet.deploy.latency import StopRule, compare_latency, round_order, run_interleaved  # noqa: E402
from lpdet.deploy.latency_report import comparison_to_dict, format_comparison  # noqa: E402


def test_round_order_rotates():
    assert [round_order(3, r) for r in range(4)] == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]
    # over a full rotation each model takes each position in the round exactly once
    positions = {(o.index(m), m) for o in (round_order(3, r) for r in range(3)) for m in range(3)}
    assert len(positions) == 9


class FakeClock:
    def __init__(self, tick=0.0):
        self.now, self.tick = 0.0, tick

    def __call__(self):
        self.now += self.tick
        return self.now


def test_run_interleaved_order_and_time_cap():
    """Steps return synthetic times and advance a fake clock: what runs when, and when it stops, is exact."""
    clock = FakeClock()
    calls = []

    def step(i, seconds):
        def run(r):
            calls.append((r, i))
            clock.now += seconds
            return seconds * (1 + 0.3 * ((r * 7919) % 13) / 13), 0.0  # noisy enough never to be precise
        return run

    rule = StopRule(target=0.03, min_rounds=4, time_cap_s=1.0)
    rounds = run_interleaved([step(0, 0.01), step(1, 0.04)], rule, clock=clock)
    assert calls[:6] == [(0, 0), (0, 1), (1, 1), (1, 0), (2, 0), (2, 1)]  # interleaved, order rotating
    assert rounds.stop_reason == "time cap" and rounds.rounds == 20  # 20 rounds x 50 ms = the 1 s cap
    assert len(rounds.forward_s[0]) == len(rounds.forward_s[1]) == 20


def test_run_interleaved_stops_when_precise_on_whole_cycles():
    clock = FakeClock()
    costs = [1.0, 2.0, 3.0, 2.0]  # four images of different cost, no noise

    def run(r):
        return costs[r % 4] * 1e-3, 1e-4

    rounds = run_interleaved([run, run], StopRule(min_rounds=10, time_cap_s=60), cycle=4, clock=clock)
    # precise once 6 complete cycles give a 95% interval (before that: no interval), checked per cycle
    assert rounds.stop_reason == "precise" and rounds.rounds == 24
    fixed = run_interleaved([run], StopRule.fixed(7), cycle=4, clock=clock)
    assert fixed.rounds == 7 and fixed.stop_reason == "fixed rounds"


def test_compare_latency_with_a_fake_clock(models):
    """Every clock call advances 1 ms: forward and NMS each take exactly 1 ms, whatever the CPU."""
    comparison = compare_latency([models[1], models[1]], threads=1, rule=StopRule(min_rounds=8, time_cap_s=1e6),
                                 warmup=0, clock=FakeClock(1e-3))
    assert comparison.stop_reason == "precise" and comparison.rounds == 8  # checked as min_rounds is reached
    for r in comparison.results:
        assert r.median_ms == pytest.approx(2.0) and r.median_interval_ms == pytest.approx([2.0, 2.0])
        assert r.forward_ms == pytest.approx(1.0) and r.postprocess_share == pytest.approx(0.5)
        assert r.ratio == pytest.approx(1.0) and "noise" in r.inputs
    assert [(s.a, s.b, s.separated) for s in comparison.separations] == [(0, 1, False)]  # equal: not separated
    text = format_comparison(comparison)
    assert "baseline" in text and "not separated" in text and "2.00 [2.00, 2.00]" in text
    data = json.loads(json.dumps(comparison_to_dict(comparison)))
    assert data["models"][1]["ratio_interval"] == [1.0, 1.0] and data["separations"][0]["separated"] is False


def test_compare_latency_on_real_images(models, tmp_path, caplog):
    from PIL import Image

    from lpdet.deploy.latency_inputs import bench_images, inputs_at

    for i in range(3):
        Image.new("RGB", (40 + 10 * i, 30), (50 * i, 100, 200)).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    files = sorted(tmp_path.glob("*.png"))
    images = bench_images(files)
    assert len(images) == 3 and "bad.png" in caplog.text  # the unreadable file is skipped, with a warning
    batch = inputs_at(images, 96)
    assert len(batch) == 3 and all(t.shape == (1, 3, 96, 96) and 0 <= t.min() and t.max() <= 1 for t in batch)
    result = compare_latency([models[1]], images=images, rule=StopRule.fixed(6), warmup=0).results[0]
    assert result.runs == 6 and "3 real image(s)" in result.inputs and result.median_ms > 0
    assert result.samples == 2 and "no CI, n=2" in result.median.text()  # 2 passes over 3 images: too few
    with pytest.raises(LpdetError, match="no readable benchmark images"):
        bench_images([tmp_path / "bad.png"])


def test_bench_images_from_a_dataset(tmp_path):
    from lpdet.deploy.latency_inputs import bench_images
    from tests.helpers import tiny_synth

    data = tiny_synth(tmp_path, n_train=2, n_val=3)
    assert len(bench_images(data=str(data), count=2)) == 2
    assert bench_images() == []


def test_noise_fallback_warns(monkeypatch, caplog):
    import lpdet.deploy.latency_inputs as inputs

    monkeypatch.setattr(inputs, "_warned_noise", False)
    (noise,) = inputs.inputs_at([], 32)
    assert noise.shape == (1, 3, 32, 32) and "random noise" in caplog.text


def test_pinned_cpus_restores_the_affinity():
    import os

    from lpdet.deploy.latency_inputs import parse_cpus, pinned_cpus

    assert parse_cpus("0,2-3, 5") == [0, 2, 3, 5]
    with pytest.raises(LpdetError, match="--cpus x"):
        parse_cpus("x")
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this OS")
    before = os.sched_getaffinity(0)
    one = min(before)
    with pinned_cpus([one]):
        assert os.sched_getaffinity(0) == {one}
    assert os.sched_getaffinity(0) == before
    import threading

    release, started = threading.Event(), threading.Event()
    worker = threading.Thread(target=lambda: (started.set(), release.wait()))
    with pinned_cpus([one]):
        worker.start()  # a thread started while pinned (as a runtime's pool would be)
        started.wait()
        assert os.sched_getaffinity(worker.native_id) == {one}
    assert os.sched_getaffinity(worker.native_id) == before  # ... is unpinned afterwards too
    release.set()
    worker.join()
    with pytest.raises(LpdetError, match="may only use CPUs"):
        with pinned_cpus([max(before) + 1000]):
            pass
    assert os.sched_getaffinity(0) == before
