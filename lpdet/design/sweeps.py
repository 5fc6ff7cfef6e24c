"""The design sweeps, each a set of cached trials (`lpdet.design.trials`) plus a table and plots.

* `resolution_sweep`: per input resolution, AP (int8, as deployed) and int8 latency of the
  checkpoint simply loaded at that resolution, and of a model fine-tuned (QAT) at it; flags the
  resolutions whose feature maps are not multiples of 8 (Table 11.2 / Fig 11.2 of the seed).
* `nms_sweep`: AP and end-to-end latency per NMS setting (IoU threshold, score threshold,
  top-k) of one deployed model (Table 11.3).
* `filtering_ablation`: the same training with and without the training images that hold small
  objects; AP_small / AP_medium / AP_large over training steps (Figs 11.3 / 11.4).

Every AP is COCO AP from pycocotools on the dataset's val split, computed on the deployed
model (`load_model(...).predict`), except the training curves, which come from each run's
``val.csv`` (the torch model evaluated after every epoch). Every latency is the median of
`lpdet.deploy.latency.benchmark` at batch 1 on this machine.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lpdet.data.filtering import filter_dataset
from lpdet.data.loader import make_loader
from lpdet.data.sizes import SizeThresholds, read_coco_json
from lpdet.data.spec import resolve_dataset
from lpdet.data.splits import eval_split
from lpdet.deploy.latency import benchmark, cpu_name, latency_to_dict
from lpdet.deploy.runtime import load_model
from lpdet.design.report import Figure, Table, line_plot
from lpdet.design.tables import ap_or_none, write_sweep_files
from lpdet.design.trials import TrialCache, data_identity, dataset_yaml, file_identity, read_val_csv
from lpdet.errors import LpdetError
from lpdet.eval.coco_eval import coco_metrics, detections_to_coco
from lpdet.models.checkpoint_format import load_checkpoint
from lpdet.models.config import ModelConfig, check_resolution, is_qat
from lpdet.models.postprocess import PostprocessConfig, select_detections
from lpdet.models.profile import ALIGNMENT, misalignment_reasons, profile_model
from lpdet.threads import torch_threads
from lpdet.train.config import TrainConfig

__all__ = [
    "ResolutionRow", "ResolutionSweep", "resolution_sweep", "resolution_geometry", "measure_int8",
    "NmsRow", "NmsSweep", "nms_sweep", "FilterAblation", "FilterTooSmall", "filtering_ablation",
    "resolution_table", "resolution_figure", "nms_table", "filter_figures", "filter_table",
]

SIZE_METRICS = ("AP_small", "AP_medium", "AP_large")


# ============================================================================ resolution
@dataclass
class ResolutionRow:
    resolution: int
    multiple_of_8: bool  # the input size itself
    feature_maps: str  # "19x19 10x10 5x5 3x3 2x2 1x1"
    misaligned_maps: list[str]  # SSD maps >= 8 whose size is not a multiple of 8, e.g. "backbone_s16 19x19"
    misaligned_layers: int  # conv layers whose output height/width (>= 8) is not a multiple of 8
    macs: int
    metrics: dict[str, float] = field(default_factory=dict)  # without fine-tuning (int8 as deployed)
    latency_ms: float | None = None  # int8 median, batch 1
    latency_p90_ms: float | None = None
    size_mb: float | None = None
    quantization: str = ""
    onnx: str = ""
    ft_metrics: dict[str, float] | None = None  # fine-tuned at this resolution
    ft_latency_ms: float | None = None
    ft_onnx: str | None = None
    ft_checkpoint: str | None = None
    ft_steps: int | None = None
    meets_budget: bool | None = None  # latency_ms <= budget (None without a budget)

    @property
    def aligned(self) -> bool:
        """Input and every SSD feature map of 8 or more a multiple of 8 (what phone kernels like)."""
        return self.multiple_of_8 and not self.misaligned_maps

    @property
    def flag(self) -> str:
        if self.aligned:
            return "ok"
        reasons = [] if self.multiple_of_8 else [f"input {self.resolution} not a multiple of 8"]
        reasons += [f"{m} not a multiple of 8" for m in self.misaligned_maps]
        return "; ".join(reasons)

    def to_dict(self) -> dict:
        return {**asdict(self), "aligned": self.aligned, "flag": self.flag}


@dataclass
class ResolutionSweep:
    rows: list[ResolutionRow]  # by decreasing resolution
    init: str
    data: str
    threads: int
    runs: int
    epochs: int
    qat: bool
    budget_ms: float | None = None
    device: str = ""
    repeats: int = 1

    def row(self, resolution: int) -> ResolutionRow | None:
        return next((r for r in self.rows if r.resolution == resolution), None)

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "rows"}
        data["rows"] = [r.to_dict() for r in self.rows]
        return data


def resolution_geometry(arch: str, width: float, num_classes: int, resolution: int) -> dict:
    """Feature-map sizes and multiple-of-8 geometry of the model at `resolution` (`profile_model`)."""

    profile = profile_model(ModelConfig(arch=arch, num_classes=num_classes, width=width, resolution=resolution))
    maps = profile.feature_maps
    spatial = [g for g in profile.misaligned if any("output height" in r or "output width" in r for r in g.reasons)]
    return {
        "multiple_of_8": resolution % ALIGNMENT == 0,
        "feature_maps": " ".join(f"{m.height}x{m.width}" for m in maps),
        "misaligned_maps": [f"{m.name} {m.height}x{m.width}" for m in maps
                            if misalignment_reasons(ALIGNMENT, m.height, m.width)],
        "misaligned_layers": len(spatial),
        "macs": int(profile.macs),
    }


def measure_int8(cache: TrialCache, prefix: str, checkpoint: Path, data: str | Path, *, resolution: int | None,
                 threads: int, runs: int, warmup: int, max_images: int = 0, calibration_images: int = 100,
                 evaluate: bool = True, benchmark: bool = True, int8: bool = True, repeats: int = 1) -> dict:
    """Trials ``<prefix>-export`` (int8 ONNX at `resolution`), ``<prefix>-eval`` (COCO AP of that ONNX on
    val) and ``<prefix>-bench`` (its latency). Returns ``{"export", "eval", "bench", "onnx"}`` (results)."""
    export = cache.export(f"{prefix}-export", checkpoint, resolution=resolution, int8=int8, data=data,
                          calibration_images=calibration_images)
    onnx = cache.file(export, "onnx")
    out = {"export": export, "onnx": onnx, "eval": None, "bench": None}
    if evaluate:
        out["eval"] = cache.evaluate(f"{prefix}-eval", onnx, data, max_images=max_images)
    if benchmark:
        out["bench"] = cache.benchmark(f"{prefix}-bench", onnx, threads=threads, runs=runs, warmup=warmup,
                                       repeats=repeats)
    return out


def _finetune_config(init: Path, data: Path, resolution: int, epochs: int, qat: bool, batch_size: int,
                     train_overrides: dict | None, model_config) -> TrainConfig:
    settings = dict(data=str(data), arch=model_config.arch, width=model_config.width, resolution=resolution,
                    epochs=epochs, batch_size=batch_size, lr=0.005, warmup_steps=20, init=Path(init), qat=qat,
                    out=Path("unused"))
    settings.update(train_overrides or {})
    return TrainConfig(**settings)


def resolution_sweep(init_ckpt: Path | str, data: str | Path, resolutions: Iterable[int], out_dir: Path | str, *,
                     epochs: int = 1, qat: bool = True, finetune: bool | Iterable[int] = True, batch_size: int = 32,
                     threads: int = 1, runs: int = 30, warmup: int = 5, repeats: int = 3, max_images: int = 0,
                     calibration_images: int = 100, budget_ms: float | None = None,
                     train_overrides: dict | None = None, cache: TrialCache | None = None, progress: bool = True,
                     write: bool = True) -> ResolutionSweep:
    """AP and int8 latency per resolution, without and with fine-tuning (see the module docstring).

    For each R: the checkpoint loaded at R (anchors recomputed; weights as they are) is exported
    int8 (a QAT checkpoint directly; a float one with calibrated PTQ), evaluated on val and
    benchmarked; with `finetune` (True: every R; or the resolutions to fine-tune) a model is
    trained from `init_ckpt` at R for `epochs` (QAT if `qat`; `train_overrides`: other TrainConfig
    fields) and measured the same way. `budget_ms` marks rows whose int8 latency fits. Writes
    ``out_dir/resolution_sweep.{md,json,png}`` (with `write`). Trials live in ``out_dir/trials``
    (or `cache`)."""

    resolutions = _check_resolutions(resolutions)
    if epochs < 1:
        raise LpdetError(f"--epochs {epochs}: must be >= 1")
    if budget_ms is not None and not budget_ms > 0:
        raise LpdetError(f"--budget-ms {budget_ms}: must be > 0")
    out_dir = Path(out_dir)
    cache = cache or TrialCache(out_dir / "trials", progress=progress)
    ckpt = load_checkpoint(init_ckpt)
    model_cfg = ckpt.model_config
    data_path = dataset_yaml(data)
    to_tune = set(resolutions) if finetune is True else set() if finetune is False else set(int(r) for r in finetune)
    int8 = qat or is_qat(ckpt.model_config)
    cache.plan(3 * len(resolutions) + 4 * len(to_tune & set(resolutions)))

    rows = []
    for r in sorted(resolutions, reverse=True):
        row = ResolutionRow(resolution=r, **resolution_geometry(model_cfg.arch, model_cfg.width,
                                                               len(ckpt.class_names), r))
        m = measure_int8(cache, f"noft-r{r}", ckpt.path, data_path, resolution=r, threads=threads, runs=runs,
                         warmup=warmup, max_images=max_images, calibration_images=calibration_images, int8=int8,
                         repeats=repeats)
        row.metrics = m["eval"]["metrics"]
        row.latency_ms = m["bench"]["latency"]["median_ms"]
        row.latency_p90_ms = m["bench"]["latency"]["p90_ms"]
        row.size_mb = m["export"]["size_mb"]
        row.quantization = m["export"]["quantization"]
        row.onnx = str(m["onnx"])
        if budget_ms is not None:
            row.meets_budget = row.latency_ms <= budget_ms
        if r in to_tune:
            cfg = _finetune_config(ckpt.path, data_path, r, epochs, qat, batch_size, train_overrides, model_cfg)
            trained = cache.train(f"finetune-r{r}", cfg)
            best = cache.file(trained, "best")
            ft = measure_int8(cache, f"finetune-r{r}", best, data_path, resolution=None, threads=threads, runs=runs,
                              warmup=warmup, max_images=max_images, calibration_images=calibration_images,
                              int8=int8, repeats=repeats)
            row.ft_metrics = ft["eval"]["metrics"]
            row.ft_latency_ms = ft["bench"]["latency"]["median_ms"]
            row.ft_onnx, row.ft_checkpoint, row.ft_steps = str(ft["onnx"]), str(best), trained["steps"]
        rows.append(row)

    sweep = ResolutionSweep(rows=rows, init=str(ckpt.path), data=str(data), threads=threads, runs=runs, epochs=epochs,
                            qat=qat, budget_ms=budget_ms, device=cpu_name(), repeats=repeats)
    if write:
        write_sweep_files(out_dir, "resolution_sweep", "Resolution sweep", [resolution_table(sweep)],
                          [resolution_figure(sweep)], sweep.to_dict(),
                          text=f"Initial checkpoint {sweep.init}; data {data}; int8 latency: median of {runs} "
                               f"batch-1 runs, {threads} thread(s), {sweep.device}.")
    return sweep


def _check_resolutions(resolutions: Iterable[int]) -> list[int]:
    values = []
    for r in resolutions:
        check_resolution(r, "--resolutions")
        if r not in values:
            values.append(r)
    if not values:
        raise LpdetError("--resolutions: give at least one resolution")
    return values


def resolution_table(sweep: ResolutionSweep, *, title: str = "AP and int8 latency vs input resolution",
                     reference: int | None = None) -> Table:
    """Table 11.2: one row per resolution; latency also as a % of the `reference` resolution's (default: the largest)."""
    ref = sweep.row(reference) if reference is not None else (sweep.rows[0] if sweep.rows else None)
    columns = ["resolution", "feature maps", "multiple of 8", "int8 latency ms", "% of ref latency"]
    if sweep.budget_ms is not None:
        columns.append("meets budget")
    columns += ["AP (no fine-tuning)", "AP (fine-tuned)", "latency fine-tuned ms", "AP_small", "AP_medium", "AP_large"]
    rows = []
    for r in sweep.rows:
        pct = (100 * r.latency_ms / ref.latency_ms) if ref and ref.latency_ms and r.latency_ms is not None else None
        cells = [r.resolution, r.feature_maps, "yes" if r.aligned else f"no: {r.flag}", r.latency_ms, pct]
        if sweep.budget_ms is not None:
            cells.append(r.meets_budget)
        sizes = r.ft_metrics if r.ft_metrics else r.metrics
        cells += [ap_or_none(r.metrics.get("AP")), ap_or_none(r.ft_metrics.get("AP")) if r.ft_metrics else None,
                  r.ft_latency_ms]
        cells += [ap_or_none(sizes.get(k)) for k in SIZE_METRICS]
        rows.append(cells)
    note = (f"int8 latency: median of {sweep.runs} batch-1 runs with {sweep.threads} thread(s) on {sweep.device}"
            f"{f' (lowest of {sweep.repeats} repeats)' if sweep.repeats > 1 else ''}, "
            f"of the checkpoint loaded at each resolution (% of the {ref.resolution if ref else '-'} row) and of the "
            f"fine-tuned model (same graph, measured again). Fine-tuning: {sweep.epochs} epoch(s) "
            f"{'QAT ' if sweep.qat else ''}from {sweep.init}. AP_small/medium/large: of the fine-tuned model where "
            f"there is one. 'multiple of 8': the input and every feature map of 8 or more.")
    if sweep.budget_ms is not None:
        note += f" Budget: {sweep.budget_ms:g} ms."
    return Table(title, columns, rows, note=note, formats={"int8 latency ms": ".2f", "% of ref latency": ".0f",
                                                           "latency fine-tuned ms": ".2f"})


