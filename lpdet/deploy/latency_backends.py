"""Where latency is measured: this machine's onnxruntime (the default: `latency.compare_latency`), or
the user's device through a backend that runs an exported model there and reports milliseconds.

- `CommandBackend("ssh pi@board ./bench {model}")`: any command; `{model}` becomes the exported
  file's path; it prints milliseconds (every number in its standard output is taken as one sample,
  so it should print nothing else). The command copies the file to the board itself if it must.
- `AdbBenchmarkBackend()`: LiteRT's `benchmark_model` binary on an Android phone over `adb`: pushes
  the `.tflite` to /data/local/tmp, runs the binary there, and reads its steady-state statistics
  (`parse_benchmark_model`). The command construction and the parsing are tested on a recorded
  sample of the tool's documented output (tests/deploy/benchmark_model_output.txt), NOT on a real
  phone: check the first figures against the tool's own output.

Results are cached per device id and model content (`latency_cache.LatencyCache`), and
`measure_on_device` turns them into the same `LatencyComparison` that `lpdet bench` prints.
`measure_latency(paths, backend=...)` is the one call for callers that let the user choose.
"""

from __future__ import annotations

import math
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lpdet.deploy.latency_cache import LatencyCache
from lpdet.deploy.latency_report import LatencyComparison, LatencyResult
from lpdet.deploy.latency_stats import Interval, Separation, median_interval
from lpdet.errors import LpdetError

__all__ = ["DeviceMeasurement", "CommandBackend", "AdbBenchmarkBackend", "parse_milliseconds",
           "parse_benchmark_model", "measure_on_device", "measure_latency"]

Runner = Callable[..., subprocess.CompletedProcess]
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass
class DeviceMeasurement:
    samples_ms: list[float]  # every time the device reported (may be a single average)
    summary_ms: dict[str, float] = field(default_factory=dict)  # e.g. avg/min/max/std/p50/p90 when reported
    statistic: str = "median"  # what `median_ms` is: the samples' median, or the tool's "median"/"avg"

    @property
    def median_ms(self) -> float:
        if "median" in self.summary_ms:
            return self.summary_ms["median"]
        if len(self.samples_ms) == 1 and "avg" in self.summary_ms:
            return self.summary_ms["avg"]
        return float(np.median(self.samples_ms))


