"""Per-image latency of a deployed model: batch 1, end to end (forward + NMS), on this CPU.

`benchmark(path)` loads the model with `load_model` (timed), runs `warmup` untimed images (and
more until 0.5 s have passed: the CPU needs that long to come up to speed), then `runs` timed
ones, timing the graph (`forward`) and the post-processing (`select_detections`) separately so
the post-processing share is reported.

On a shared machine single medians drift with other jobs' load; to compare models (int8 vs
fp32) use `benchmark_paired`, which interleaves them image by image and reports the median
of the per-iteration time ratios, which is robust to load that changes slowly.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from lpdet.deploy.model import DeployedModel
from lpdet.deploy.runtime import load_model
from lpdet.errors import LpdetError
from lpdet.models.postprocess import PostprocessConfig, select_detections
from lpdet.threads import torch_threads

__all__ = ["LatencyResult", "benchmark", "benchmark_paired", "format_latency", "latency_to_dict", "cpu_name",
           "benchmark_input"]


@dataclass
class LatencyResult:
    median_ms: float  # end-to-end per image: forward + post-processing
    p90_ms: float
    min_ms: float
    mean_ms: float
    load_ms: float  # load_model wall time (session creation / checkpoint read)
    postprocess_ms: float  # median of the post-processing (select_detections) alone
    postprocess_share: float  # median over runs of postprocess / end-to-end, in [0, 1]
    runs: int
    threads: int
    kind: str  # DeployedModel.kind
    device: str  # CPU model and logical CPU count
    forward_ms: float = 0.0  # median of the graph alone
    path: str = ""
    resolution: int = 0
    runtime: str = ""  # e.g. "onnxruntime 1.32.0" / "torch 2.14.1"
    ratio: float | None = None  # benchmark_paired: median per-iteration end-to-end ratio to the baseline model
    forward_ratio: float | None = None  # benchmark_paired: the same for the graph alone (NMS excluded)
    postprocess: dict | None = None  # the PostprocessConfig timed (the model's own unless overridden)
    repeat_medians_ms: list[float] | None = None  # benchmark(repeats>1): every repeat's median (this is the lowest)


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


def benchmark_input(resolution: int, seed: int = 0) -> torch.Tensor:
    """The fixed batch-1 input every benchmark uses: uniform [0, 1] pixels from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, resolution, resolution, generator=generator)


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


def _time_once(model: DeployedModel, images: torch.Tensor, cfg: PostprocessConfig) -> tuple[float, float]:
    start = time.perf_counter()
    scores, boxes = model.forward(images)
    middle = time.perf_counter()
    select_detections(scores, boxes, cfg)
    end = time.perf_counter()
    return middle - start, end - middle


def _summarise(model: DeployedModel, forward_s: list[float], post_s: list[float], load_s: float,
               threads: int, cfg: PostprocessConfig) -> LatencyResult:
    total = np.asarray(forward_s) + np.asarray(post_s)
    share = np.asarray(post_s) / np.maximum(total, 1e-12)
    ms = total * 1e3
    return LatencyResult(
        median_ms=float(np.median(ms)), p90_ms=float(np.percentile(ms, 90)), min_ms=float(ms.min()),
        mean_ms=float(ms.mean()), load_ms=load_s * 1e3, postprocess_ms=float(np.median(post_s) * 1e3),
        postprocess_share=float(np.clip(np.median(share), 0.0, 1.0)), runs=len(ms), threads=threads,
        kind=model.kind, device=cpu_name(), forward_ms=float(np.median(forward_s) * 1e3), path=str(model.path),
        resolution=model.resolution, runtime=_runtime_name(model), postprocess=asdict(cfg),
    )


def _load_timed(path: Path | str, threads: int, resolution: int | None) -> tuple[DeployedModel, float]:
    with _torch_threads(threads):
        start = time.perf_counter()
        model = load_model(path, threads=threads, resolution=resolution)
        return model, time.perf_counter() - start


def benchmark(path: Path | str, *, threads: int = 1, runs: int = 50, warmup: int = 5,
              resolution: int | None = None, postprocess: PostprocessConfig | None = None,
              postprocess_overrides: dict | None = None, repeats: int = 1) -> LatencyResult:
    """Latency of one model (checkpoint or .onnx) at batch 1 with `threads` CPU threads
    (0: the runtime's default). Torch models run under `torch.set_num_threads(threads)` and
    `torch.inference_mode`; ONNX models in an ORT_ENABLE_ALL session with that many intra-op threads.

    With `repeats` > 1 the `runs` timed images are run that many times and the repeat with the
    lowest median is returned (timeit's rule: on a shared machine the others are inflated by
    other jobs' load); every repeat's median is in `repeat_medians_ms`."""
    _check(runs, warmup, threads)
    if repeats < 1:
        raise LpdetError(f"repeats: must be >= 1, got {repeats}")
    model, load_s = _load_timed(path, threads, resolution)
    # `postprocess`, else the model's own setting with `postprocess_overrides` (field -> value) applied
    cfg = postprocess or replace(model.postprocess, **(postprocess_overrides or {}))
    images = benchmark_input(model.resolution)
    results = []
    with _torch_threads(threads):
        _warm_up(lambda: _time_once(model, images, cfg), warmup)
        for _ in range(repeats):
            forward_s, post_s = [], []
            for _ in range(runs):
                f, p = _time_once(model, images, cfg)
                forward_s.append(f)
                post_s.append(p)
            results.append(_summarise(model, forward_s, post_s, load_s, threads, cfg))
    best = min(results, key=lambda r: r.median_ms)
    if repeats > 1:
        best.repeat_medians_ms = [r.median_ms for r in results]
    return best