def resolution_figure(sweep: ResolutionSweep, *, title: str = "AP and int8 latency vs input resolution") -> Figure:
    """Fig 11.2: AP without / with fine-tuning (left axis) and int8 latency (right axis) vs resolution."""
    rows = sorted(sweep.rows, key=lambda r: r.resolution)
    xs = [r.resolution for r in rows]
    series = {"AP, no fine-tuning": (xs, [ap_or_none(r.metrics.get("AP")) for r in rows])}
    tuned = [r for r in rows if r.ft_metrics]
    if tuned:
        series["AP, fine-tuned"] = ([r.resolution for r in tuned], [ap_or_none(r.ft_metrics.get("AP")) for r in tuned])
    secondary = {"int8 latency": (xs, [r.latency_ms for r in rows])}
    levels = {f"budget ({sweep.budget_ms:g} ms)": sweep.budget_ms} if sweep.budget_ms is not None else None
    caption = f"Solid: AP (left axis); dashed: int8 latency on {sweep.threads} thread(s) (right axis)"
    caption += "; dotted: the latency budget." if levels else "."
    if tuned:
        caption += " Large dots: AP after fine-tuning at that resolution (only some resolutions are fine-tuned)."
    return line_plot(title, "input resolution", "COCO AP (val)", series, secondary=secondary,
                     secondary_label="int8 latency, ms (median, batch 1)", caption=caption,
                     points=frozenset({"AP, fine-tuned"}), secondary_levels=levels)