def _run(runner: Runner, argv: list[str], timeout_s: float, what: str) -> str:
    """stdout of `argv`; an LpdetError naming `what` if it cannot start, fails or times out."""
    try:
        done = runner(argv, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise LpdetError(f"{what}: {argv[0]!r} not found; check the command and PATH") from None
    except subprocess.TimeoutExpired:
        raise LpdetError(f"{what}: {shlex.join(argv)} did not finish within {timeout_s:g} s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise LpdetError(f"{what}: {shlex.join(argv)} failed (exit status {done.returncode}): {tail[0]}")
    return done.stdout or ""


def parse_milliseconds(text: str, what: str) -> list[float]:
    """Every positive number in `text` (milliseconds); an LpdetError naming `what` if there is none."""
    numbers = [float(m) for m in _NUMBER.findall(text)]
    numbers = [x for x in numbers if math.isfinite(x) and x > 0]
    if not numbers:
        shown = text.strip()[-200:] or "nothing"
        raise LpdetError(f"{what}: printed no latency in milliseconds (got: {shown!r}); make it print numbers only")
    return numbers


class CommandBackend:
    """Any command that measures an exported model and prints milliseconds (module docstring)."""

    def __init__(self, template: str, *, timeout_s: float = 600.0, device_id: str | None = None,
                 runner: Runner = subprocess.run):
        if "{model}" not in template:
            raise LpdetError(f"--latency-cmd {template!r}: needs {{model}} where the model's path goes, "
                             "e.g. \"ssh pi@board ./bench {model}\"")
        self.template, self.timeout_s, self.runner = template, timeout_s, runner
        self.device_id = device_id or f"cmd:{template}"
        self.description = f"the command {template!r}"

    def command_for(self, model: Path) -> list[str]:
        try:
            parts = shlex.split(self.template)
        except ValueError as e:
            raise LpdetError(f"--latency-cmd {self.template!r}: {e}") from None
        return [part.replace("{model}", str(model)) for part in parts]

    def measure(self, model: Path) -> DeviceMeasurement:
        what = f"--latency-cmd {self.template!r}"
        out = _run(self.runner, self.command_for(Path(model)), self.timeout_s, what)
        samples = parse_milliseconds(out, what)
        return DeviceMeasurement(samples, {"min": min(samples), "max": max(samples)})


_TIMINGS = re.compile(r"Inference timings in us:(.*)")
_STAT = re.compile(r"\bcount=\d+[^\n]*")
_PAIR = re.compile(r"([A-Za-z0-9_]+)=([-+]?[\d.]+(?:[eE][-+]?\d+)?)")


def parse_benchmark_model(text: str) -> DeviceMeasurement:
    """The steady-state latency from LiteRT `benchmark_model` output. It prints a `count=N first=..
    curr=.. min=.. max=.. avg=.. std=..` line for the warm-up and then for the timed runs (values in
    microseconds; newer builds may add percentiles such as `p5=.. median=.. p95=..`, read when present)
    and `Inference timings in us: ..., Inference (avg): X`. Returns milliseconds."""
    stats = _STAT.findall(text)
    timings = _TIMINGS.findall(text)
    if not stats and not timings:
        raise LpdetError("benchmark_model: no timing statistics in its output (expected 'count=... avg=...' and "
                         "'Inference timings in us: ...'); run it by hand to see why")
    summary = {}
    if stats:  # the last count= line is the steady state (the first is the warm-up)
        for key, value in _PAIR.findall(stats[-1]):
            if key not in ("count", "first", "curr"):
                summary[{"p50": "median"}.get(key, key)] = float(value) / 1e3
    if timings:
        avg = re.search(r"Inference \(avg\):\s*([\d.eE+-]+)", timings[-1])
        if avg:
            summary["avg"] = float(avg.group(1)) / 1e3
    if "avg" not in summary:
        raise LpdetError("benchmark_model: its output has no average inference time; run it by hand to see why")
    return DeviceMeasurement([summary["avg"]], summary, "median" if "median" in summary else "avg")


class AdbBenchmarkBackend:
    """LiteRT `benchmark_model` on an Android phone over adb (module docstring; untested on a real phone).

    The binary must be on the phone already (`adb push benchmark_model /data/local/tmp/`, from the
    LiteRT release or a build: see https://ai.google.dev/edge/litert/models/measurement)."""

    REMOTE_DIR = "/data/local/tmp"

    def __init__(self, *, serial: str | None = None, binary: str = "/data/local/tmp/benchmark_model",
                 threads: int = 1, runs: int = 50, extra_args: Sequence[str] = (), timeout_s: float = 600.0,
                 runner: Runner = subprocess.run):
        self.serial, self.binary, self.threads, self.runs = serial, binary, threads, runs
        self.extra_args, self.timeout_s, self.runner = list(extra_args), timeout_s, runner
        self._device_id: str | None = None
        self.description = f"benchmark_model over adb ({threads} thread(s), {runs} runs)"

    def _adb(self, *args: str) -> list[str]:
        return ["adb", *(["-s", self.serial] if self.serial else []), *args]

    @property
    def device_id(self) -> str:
        """'adb:<serial>:<phone model>' plus the settings that change the latency."""
        if self._device_id is None:
            serial = self.serial or _run(self.runner, self._adb("get-serialno"), 60, "adb").strip()
            model = _run(self.runner, self._adb("shell", "getprop", "ro.product.model"), 60, "adb").strip()
            extra = " ".join(self.extra_args)
            self._device_id = f"adb:{serial}:{model}|threads={self.threads}|{extra}".rstrip("|")
        return self._device_id

    def commands_for(self, model: Path, remote_name: str) -> tuple[list[str], list[str], list[str]]:
        """(push, run, clean-up) argv lists for `model`, stored on the phone as `remote_name`."""
        remote = f"{self.REMOTE_DIR}/{remote_name}"
        run = self._adb("shell", self.binary, f"--graph={remote}", f"--num_threads={self.threads}",
                        f"--num_runs={self.runs}", *self.extra_args)
        return self._adb("push", str(model), remote), run, self._adb("shell", "rm", "-f", remote)

    def measure(self, model: Path) -> DeviceMeasurement:
        model = Path(model)
        if model.suffix.lower() != ".tflite":
            raise LpdetError(f"{model}: benchmark_model runs .tflite files; export one with "
                             "lpdet export --format tflite-int8")
        push, run, clean = self.commands_for(model, f"lpdet-{LatencyCache.key(model)[:16]}.tflite")
        _run(self.runner, push, self.timeout_s, "adb push")
        try:
            return parse_benchmark_model(_run(self.runner, run, self.timeout_s, "benchmark_model"))
        finally:
            _run(self.runner, clean, 60, "adb shell rm")


def _result(path: Path, m: DeviceMeasurement, device_id: str, description: str, confidence: float) -> LatencyResult:
    samples = np.asarray(m.samples_ms)
    iv = median_interval(samples, confidence) if m.statistic == "median" and len(samples) > 1 else None
    s = m.summary_ms
    return LatencyResult(
        median_ms=m.median_ms, p90_ms=s.get("p90", float(np.percentile(samples, 90))),
        min_ms=s.get("min", float(samples.min())),
        mean_ms=s.get("avg", float(samples.mean())), load_ms=float("nan"), postprocess_ms=float("nan"),
        postprocess_share=float("nan"),
        runs=len(samples), threads=0, kind=path.suffix.lstrip(".").lower(), device=device_id, forward_ms=m.median_ms,
        path=str(path), runtime=description, confidence=confidence,
        median_interval_ms=None if iv is None or iv.low is None else [iv.low, iv.high],
        measures=f"what the device reports ({m.statistic} of its runs)")


def measure_on_device(paths: Sequence[Path | str], backend, *, cache: LatencyCache | None = None,
                      fresh: bool = False, confidence: float = 0.95) -> LatencyComparison:
    """Measure each model with `backend` (one after another: the device runs them, not this machine),
    reusing cached results for the same device and model content unless `fresh`. Ratios are to the
    first model; their interval, when both medians have one, is the conservative low_b/high_a ..
    high_b/low_a (the device's runs are not paired round by round)."""
    if not paths:
        raise LpdetError("no models to benchmark")
    results = []
    for path in map(Path, paths):
        if not path.is_file():
            raise LpdetError(f"{path}: no such exported model")
        entry = None if fresh or cache is None else cache.get(backend.device_id, path)
        if entry is None:
            m = backend.measure(path)
            if cache is not None:
                cache.put(backend.device_id, path, m.samples_ms, m.summary_ms, m.statistic)
        else:
            m = DeviceMeasurement(entry["samples_ms"], entry["summary_ms"], entry.get("statistic", "median"))
        results.append(_result(path, m, backend.device_id, backend.description, confidence))
    for r in results:
        r.ratio, r.ratio_interval = _ratio(r, results[0])
    pairs = [_separation(results, a, b) for a in range(len(results)) for b in range(a + 1, len(results))]
    return LatencyComparison(results, 0, 1, "device", 0.0, backend=backend.description, separations=pairs)


def measure_latency(paths: Sequence[Path | str], *, backend=None, cache: LatencyCache | None = None,
                    fresh: bool = False, **local) -> LatencyComparison:
    """Latency of `paths` compared to the first: on this machine (`backend` None: `latency.compare_latency`
    with the `local` keyword arguments: images, threads, rule, cpus, ...) or on a device backend
    (`measure_on_device`, cached in `cache`)."""
    if backend is None:
        from lpdet.deploy.latency import compare_latency

        return compare_latency(paths, **local)
    return measure_on_device(paths, backend, cache=cache, fresh=fresh)


def _ratio(r: LatencyResult, base: LatencyResult) -> tuple[float, list[float] | None]:
    value = r.median_ms / base.median_ms
    if r is base:
        return 1.0, [1.0, 1.0]
    if r.median_interval_ms is None or base.median_interval_ms is None:
        return value, None
    return value, [r.median_interval_ms[0] / base.median_interval_ms[1],
                   r.median_interval_ms[1] / base.median_interval_ms[0]]


def _separation(results: list[LatencyResult], a: int, b: int) -> Separation:
    value, interval = _ratio(results[b], results[a])
    ratio = Interval(value, *(interval or (None, None)), results[b].confidence, results[b].runs)
    return Separation(a, b, ratio, ratio.low is not None and not ratio.contains(1.0))
