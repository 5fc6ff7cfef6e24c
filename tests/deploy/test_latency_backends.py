"""Device latency backends, with a stand-in command (latency from the model file's size) and a
recorded sample of LiteRT benchmark_model's output: no phone, no board, no timing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lpdet.deploy.latency_backends import (AdbBenchmarkBackend, CommandBackend, measure_on_device,
                                           parse_benchmark_model, parse_milliseconds)
from lpdet.deploy.latency_cache import LatencyCache
from lpdet.errors import LpdetError

HERE = Path(__file__).parent
STAND_IN = f"{sys.executable} {HERE / 'fake_device_bench.py'} {{model}}"


@pytest.fixture
def two_models(tmp_path):
    a, b = tmp_path / "a.tflite", tmp_path / "b model.tflite"  # a space in the path travels as one argument
    a.write_bytes(b"x" * 400_000)  # the stand-in says 4 ms
    b.write_bytes(b"y" * 300_000)  # 3 ms
    return a, b


def test_command_backend_with_the_stand_in(two_models, tmp_path):
    cache = LatencyCache(tmp_path / "cache.json")
    comparison = measure_on_device(two_models, CommandBackend(STAND_IN), cache=cache)
    a, b = comparison.results
    assert a.median_ms == pytest.approx(4.0) and b.median_ms == pytest.approx(3.0)
    assert b.ratio == pytest.approx(0.75) and a.ratio == 1.0
    assert a.device == f"cmd:{STAND_IN}" and comparison.stop_reason == "device"
    stored = json.loads((tmp_path / "cache.json").read_text())
    assert stored["version"] == 1 and len(stored["entries"][a.device]) == 2


def test_many_numbers_give_an_interval(two_models):
    backend = CommandBackend(STAND_IN + " --runs 9")
    comparison = measure_on_device(two_models, backend)
    a, b = comparison.results
    assert a.runs == 9 and a.median_ms == pytest.approx(4.0)
    assert a.median_interval_ms[0] < 4.0 < a.median_interval_ms[1]
    # conservative unpaired ratio interval: b's low over a's high .. b's high over a's low
    assert b.ratio_interval[0] == pytest.approx(b.median_interval_ms[0] / a.median_interval_ms[1])
    assert comparison.separations[0].separated  # 3 ms vs 4 ms with ±2% spreads: told apart


def test_cache_is_keyed_by_device_and_content(two_models, tmp_path):
    cache = LatencyCache(tmp_path / "cache.json")
    measure_on_device([two_models[0]], CommandBackend(STAND_IN, device_id="board"), cache=cache)

    def unreachable(*args, **kwargs):
        raise AssertionError("the cached result should have been used")

    copy = tmp_path / "copy.tflite"
    copy.write_bytes(two_models[0].read_bytes())  # same content elsewhere: still cached
    cached = measure_on_device([copy], CommandBackend(STAND_IN, device_id="board", runner=unreachable), cache=cache)
    assert cached.results[0].median_ms == pytest.approx(4.0)
    with pytest.raises(AssertionError, match="cached result"):  # another device: measured
        measure_on_device([copy], CommandBackend(STAND_IN, device_id="other", runner=unreachable), cache=cache)
    with pytest.raises(AssertionError, match="cached result"):  # --fresh: measured again
        measure_on_device([copy], CommandBackend(STAND_IN, device_id="board", runner=unreachable), cache=cache,
                          fresh=True)


def test_a_corrupt_cache_is_ignored_and_rewritten(two_models, tmp_path, caplog):
    path = tmp_path / "cache.json"
    path.write_text("{not json")
    cache = LatencyCache(path)
    measure_on_device([two_models[1]], CommandBackend(STAND_IN), cache=cache)
    assert "unreadable latency cache" in caplog.text
    assert json.loads(path.read_text())["version"] == 1
    assert not list(tmp_path.glob(".cache.json.*"))  # no temporary file left behind


@pytest.mark.parametrize("suffix, message", [(" --fail", "failed (exit status 3): board unreachable"),
                                             (" --silent", "printed no latency in milliseconds")])
def test_command_errors_name_the_command(two_models, suffix, message):
    with pytest.raises(LpdetError, match="--latency-cmd") as info:
        measure_on_device([two_models[0]], CommandBackend(STAND_IN + suffix))
    assert message in str(info.value) and "fake_device_bench.py" in str(info.value)


def test_command_timeout_and_missing_program(two_models):
    def slow(argv, **kwargs):
        raise subprocess.TimeoutExpired(argv, kwargs["timeout"])

    with pytest.raises(LpdetError, match=r"did not finish within 5 s"):
        CommandBackend("ssh pi@board ./bench {model}", timeout_s=5, runner=slow).measure(two_models[0])
    with pytest.raises(LpdetError, match="'no-such-program-lpdet' not found"):
        CommandBackend("no-such-program-lpdet {model}").measure(two_models[0])
    with pytest.raises(LpdetError, match=r"needs \{model\}"):
        CommandBackend("ssh pi@board ./bench")


def test_command_construction():
    backend = CommandBackend("ssh pi@board './bench --runs 20' {model}")
    assert backend.command_for(Path("/m/a b.tflite")) == ["ssh", "pi@board", "./bench --runs 20", "/m/a b.tflite"]


def test_parse_milliseconds():
    assert parse_milliseconds("3.5\n4\n 1e1 ms\n", "cmd") == [3.5, 4.0, 10.0]
    with pytest.raises(LpdetError, match="cmd: printed no latency"):
        parse_milliseconds("error: -1\n", "cmd")


# ----------------------------------------------------------------------------- adb + benchmark_model
SAMPLE = (HERE / "benchmark_model_output.txt").read_text()


def test_parse_benchmark_model_sample():
    m = parse_benchmark_model(SAMPLE)
    # the steady-state count= line (not the warm-up one), microseconds -> ms
    assert m.summary_ms["avg"] == pytest.approx(11.8732) and m.summary_ms["min"] == pytest.approx(11.604)
    assert m.summary_ms["max"] == pytest.approx(13.517) and m.summary_ms["std"] == pytest.approx(0.301)
    assert m.median_ms == pytest.approx(11.8732) and m.statistic == "avg"


def test_parse_benchmark_model_percentiles_when_printed():
    text = SAMPLE.replace("avg=11873.2 std=301", "avg=11873.2 std=301 p5=11650 median=11820 p95=12400")
    m = parse_benchmark_model(text)
    assert m.median_ms == pytest.approx(11.82) and m.statistic == "median" and m.summary_ms["p95"] == 12.4
    with pytest.raises(LpdetError, match="no timing statistics"):
        parse_benchmark_model("ERROR: Could not open '/data/local/tmp/x.tflite'.\n")


class FakeAdb:
    """Records adb calls; answers the phone's questions and benchmark_model's run with the sample."""

    def __init__(self):
        self.calls = []

    def __call__(self, argv, **kwargs):
        self.calls.append(argv)
        if "getprop" in argv:
            out = "Pixel 2\n"
        elif "get-serialno" in argv:
            out = "HT1234\n"
        elif any(a.endswith("benchmark_model") for a in argv):
            out = SAMPLE
        else:
            out = ""
        return subprocess.CompletedProcess(argv, 0, out, "")


def test_adb_backend_pushes_runs_parses_and_cleans_up(two_models, tmp_path):
    adb = FakeAdb()
    backend = AdbBenchmarkBackend(threads=4, runs=30, runner=adb)
    comparison = measure_on_device([two_models[0]], backend, cache=LatencyCache(tmp_path / "c.json"))
    assert comparison.results[0].median_ms == pytest.approx(11.8732)
    assert backend.device_id == "adb:HT1234:Pixel 2|threads=4"
    push, run, clean = adb.calls[-3:]
    remote = push[-1]
    assert push[:3] == ["adb", "push", str(two_models[0])] and remote.startswith("/data/local/tmp/lpdet-")
    assert run == ["adb", "shell", "/data/local/tmp/benchmark_model", f"--graph={remote}", "--num_threads=4",
                   "--num_runs=30"]
    assert clean == ["adb", "shell", "rm", "-f", remote]


def test_adb_backend_command_with_a_serial_and_a_wrong_file(tmp_path):
    backend = AdbBenchmarkBackend(serial="emulator-5554", extra_args=["--use_xnnpack=true"], runner=FakeAdb())
    push, run, _ = backend.commands_for(Path("m.tflite"), "x.tflite")
    assert push[:3] == ["adb", "-s", "emulator-5554"] and run[-1] == "--use_xnnpack=true"
    assert backend.device_id == "adb:emulator-5554:Pixel 2|threads=1|--use_xnnpack=true"
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"0")
    with pytest.raises(LpdetError, match="export one with lpdet export --format tflite-int8"):
        backend.measure(onnx)


def test_bench_cli_with_a_latency_command(two_models, tmp_path, capsys):
    from lpdet.cli import main

    cache = tmp_path / "cache.json"
    argv = ["bench", *map(str, two_models), "--latency-cmd", STAND_IN, "--latency-cache", str(cache)]
    assert main(argv + ["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [round(m["median_ms"], 3) for m in data["models"]] == [4.0, 3.0] and data["stop_reason"] == "device"
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "0.750" in out and "the command" in out
    assert main(argv + ["--adb"]) == 2
    assert "choose one device backend" in capsys.readouterr().err


def test_measure_latency_dispatches(two_models, tmp_path):
    from lpdet.deploy.export import export_onnx
    from lpdet.deploy.latency import StopRule
    from lpdet.deploy.latency_backends import measure_latency
    from tests.deploy.tiny import CLASS_NAMES, tiny_detector

    on_device = measure_latency(two_models, backend=CommandBackend(STAND_IN))
    assert on_device.stop_reason == "device" and on_device.results[1].median_ms == pytest.approx(3.0)
    model = export_onnx(tiny_detector(), tmp_path / "m.onnx", metadata={"class_names": CLASS_NAMES})
    here = measure_latency([model], rule=StopRule.fixed(3), warmup=0)  # no backend: this machine, interleaved
    assert here.stop_reason == "fixed rounds" and here.results[0].kind == "onnx-fp32" and here.rounds == 3