def benchmark_paired(paths: list[Path | str], *, threads: int = 1, runs: int = 50, warmup: int = 5,
                     postprocess: PostprocessConfig | None = None,
                     baselines: list[int] | None = None) -> list[LatencyResult]:
    """Benchmark several models interleaved (each iteration runs every model once, in turn), so that
    load from other processes hits them alike. Each result's `ratio` is the median over iterations of
    its end-to-end time divided by that of model `baselines[i]` in the same iteration (default: the
    first model, so the first gets 1.0); `forward_ratio` is the same for the graph time alone."""
    if not paths:
        return []
    _check(runs, warmup, threads)
    baselines = [0] * len(paths) if baselines is None else list(baselines)
    if len(baselines) != len(paths) or not all(0 <= b < len(paths) for b in baselines):
        raise ValueError(f"baselines: need one index in 0..{len(paths) - 1} per model, got {baselines}")
    loaded = [_load_timed(p, threads, None) for p in paths]
    configs = [postprocess or model.postprocess for model, _ in loaded]  # each model's own unless given
    inputs = {m.resolution: benchmark_input(m.resolution) for m, _ in loaded}
    forward_s = [[] for _ in loaded]
    post_s = [[] for _ in loaded]
    with _torch_threads(threads):
        _warm_up(lambda: [_time_once(model, inputs[model.resolution], cfg)
                          for (model, _), cfg in zip(loaded, configs)], warmup)
        for _ in range(runs):
            for i, (model, _) in enumerate(loaded):
                f, p = _time_once(model, inputs[model.resolution], configs[i])
                forward_s[i].append(f)
                post_s[i].append(p)
    totals = [np.asarray(f) + np.asarray(p) for f, p in zip(forward_s, post_s)]
    results = []
    for i, (model, load_s) in enumerate(loaded):
        result = _summarise(model, forward_s[i], post_s[i], load_s, threads, configs[i])
        result.ratio = float(np.median(totals[i] / totals[baselines[i]]))
        graph = np.asarray(forward_s[i]) / np.asarray(forward_s[baselines[i]])
        result.forward_ratio = float(np.median(graph))
        results.append(result)
    return results


def format_latency(result: LatencyResult) -> str:
    """A short human-readable report."""
    lines = [
        f"{result.path}  ({result.kind}, {result.resolution}x{result.resolution}, batch 1)",
        f"device       {result.device}; {result.runtime}; {result.threads or 'default'} thread(s)",
        f"latency      median {result.median_ms:.2f} ms   p90 {result.p90_ms:.2f}   min {result.min_ms:.2f}   "
        f"mean {result.mean_ms:.2f}   ({result.runs} runs"
        + (f"; the lowest-median of {len(result.repeat_medians_ms)} repeats: "
           + ", ".join(f"{m:.2f}" for m in result.repeat_medians_ms) + ")" if result.repeat_medians_ms else ")"),
        f"  graph      {result.forward_ms:.2f} ms (median)",
        f"  postproc   {result.postprocess_ms:.2f} ms (median; {result.postprocess_share:.1%} of end-to-end)"
        + (f"; {describe_postprocess(result.postprocess)}" if result.postprocess else ""),
        f"load         {result.load_ms:.0f} ms",
    ]
    if result.ratio is not None:
        lines.append(f"ratio        {result.ratio:.3f} (paired median ratio to the baseline model)")
    return "\n".join(lines)


def describe_postprocess(settings: dict) -> str:
    """e.g. 'score > 0.01, NMS IoU 0.6, top-k 100'."""
    return (f"score > {settings['score_threshold']:g}, NMS IoU {settings['nms_iou']:g}, "
            f"top-k {settings['top_k']}")


def latency_to_dict(result: LatencyResult) -> dict:
    """Plain data for --json (floats rounded to 0.001 ms)."""
    data = asdict(result)
    for key, value in data.items():
        if isinstance(value, float):
            data[key] = round(value, 4)
        elif key == "repeat_medians_ms" and value:
            data[key] = [round(v, 4) for v in value]
    return data