# ============================================================================ NMS
@dataclass
class NmsRow:
    nms_iou: float
    score_threshold: float
    top_k: int
    metrics: dict[str, float]
    detections_per_image: float
    nms_ms: float  # median select_detections time per image on the real predictions
    forward_ms: float  # model forward median (benchmark)
    latency_ms: float  # forward_ms + nms_ms

    @property
    def ap(self) -> float:
        return self.metrics.get("AP", float("nan"))


@dataclass
class NmsSweep:
    rows: list[NmsRow]
    model: str
    data: str
    images: int
    threads: int
    runs: int
    device: str = ""

    def best(self) -> NmsRow:
        """Highest AP; ties (within 1e-4) go to the lower end-to-end latency."""
        top = max(r.ap for r in self.rows)
        return min((r for r in self.rows if r.ap >= top - 1e-4), key=lambda r: r.latency_ms)

    def find(self, nms_iou: float, score_threshold: float | None = None, top_k: int | None = None) -> NmsRow | None:
        for r in self.rows:
            if (abs(r.nms_iou - nms_iou) < 1e-9 and (score_threshold is None or abs(r.score_threshold - score_threshold) < 1e-9)
                    and (top_k is None or r.top_k == top_k)):
                return r
        return None

    def to_dict(self) -> dict:
        return asdict(self)


