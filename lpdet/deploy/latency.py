"""Per-image latency on this CPU: batch 1, end to end (graph + post-processing), models compared
interleaved until their medians are known to ±3%.

`compare_latency(paths, images=...)` is the one harness (`lpdet bench`, the design, the search
and `benchmarks/latency.py` use it): it loads every model (timed), warms them up together, then
runs rounds, each round timing every model once on the same image (real images cycle round by
round; the order within a round rotates so no model always runs first), until each median's and
each ratio-to-the-baseline's 95% interval (over passes through the images) is within
±`StopRule.target` or the time cap is hit (`lpdet.deploy.latency_stats` says how intervals are
computed). Drift from other jobs hits every model of a round alike, so paired ratios hold still
when single medians do not; pairs whose ratio interval includes 1 are reported as not separated
instead of ranked.

`benchmark(path)` and `benchmark_paired(paths)` are the fixed-round forms kept for their callers.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from lpdet.deploy.latency_inputs import benchmark_input, inputs_at, pinned_cpus
from lpdet.deploy.latency_report import (LatencyComparison, LatencyResult, describe_postprocess, format_comparison,
                                         format_latency, latency_to_dict)
from lpdet.deploy.latency_stats import StopRule, cycle_means, median_interval, ratio_interval, separation, stop_reason
from lpdet.deploy.model import DeployedModel
from lpdet.deploy.runtime import load_model
from lpdet.errors import LpdetError
from lpdet.models.postprocess import PostprocessConfig, select_detections
from lpdet.threads import torch_threads

__all__ = ["LatencyResult", "LatencyComparison", "StopRule", "compare_latency", "run_interleaved", "round_order",
           "benchmark", "benchmark_paired", "format_latency", "format_comparison", "latency_to_dict", "cpu_name",
           "benchmark_input", "describe_postprocess"]

Clock = Callable[[], float]


def cpu_name() -> str:
    """e.g. 'AMD EPYC 7B13 (2 logical CPUs)'."""
    name = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    return f"{name} ({os.cpu_count()} logical CPUs)"


def _runtime_name(model: DeployedModel) -> str:
    if model.kind.startswith("onnx"):
        return f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider"
    if model.kind.startswith("tflite"):
        return f"LiteRT (ai-edge-litert {version('ai-edge-litert')})"
    return f"torch {torch.__version__}"


@contextlib.contextmanager
def _torch_threads(threads: int):
    with torch_threads(threads), torch.inference_mode():
        yield


def _check(runs: int, warmup: int, threads: int) -> None:
    if runs < 1:
        raise LpdetError(f"runs: must be >= 1, got {runs}")
    if warmup < 0:
        raise LpdetError(f"warmup: must be >= 0, got {warmup}")
    if threads < 0:
        raise LpdetError(f"threads: must be >= 0 (0: runtime default), got {threads}")


WARMUP_SECONDS = 0.5  # measured here: the first ~0.4 s of runs after an idle spell are up to 1.5x slower


def _warm_up(run_once, warmup: int) -> None:
    """`warmup` untimed runs, continued until WARMUP_SECONDS have passed (`warmup` 0: none at all).
    A fixed count of a few runs of a 3 ms model is over before the CPU has come up to speed."""
    if warmup <= 0:
        return
    start = time.perf_counter()
    done = 0
    while done < warmup or time.perf_counter() - start < WARMUP_SECONDS:
        run_once()
        done += 1


# ----------------------------------------------------------------------------- the interleaved loop
def round_order(models: int, round_index: int) -> list[int]:
    """The order models run in round `round_index`: rotated by one each round, so each model takes
    each position in a round equally often (a model's cache state depends on what ran before it)."""
    return [(round_index + k) % models for k in range(models)]


@dataclass
class Rounds:
    """Per-model, per-round times in seconds (forward graph, post-processing) and why timing stopped."""

    forward_s: list[list[float]]
    post_s: list[list[float]]
    rounds: int
    stop_reason: str
    seconds: float

    def totals(self) -> list[np.ndarray]:
        return [np.asarray(f) + np.asarray(p) for f, p in zip(self.forward_s, self.post_s)]


def run_interleaved(steps: Sequence[Callable[[int], tuple[float, float]]], rule: StopRule, *,
                    baseline: int | list[int] = 0, cycle: int = 1, clock: Clock = time.perf_counter) -> Rounds:
    """Run rounds until `rule` says stop. `steps[i](r)` times model i once on round r's input and
    returns (forward_s, post_s). The rule is checked after each complete cycle of `cycle` rounds
    (one pass over the images; every 5 rounds for a single input), at its round bounds, and for the
    time cap before `min_rounds`."""
    check_every = cycle if cycle > 1 else 5
    forward_s = [[] for _ in steps]
    post_s = [[] for _ in steps]
    start = clock()
    for r in itertools.count():
        for i in round_order(len(steps), r):
            f, p = steps[i](r)
            forward_s[i].append(f)
            post_s[i].append(p)
        rounds = r + 1
        bound = rounds == rule.min_rounds or rounds == rule.max_rounds
        if rounds % check_every == 0 or bound or rounds < rule.min_rounds:
            totals = [np.asarray(f) + np.asarray(p) for f, p in zip(forward_s, post_s)]
            reason = stop_reason(totals, rounds, clock() - start, rule, baseline, cycle)
            if reason:
                return Rounds(forward_s, post_s, rounds, reason, clock() - start)
    raise AssertionError("unreachable")


def _timer(model: DeployedModel, inputs: list[torch.Tensor], cfg: PostprocessConfig, clock: Clock):
    def step(round_index: int) -> tuple[float, float]:
        images = inputs[round_index % len(inputs)]
        start = clock()
        if model.detect is not None:  # NMS inside the graph (lpdet.deploy.nms_graph): all of it is graph time
            model.detect(images, cfg)
            return clock() - start, 0.0
        if model.task == "classification":  # no post-processing
            model.forward(images)
            return clock() - start, 0.0
        scores, boxes = model.forward(images)
        middle = clock()
        select_detections(scores, boxes, cfg)
        return middle - start, clock() - middle

    return step


# ----------------------------------------------------------------------------- results
def _summarise(model: DeployedModel, forward_s, post_s, load_s: float, threads: int, cfg: PostprocessConfig,
               confidence: float, inputs: str, cycle: int) -> LatencyResult:
    """median_ms and its interval, forward_ms and postprocess_ms: medians over the cycles' means (the
    runs themselves with a single input); p90, min and mean: over single runs."""
    total = np.asarray(forward_s) + np.asarray(post_s)
    share = np.asarray(post_s) / np.maximum(total, 1e-12)
    ms = total * 1e3
    median = median_interval(cycle_means(ms, cycle), confidence)
    return LatencyResult(
        median_ms=median.value, p90_ms=float(np.percentile(ms, 90)), min_ms=float(ms.min()),
        mean_ms=float(ms.mean()), load_ms=load_s * 1e3,
        postprocess_ms=float(np.median(cycle_means(post_s, cycle)) * 1e3),
        postprocess_share=float(np.clip(np.median(share), 0.0, 1.0)), runs=len(ms), threads=threads,
        kind=model.kind, device=cpu_name(), forward_ms=float(np.median(cycle_means(forward_s, cycle)) * 1e3),
        path=str(model.path),
        resolution=model.resolution, runtime=_runtime_name(model), postprocess=asdict(cfg),
        median_interval_ms=None if median.low is None else [median.low, median.high], confidence=confidence,
        inputs=inputs, samples=median.samples)


def _load_timed(path: Path | str | DeployedModel, threads: int, resolution: int | None) -> tuple[DeployedModel, float]:
    if isinstance(path, DeployedModel):  # loaded by the caller: load time not measured here
        return path, 0.0
    with _torch_threads(threads):
        start = time.perf_counter()
        model = load_model(path, threads=threads, resolution=resolution)
        return model, time.perf_counter() - start


def _inputs_text(images: list) -> str:
    if not images:
        return "random noise (no images given)"
    return f"{len(images)} real image(s); a sample is the mean per-image time of one pass over them"


def compare_latency(paths: Sequence[Path | str | DeployedModel], *, images: list | None = None, threads: int = 1,
                    rule: StopRule | None = None, warmup: int = 5, baseline: int = 0,
                    baselines: Sequence[int] | None = None, postprocess: PostprocessConfig | None = None,
                    postprocess_overrides: dict | None = None, resolution: int | None = None,
                    cpus: Sequence[int] | None = None, clock: Clock = time.perf_counter) -> LatencyComparison:
    """Measure `paths` (checkpoints or exported models, or models already loaded with `load_model`)
    interleaved on this CPU (module docstring).

    `images`: PIL images from `latency_inputs.bench_images` (none: seeded noise, with a warning).
    Each result's `ratio` (with `ratio_interval`) is its per-round time over model `baseline`'s
    (or `baselines[i]`'s); `separations` says for every pair whether the intervals tell them apart.
    `postprocess` (else each model's own with `postprocess_overrides`) is the NMS timed; `cpus` pins
    the process for the measurement (restored afterwards)."""
    if not paths:
        raise LpdetError("no models to benchmark")
    rule = rule or StopRule()
    baselines = [baseline] * len(paths) if baselines is None else list(baselines)
    if len(baselines) != len(paths) or not all(0 <= b < len(paths) for b in baselines):
        raise ValueError(f"baselines: need one index in 0..{len(paths) - 1} per model, got {baselines}")
    if warmup < 0 or threads < 0:
        raise LpdetError(f"warmup and threads must be >= 0, got {warmup} and {threads}")
    images = list(images or [])
    with pinned_cpus(cpus):
        loaded = [_load_timed(p, threads, resolution) for p in paths]
        configs = [postprocess or replace(m.postprocess, **(postprocess_overrides or {})) for m, _ in loaded]
        inputs = {m.resolution: inputs_at(images, m.resolution) for m, _ in loaded}
        cycle = max(len(images), 1)  # rounds per pass over the images
        steps = [_timer(m, inputs[m.resolution], cfg, clock) for (m, _), cfg in zip(loaded, configs)]
        with _torch_threads(threads):
            _warm_up(lambda: [step(0) for step in steps], warmup)
            rounds = run_interleaved(steps, rule, baseline=baselines, cycle=cycle, clock=clock)
    totals = rounds.totals()
    cycled = [cycle_means(t, cycle) for t in totals]
    results = []
    for i, (model, load_s) in enumerate(loaded):
        result = _summarise(model, rounds.forward_s[i], rounds.post_s[i], load_s, threads, configs[i],
                            rule.confidence, _inputs_text(images), cycle)
        ratio = ratio_interval(cycled[i], cycled[baselines[i]], rule.confidence)
        result.ratio = ratio.value
        result.ratio_interval = None if ratio.low is None else [ratio.low, ratio.high]
        forward = [cycle_means(rounds.forward_s[j], cycle) for j in (i, baselines[i])]
        result.forward_ratio = float(np.median(forward[0] / np.maximum(forward[1], 1e-12)))
        results.append(result)
    pairs = [separation(totals, a, b, rule.confidence, cycle) for a, b in itertools.combinations(range(len(paths)), 2)]
    return LatencyComparison(results, baseline, rounds.rounds, rounds.stop_reason, rounds.seconds, rule.target,
                             list(cpus) if cpus else None, separations=pairs)


# ----------------------------------------------------------------------------- fixed-round forms
def benchmark(path: Path | str, *, threads: int = 1, runs: int = 50, warmup: int = 5,
              resolution: int | None = None, postprocess: PostprocessConfig | None = None,
              postprocess_overrides: dict | None = None, repeats: int = 1, images: list | None = None) -> LatencyResult:
    """Latency of one model (checkpoint or .onnx) at batch 1 with `threads` CPU threads
    (0: the runtime's default), over exactly `runs` timed images (`compare_latency` with one model
    and a fixed number of rounds). With `repeats` > 1 that is done `repeats` times and the repeat
    with the lowest median is returned (timeit's rule); every repeat's median is in `repeat_medians_ms`."""
    _check(runs, warmup, threads)
    if repeats < 1:
        raise LpdetError(f"repeats: must be >= 1, got {repeats}")
    model, load_s = _load_timed(path, threads, resolution)  # once: each repeat times the same session
    results = [compare_latency([model], images=images, threads=threads, rule=StopRule.fixed(runs),
                               warmup=warmup if k == 0 else 0, postprocess=postprocess,
                               postprocess_overrides=postprocess_overrides).results[0]
               for k in range(repeats)]
    best = min(results, key=lambda r: r.median_ms)
    best.load_ms = load_s * 1e3
    best.ratio = best.ratio_interval = best.forward_ratio = None
    if repeats > 1:
        best.repeat_medians_ms = [r.median_ms for r in results]
    return best


def benchmark_paired(paths: list[Path | str], *, threads: int = 1, runs: int = 50, warmup: int = 5,
                     postprocess: PostprocessConfig | None = None, baselines: list[int] | None = None,
                     images: list | None = None) -> list[LatencyResult]:
    """`compare_latency` over exactly `runs` rounds; each result's `ratio` is the median over rounds of
    its end-to-end time divided by that of model `baselines[i]` (default: the first model)."""
    if not paths:
        return []
    _check(runs, warmup, threads)
    return compare_latency(paths, images=images, threads=threads, rule=StopRule.fixed(runs), warmup=warmup,
                           baselines=baselines, postprocess=postprocess).results
