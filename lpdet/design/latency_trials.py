"""The design's latency measurements: the one harness, `lpdet.deploy.latency.compare_latency`, on real
val images, the models of a decision interleaved round by round in one run (drift hits them alike),
cached as a trial that is reused only if nothing it depends on changed (the models' content, the
images, the threads, the stopping rule, the NMS setting).

The statistic everywhere is the median over all timed passes with its 95% interval, p90 beside it.
A decision reads the median; the report says where an interval straddles the fit limit or two
candidates are not told apart (their paired ratio's interval contains 1) instead of pretending precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from lpdet.deploy.latency import StopRule, compare_latency
from lpdet.deploy.latency_inputs import bench_images
from lpdet.deploy.latency_report import comparison_to_dict
from lpdet.design.settings import BenchSettings
from lpdet.design.trials import TrialCache, data_identity, file_identity
from lpdet.models.postprocess import PostprocessConfig
from lpdet.serialize import to_dict

__all__ = ["stop_rule", "measure_interleaved", "interval_text", "straddles", "not_separated_from"]


def stop_rule(bench: BenchSettings) -> StopRule:
    """Rounds until every median and ratio to the base is within ±`target` (95%), at least `runs`
    rounds, at most `time_cap_s` seconds."""
    return StopRule(target=bench.target, min_rounds=bench.runs, time_cap_s=bench.time_cap_s)


def measure_interleaved(cache: TrialCache, name: str, models: Sequence[Path], data: Path, bench: BenchSettings, *,
                        baseline: int = 0, postprocess: PostprocessConfig | None = None) -> dict:
    """Trial `name`: `models` (ONNX files) timed together on `bench.images` val images of `data`; the
    result's ``comparison`` is `comparison_to_dict` (``models[i]``: median_ms, median_interval_ms, p90_ms,
    ratio to model `baseline` with ratio_interval, forward_ms, postprocess_ms; ``separations``)."""
    rule = stop_rule(bench)

    def fn(_directory: Path) -> dict:
        images = bench_images(data=str(data), count=bench.images)
        comparison = compare_latency(list(models), images=images, threads=bench.threads, rule=rule,
                                     warmup=bench.warmup, baseline=baseline, postprocess=postprocess)
        return {"comparison": comparison_to_dict(comparison)}

    spec = {"models": [file_identity(m) for m in models], "data": data_identity(data), "images": bench.images,
            "threads": bench.threads, "warmup": bench.warmup, "rule": asdict(rule), "baseline": baseline,
            "postprocess": to_dict(postprocess) if postprocess is not None else "each model's own"}
    return cache.run(name, spec, fn, kind="latency")["comparison"]


def interval_text(model: dict) -> str | None:
    """"[4.01, 4.30]" (the 95% interval of the median), or None when too few passes were timed."""
    low, high = model.get("median_interval_ms") or (None, None)
    return None if low is None else f"[{low:.2f}, {high:.2f}]"


def straddles(model: dict, limit_ms: float) -> bool:
    """The median's interval contains `limit_ms`: the machine cannot tell whether the model fits."""
    low, high = model.get("median_interval_ms") or (None, None)
    return low is not None and low <= limit_ms <= high


def not_separated_from(comparison: dict, index: int) -> list[int]:
    """Indices of the models whose paired ratio with model `index` has an interval containing 1."""
    pairs = [s for s in comparison["separations"] if index in (s["a"], s["b"]) and not s["separated"]]
    return sorted(s["b"] if s["a"] == index else s["a"] for s in pairs)