def _nms_settings(ious, score_thresholds, top_ks) -> list:
    default = PostprocessConfig()
    ious = list(ious)
    scores = list(score_thresholds) if score_thresholds else [default.score_threshold]
    tops = list(top_ks) if top_ks else [default.top_k]
    if not ious:
        raise LpdetError("--ious: give at least one IoU threshold")
    for v in ious:
        if not 0 < v <= 1:
            raise LpdetError(f"--ious: {v} is not in (0, 1]")
    for v in scores:
        if not 0 <= v < 1:
            raise LpdetError(f"--score-thresholds: {v} is not in [0, 1)")
    for v in tops:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise LpdetError(f"--top-ks: {v!r} is not a whole number >= 1")
    return [PostprocessConfig(score_threshold=float(s), nms_iou=float(i), top_k=int(k))
            for i in ious for s in scores for k in tops]


def _measure_nms(model_path: Path, data: str | Path, settings: list, *, threads: int, max_images: int) -> dict:
    """One forward pass over val; per setting: select_detections on each image (timed), COCO AP."""
    model = load_model(model_path, threads=threads)
    dataset = eval_split(data, model.resolution, model.category_ids, where=str(model.path))
    subset = dataset
    if max_images and max_images < len(dataset):
        subset = torch.utils.data.Subset(dataset, range(max_images))
    results = [[] for _ in settings]
    times = [[] for _ in settings]
    counts = [0 for _ in settings]
    image_ids = []
    with torch_threads(threads), torch.inference_mode():
        for images, targets, _dropped in make_loader(subset, 8, shuffle=False, seed=0, epoch=0, workers=0):
            if not targets:
                continue
            scores, boxes = model.forward(images)
            image_ids.extend(int(t["image_id"]) for t in targets)
            for j, cfg in enumerate(settings):
                for b, target in enumerate(targets):
                    start = time.perf_counter()
                    dets = select_detections(scores[b:b + 1], boxes[b:b + 1], cfg)
                    times[j].append(time.perf_counter() - start)
                    counts[j] += len(dets[0]["scores"])
                    results[j].extend(detections_to_coco(dets, [target], dataset.category_ids))
    n = max(1, len(image_ids))
    rows = []
    for j, cfg in enumerate(settings):
        rows.append({"nms_iou": cfg.nms_iou, "score_threshold": cfg.score_threshold, "top_k": cfg.top_k,
                     "metrics": coco_metrics(dataset.coco, results[j], image_ids=image_ids),
                     "detections_per_image": counts[j] / n,
                     "nms_ms": statistics.median(times[j]) * 1e3 if times[j] else 0.0})
    return {"rows": rows, "images": len(image_ids)}


