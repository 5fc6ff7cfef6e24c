"""One search candidate, scored as it would be deployed.

`score_candidate`: the candidate inherits the trained super-network's weights
(`lpdet.models.inherit`), its BatchNorm statistics are recalibrated on training images (the
supernet's do not fit once channels and blocks are gone), it is prepared for QAT and its
activation ranges calibrated on training images, then exported as the int8 QDQ ONNX graph
onnxruntime fuses into QLinearConv (`lpdet.deploy.export`); that ONNX file is what is scored:

* AP on the **selection** split (held out from train; val is never looked at by the search);
* latency with the one harness, `compare_latency`, on real val images, end to end (graph + NMS,
  whose cost depends on the predictions), batch 1, the deployed thread count. One measurement
  at a time per machine: a file lock (`filelock`) serialises it across processes, so two search
  workers never time their models at once.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from filelock import FileLock

from lpdet.data.splits import eval_split
from lpdet.deploy.export import export_onnx
from lpdet.deploy.latency import compare_latency
from lpdet.deploy.latency_inputs import bench_images
from lpdet.deploy.ptq import load_calibration_images
from lpdet.deploy.runtime import load_model
from lpdet.design.latency_trials import stop_rule
from lpdet.design.search.settings import SearchSettings
from lpdet.errors import LpdetError
from lpdet.eval.coco_eval import evaluate
from lpdet.models.arch_space import ArchCandidate, geometry_problems, member_config
from lpdet.models.checkpoint_format import load_checkpoint
from lpdet.models.detector import Detector
from lpdet.models.inherit import Supernet, inherit, recalibrate_bn
from lpdet.quant.qat import calibrate, prepare_qat
from lpdet.serialize import save_yaml

__all__ = ["SearchContext", "CandidateScore", "CandidateRejected", "load_context", "inherited", "deployable", "score_candidate",
           "latency_lock", "export_candidate", "CANDIDATE_YAML", "MODEL_ONNX"]

CANDIDATE_YAML = "candidate.yaml"
MODEL_ONNX = "model.onnx"


class CandidateRejected(LpdetError):
    """A candidate that fails the multiple-of-8 channel check of `lpdet model info`."""


def latency_lock(settings: SearchSettings) -> Path:
    """The lock file every latency measurement on this machine takes (settings.latency_lock, else one
    per machine in the temporary folder)."""
    return Path(settings.latency_lock) if settings.latency_lock else Path(tempfile.gettempdir()) / "lpdet-latency.lock"


@dataclass
class SearchContext:
    """What scoring a candidate needs, loaded once per worker."""

    settings: SearchSettings
    supernet: Supernet
    class_names: list[str]
    category_ids: list[int]
    data: Path  # the dataset YAML with train (fit part), select and val
    bench_images: list  # real val images (PIL), the latency inputs
    _calibration: dict[int, torch.Tensor] = field(default_factory=dict)

    def training_images(self, resolution: int) -> torch.Tensor:
        """The fixed training images BN is recalibrated and int8 ranges are calibrated on, at `resolution`."""
        if resolution not in self._calibration:
            s = self.settings
            count = max(s.bn_batches, s.calibration_batches) * s.supernet.batch_size
            self._calibration[resolution] = load_calibration_images(self.data, resolution, count)
        return self._calibration[resolution]


def load_context(settings: SearchSettings, data: Path, supernet_checkpoint: Path) -> SearchContext:
    ckpt = load_checkpoint(supernet_checkpoint)
    supernet = Supernet.from_state(ckpt.model_config, ckpt.model_state)
    images = bench_images(data=str(data), count=settings.bench.images)
    return SearchContext(settings, supernet, ckpt.class_names, ckpt.category_ids, Path(data), images)


@dataclass
class CandidateScore:
    """A candidate as measured: AP on the selection split and int8 latency of its ONNX file."""

    select_ap: float
    select_ap50: float
    latency_ms: float  # median end to end, batch 1
    latency_interval_ms: list[float] | None  # 95% interval of the median (None: too few passes)
    p90_ms: float
    onnx: Path


def inherited(candidate: ArchCandidate, ctx: SearchContext) -> Detector:
    """The candidate's float detector: the supernet's weights, BatchNorm recalibrated on training images."""
    cfg = member_config(candidate, ctx.supernet.config)
    detector = inherit(cfg, ctx.supernet)
    problems = geometry_problems(detector)
    if problems:
        raise CandidateRejected(f"candidate rejected: {len(problems)} layer(s) fail the multiple-of-8 check "
                         f"(first: {problems[0]})")
    recalibrate_bn(detector, _batches(candidate, ctx)[:ctx.settings.bn_batches])
    return detector


def _batches(candidate: ArchCandidate, ctx: SearchContext) -> list[torch.Tensor]:
    return list(ctx.training_images(candidate.resolution).split(ctx.settings.supernet.batch_size))


def deployable(candidate: ArchCandidate, ctx: SearchContext) -> Detector:
    """The candidate's QAT detector as it is exported: inherited, BN recalibrated, ranges calibrated."""
    detector = inherited(candidate, ctx)
    batches = _batches(candidate, ctx)
    prepare_qat(detector)
    calibrate(detector, batches[:ctx.settings.calibration_batches])
    return detector.eval()


def select_metrics(onnx: Path, ctx: SearchContext) -> dict[str, float]:
    """COCO metrics of the deployed `onnx` on the selection split."""
    deployed = load_model(onnx, threads=ctx.settings.bench.threads)
    dataset = eval_split(ctx.data, deployed.resolution, ctx.category_ids, split="select", where=str(onnx))
    result = evaluate(deployed.predict, dataset, batch_size=8, max_images=ctx.settings.select_max_images,
                      progress=False)
    return result.metrics


def measure(onnx: Path, ctx: SearchContext):
    """`compare_latency` of `onnx` on the real val images, holding the machine's latency lock."""
    bench = ctx.settings.bench
    with FileLock(str(latency_lock(ctx.settings))):
        comparison = compare_latency([onnx], images=ctx.bench_images, threads=bench.threads, rule=stop_rule(bench),
                                     warmup=bench.warmup)
    return comparison.results[0]


def export_candidate(candidate: ArchCandidate, ctx: SearchContext, directory: Path, *, source: str) -> Path:
    """``candidate.yaml`` and the int8 ``model.onnx`` in `directory` (deterministic: the same
    supernet and training images give the same file); returns the ONNX path."""
    directory.mkdir(parents=True, exist_ok=True)
    save_yaml(candidate, directory / CANDIDATE_YAML)
    metadata = {"class_names": ctx.class_names, "category_ids": ctx.category_ids, "source": source}
    return export_onnx(deployable(candidate, ctx), directory / MODEL_ONNX, metadata=metadata)


def score_candidate(candidate: ArchCandidate, ctx: SearchContext, directory: Path, *, source: str) -> CandidateScore:
    """Write ``candidate.yaml`` and the int8 ``model.onnx`` into `directory`; measure both scores."""
    onnx = export_candidate(candidate, ctx, directory, source=source)
    metrics = select_metrics(onnx, ctx)
    latency = measure(onnx, ctx)
    return CandidateScore(select_ap=float(metrics["AP"]), select_ap50=float(metrics["AP50"]),
                          latency_ms=float(latency.median_ms), latency_interval_ms=latency.median_interval_ms,
                          p90_ms=float(latency.p90_ms), onnx=onnx)