def nms_sweep(model_path: Path | str, data: str | Path, ious: Sequence[float] = (0.30, 0.25, 0.20, 0.15, 0.10), *,
              score_thresholds: Sequence[float] | None = None, top_ks: Sequence[int] | None = None, threads: int = 1,
              runs: int = 30, warmup: int = 5, repeats: int = 3, max_images: int = 0, out_dir: Path | str | None = None,
              cache: TrialCache | None = None, name: str = "nms", progress: bool = True) -> NmsSweep:
    """AP and end-to-end latency per post-processing setting (every IoU × score threshold × top-k).

    Latency per image = the model's forward median (`benchmark`, batch 1, `threads` threads) +
    the median time of `select_detections` measured on the model's real predictions on val at
    that setting (the forward median: the lowest of `repeats` benchmarks). With `out_dir`, writes ``nms_sweep.{md,json}`` there and caches the two trials
    (``<name>-bench``, ``<name>-sweep``) in ``out_dir/trials`` (or `cache`)."""

    settings = _nms_settings(ious, score_thresholds, top_ks)
    model_path = Path(model_path)
    if cache is None and out_dir is not None:
        cache = TrialCache(Path(out_dir) / "trials", progress=progress)
    if not (model_path.exists() or model_path.with_name(model_path.name + ".old").exists()):
        raise LpdetError(f"{model_path}: no such model; pass a checkpoint, run directory or .onnx file")
    data_path = dataset_yaml(data)
    spec = {"model": file_identity(model_path), "data": data_identity(data_path),
            "settings": [[c.nms_iou, c.score_threshold, c.top_k] for c in settings], "max_images": max_images,
            "threads": threads}
    if cache is not None:
        cache.plan(2)
        bench = cache.benchmark(f"{name}-bench", model_path, threads=threads, runs=runs, warmup=warmup,
                                repeats=repeats)["latency"]
        measured = cache.run(f"{name}-sweep", spec, lambda _d: _measure_nms(model_path, data_path, settings,
                                                                            threads=threads, max_images=max_images),
                             kind="nms")
    else:

        bench = latency_to_dict(benchmark(model_path, threads=threads, runs=runs, warmup=warmup, repeats=repeats))
        measured = _measure_nms(model_path, data_path, settings, threads=threads, max_images=max_images)
    forward = float(bench["forward_ms"])
    rows = [NmsRow(nms_iou=r["nms_iou"], score_threshold=r["score_threshold"], top_k=r["top_k"], metrics=r["metrics"],
                   detections_per_image=r["detections_per_image"], nms_ms=r["nms_ms"], forward_ms=forward,
                   latency_ms=forward + r["nms_ms"]) for r in measured["rows"]]
    sweep = NmsSweep(rows=rows, model=str(model_path), data=str(data), images=measured["images"], threads=threads,
                     runs=runs, device=cpu_name())
    if out_dir is not None:
        write_sweep_files(Path(out_dir), "nms_sweep", "NMS sweep", [nms_table(sweep)], [], sweep.to_dict())
    return sweep


def nms_table(sweep: NmsSweep, *, title: str = "AP and latency vs NMS setting") -> Table:
    """Table 11.3: one row per NMS setting."""
    columns = ["NMS IoU", "score threshold", "top-k", "AP", "AP50", "AP_small", "AP_medium", "AP_large",
               "detections / image", "NMS ms", "end-to-end ms"]
    rows = [[r.nms_iou, r.score_threshold, r.top_k] + [ap_or_none(r.metrics.get(k)) for k in
                                                       ("AP", "AP50", *SIZE_METRICS)]
            + [r.detections_per_image, r.nms_ms, r.latency_ms] for r in sweep.rows]
    note = (f"{Path(sweep.model).name} on {sweep.images} val images. End-to-end = model forward median "
            f"({sweep.rows[0].forward_ms:.2f} ms, {sweep.runs} batch-1 runs, {sweep.threads} thread(s), {sweep.device}) "
            f"+ median post-processing time (score threshold, per-class NMS, top-k) on the real predictions."
            if sweep.rows else "")
    return Table(title, columns, rows, note=note,
                 formats={"NMS IoU": ".2f", "score threshold": ".3g", "detections / image": ".1f", "NMS ms": ".3f",
                          "end-to-end ms": ".2f"})


# ============================================================================ filtering
class FilterTooSmall(LpdetError):
    """The filtered training split keeps too few images to train with the chosen batch size."""


@dataclass
class FilterAblation:
    runs: dict[str, dict]  # "all" / "filtered" -> {"name", "checkpoint", "train_images", "epochs", "steps", "val": [...], "best": {...}}
    filter_report: dict
    drop_images_with: list[str]
    resolution: int
    epochs: int
    qat: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _train_images(data: Path) -> int:
    spec = resolve_dataset(str(data))
    return len(read_coco_json(spec.train.annotations)["images"]) if spec.train else 0


def filtering_ablation(init: Path | str | None, data: str | Path, out_dir: Path | str, *, epochs: int = 1,
                       resolution: int | None = None, arch: str = "mobilenet_v2_ssdlite", width: float | None = None,
                       qat: bool | None = None, batch_size: int = 32, drop_images_with: Sequence[str] = ("small",),
                       small_max: float = 32.0, large_min: float = 96.0, train_overrides: dict | None = None,
                       names: tuple[str, str] = ("filter-all", "filter-no-small"), cache: TrialCache | None = None,
                       progress: bool = True, write: bool = True) -> FilterAblation:
    """Train twice with the same settings and about the same number of steps (`epochs` on all
    training images; as many epochs as that takes on those left after `filter_dataset(...,
    drop_images_with=drop_images_with)`); returns both runs' val.csv curves.

    With `init` (a checkpoint), both runs start from it (arch, width, resolution and QAT taken
    from it unless given); without, both train from scratch (`arch`, `width` default 1.0,
    `resolution` default 300, float). Trials: ``filter-data`` (the filtered dataset) and the two
    training runs named by `names`. Writes ``out_dir/filter_ablation.{md,json}`` + PNGs (with `write`).
    Raises `FilterTooSmall` if the filtered split has fewer images than `batch_size`."""

    if epochs < 1:
        raise LpdetError(f"--epochs {epochs}: must be >= 1")
    out_dir = Path(out_dir)
    cache = cache or TrialCache(out_dir / "trials", progress=progress)
    data_path = dataset_yaml(data)
    if init is not None:

        ckpt = load_checkpoint(init)
        arch = ckpt.model_config.arch
        width = ckpt.model_config.width if width is None else width
        resolution = ckpt.model_config.resolution if resolution is None else resolution
        qat = is_qat(ckpt.model_config) if qat is None else qat
        init = ckpt.path
    width = 1.0 if width is None else width
    resolution = 300 if resolution is None else resolution
    qat = bool(qat)
    thresholds = SizeThresholds(small=small_max ** 2, large=large_min ** 2)
    cache.plan(3)

    def make_filtered(directory: Path) -> dict:
        yaml_path = filter_dataset(resolve_dataset(str(data_path)), directory / "data", drop_images_with=drop_images_with,
                                   thresholds=thresholds, split="train")

        report = json.loads((directory / "data" / "filter_report.json").read_text())
        return {"files": {"yaml": str(yaml_path.relative_to(directory))}, "report": report}

    filtered = cache.run("filter-data", {"data": data_identity(data_path), "drop": list(drop_images_with),
                                         "thresholds": [thresholds.small, thresholds.large]}, make_filtered, kind="filter")
    filtered_yaml = cache.file(filtered, "yaml")
    kept = filtered["report"]["after"]["images"]
    if kept < max(2, batch_size):
        raise FilterTooSmall(f"dropping training images with {'/'.join(drop_images_with)} objects leaves {kept} of "
                             f"{filtered['report']['before']['images']} images, fewer than the batch size {batch_size}; "
                             f"use more data or a smaller batch size")

    def config(path: Path, run_epochs: int) -> TrainConfig:
        settings = dict(data=str(path), arch=arch, width=width, resolution=resolution, epochs=run_epochs,
                        batch_size=batch_size, init=Path(init) if init is not None else None, qat=qat, out=Path("unused"))
        settings.update(train_overrides or {})
        return TrainConfig(**settings)

    # The same number of training steps for both runs (as the paper's plots over steps compare
    # them): the smaller filtered set is gone through more times. With equal epochs it would see
    # fewer updates, and the comparison would measure that instead of the filtering.
    before = filtered["report"]["before"]["images"]
    filtered_epochs = max(epochs, round(epochs * (before // batch_size) / max(1, kept // batch_size)))
    runs = {}
    for key, name, path, run_epochs in (("all", names[0], data_path, epochs),
                                        ("filtered", names[1], filtered_yaml, filtered_epochs)):
        trained = cache.train(name, config(path, run_epochs))
        runs[key] = {"name": name, "checkpoint": str(cache.file(trained, "best")), "train_images": _train_images(path),
                     "epochs": run_epochs, "steps": trained["steps"], "val": trained["val"], "best": trained["best"]}
    ablation = FilterAblation(runs=runs, filter_report=filtered["report"], drop_images_with=list(drop_images_with),
                              resolution=resolution, epochs=epochs, qat=qat)
    if write:
        write_sweep_files(out_dir, "filter_ablation", "Dataset filtering ablation", [filter_table(ablation)],
                          filter_figures(ablation), ablation.to_dict())
    return ablation


def filter_table(ablation: FilterAblation, *, title: str = "Training with and without images holding small objects",
                 deployed: dict[str, dict] | None = None) -> Table:
    """Per run: training images, steps, and the val AP of its last epoch (val.csv); `deployed`
    (run key -> metrics of the int8 export) adds the deployed AP."""
    columns = ["training data", "train images", "steps", "AP (last epoch)", "AP_small", "AP_medium", "AP_large"]
    if deployed:
        columns.append("AP (int8, deployed)")
    rows = []
    labels = {"all": "all images", "filtered": f"without images with {'/'.join(ablation.drop_images_with)} objects"}
    for key in ("all", "filtered"):
        run = ablation.runs.get(key)
        if not run:
            continue
        last = run["val"][-1] if run["val"] else {}
        cells = [labels[key], run["train_images"], run["steps"]] + [ap_or_none(last.get(k)) for k in ("AP", *SIZE_METRICS)]
        if deployed:
            cells.append(ap_or_none((deployed.get(key) or {}).get("AP")))
        rows.append(cells)
    report = ablation.filter_report
    note = (f"Filter: removed {report.get('removed_images')} of {report.get('before', {}).get('images')} training images "
            f"({report.get('removed_annotations')} annotations); small: area < "
            f"{(report.get('thresholds') or {}).get('small', 0):g} pixels². Same settings and about the same "
            f"number of steps for both runs (at {ablation.resolution}{', QAT' if ablation.qat else ''}; the smaller "
            f"filtered set for more epochs: {ablation.runs.get('filtered', {}).get('epochs', ablation.epochs)} vs "
            f"{ablation.runs.get('all', {}).get('epochs', ablation.epochs)}); AP from each run's val.csv (the torch "
            f"model after its last epoch).")
    return Table(title, columns, rows, note=note)


def filter_figures(ablation: FilterAblation) -> list[Figure]:
    """Figs 11.3 / 11.4: AP_small / AP_medium / AP_large over training steps, one figure per run."""
    figures = []
    titles = {"all": "AP by object size during training: all training images",
              "filtered": f"AP by object size during training: without images with "
                          f"{'/'.join(ablation.drop_images_with)} objects"}
    for key in ("all", "filtered"):
        run = ablation.runs.get(key)
        if not run:
            continue
        val = run["val"] or read_val_csv(Path(run["checkpoint"]).parent / "val.csv")
        steps = [int(r["step"]) for r in val]
        series = {name: (steps, [ap_or_none(r.get(name)) for r in val]) for name in SIZE_METRICS}
        figures.append(line_plot(titles[key], "training step", "COCO AP (val)", series,
                                 caption=f"{run['train_images']} training images, {run['steps']} step(s); one point per "
                                         f"epoch (val.csv of {run['name']})."))
    return figures
