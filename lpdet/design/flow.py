"""The guided design flow in one call: float → 8-bit QAT → resolution under a latency budget →
dataset filtering → NMS tuning → the final int8 model and a report.

    design("synth", budget_ms=12.0, out_dir="runs/design", quick=True)

Steps (every one a cached trial in ``out_dir/trials``, so a second call redoes nothing and an
interrupted call continues where it stopped; a changed setting redoes what it affects):

1. **Float model** trained at `base_resolution` (300).
2. **QAT**: 8-bit quantization-aware training initialised from the float model.
3. **Quantization table** (Table 11.1): `compare_quantization`: float / naive 8-bit / calibrated
   PTQ / QAT, each as ONNX on onnxruntime, AP on val and latency.
4. **Resolution search**: the QAT model exported int8 at each candidate resolution (300 down,
   multiples of 8, plus non-multiples such as 250 / 236 for the table) and benchmarked; those
   whose median latency is at most `budget_ms`·(1 − `budget_margin`) fit (the margin, 10% by
   default, keeps the pick within the budget when the machine's speed drifts). The largest
   `finetune_top` fitting multiples of 8 (any fitting size if no multiple of 8 fits) are
   fine-tuned with QAT at their resolution, and so is the base resolution as a reference with
   the same extra training (Table 11.2, Fig 11.2).
   The fine-tuned model (reference included) that fits with the best AP is chosen.
5. **Filtering ablation** at the chosen resolution: the same fine-tuning, for about the same
   number of steps, without the training images holding small objects (Figs 11.3 / 11.4); the
   filtered model is kept only if its deployed AP is higher.
6. **NMS sweep** on the chosen model (Table 11.3); the setting with the best AP is kept (ties:
   the faster).
7. **Final**: the chosen int8 ONNX re-benchmarked with the chosen NMS setting; if it still fits
   (budget less margin) it is copied to ``out_dir/final/model.onnx`` with ``final/summary.json``
   (else the next best fitting model is tried). Table 11.4 lists each step's measured change in AP and
   latency (losses included).

``report.md`` / ``report.html`` hold all of it; every number in them was measured by this flow
(in this call or a cached trial of an earlier one) on this machine. If no candidate resolution
meets the budget, the report says so and `LpdetError` names the fastest measured latency.

Presets (`DesignSettings`, written to ``out_dir/settings.json``):

* `full()` (the default; paper-like, for a user with COCO or the full synthetic set and a GPU
  or many CPU hours): width 1.0, batch 32; 60 float epochs (lr 0.05), 10 QAT epochs and 10
  fine-tuning epochs per resolution (lr 0.005); 17 candidates (300, 296, ..., 192 and 250, 236);
  the 2 largest fitting multiples of 8 fine-tuned; 50 benchmark runs, 100 calibration images;
  NMS IoU 0.6 (baseline), 0.30, 0.25, 0.20, 0.15, 0.10; every val image for deployed APs.
  Every latency (both presets): 3 benchmarks of 50 batch-1 runs, the lowest median kept.
* `quick()` shrinks every step so ``--data synth`` finishes in about 15 minutes on 2 idle CPU
  cores: width 0.5, 1200 train / 200 val synthetic images, batch 16, light augmentation,
  5 float epochs (lr 0.03) and 1 epoch for every other training, 12 candidates (300, 288, 272,
  256, 240, 224, 208, 192, 176, 160, 250, 236: down to 160 so that a budget well under the 300
  model's latency still finds a fit on a slower machine), 1 fine-tuned resolution, 32
  calibration images, 20 paired runs in the quantization table. Its models see ~6000 images:
  their APs are low, but every step's comparison is measured on the same val images.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnxruntime
import torch

from lpdet.data.sizes import BUCKETS, SizeThresholds, dataset_stats
from lpdet.data.spec import resolve_dataset
from lpdet.data.transforms import AUGMENTATIONS
from lpdet.deploy.export import update_metadata
from lpdet.deploy.latency import cpu_name
from lpdet.deploy.runtime import model_size_bytes
from lpdet.design.filtering import FilterTooSmall, filter_figures, filter_table, filtering_ablation
from lpdet.design.nms import nms_sweep, nms_table
from lpdet.design.quant_compare import compare_quantization, compare_table, compare_to_dict
from lpdet.design.report import Section, Table, write_report
from lpdet.design.resolution import resolution_figure, resolution_sweep, resolution_table
from lpdet.design.tables import ap_or_none, save_json_atomic
from lpdet.design.trials import TrialCache, data_identity, dataset_yaml, file_identity, measure_int8
from lpdet.errors import LpdetError
from lpdet.models.config import MIN_RESOLUTION, is_resolution
from lpdet.models.postprocess import PostprocessConfig
from lpdet.quant.weight_ranges import format_spread
from lpdet.serialize import from_dict, to_dict
from lpdet.train.config import PRECISIONS, TrainConfig

__all__ = ["DesignSettings", "DesignResult", "design"]

log = logging.getLogger("lpdet.design")


@dataclass
class DesignSettings:
    """Every knob of the flow; `full()` / `quick()` are the presets (see the module docstring)."""

    arch: str = "mobilenet_v2_ssdlite"
    width: float = 1.0
    base_resolution: int = 300
    # candidates for the resolution search, searched from the largest; multiples of 8 preferred
    resolutions: list[int] = field(default_factory=lambda: [300, 296, 288, 280, 272, 264, 256, 248, 240, 232, 224,
                                                            216, 208, 200, 192])
    table_resolutions: list[int] = field(default_factory=lambda: [250, 236])  # non-multiples of 8, for Table 11.2
    finetune_top: int = 2  # fine-tune the largest N fitting resolutions
    synth_train: int | None = None  # --data synth only: images (None: lpdet's default synthetic set)
    synth_val: int | None = None
    # training
    base_epochs: int = 60
    qat_epochs: int = 10
    finetune_epochs: int = 10  # QAT fine-tuning at each resolution, and each filtering-ablation run
    batch_size: int = 32
    augment: str = "ssd"  # "ssd" (full SSD augmentation) or "light" (flip + photometric; faster early learning)
    lr: float = 0.05
    warmup_steps: int = 500
    qat_lr: float = 0.005
    finetune_lr: float = 0.005
    finetune_warmup_steps: int = 100
    seed: int = 0
    workers: int = 2
    train_threads: int = 0  # torch threads while training (0: torch's default)
    precision: str = "auto"  # float training: "fp32", "bf16" or "auto" (TrainConfig.precision); QAT runs in fp32
    max_val_images: int = 500  # per-epoch validation during training (0: all)
    checkpoint_every: int = 200
    # measuring
    threads: int = 1  # inference threads for every latency (the budget is for this many)
    # A model fits when its measured latency is at most budget·(1 − budget_margin): the headroom
    # keeps it within the budget when it is benchmarked again on a machine whose speed drifts.
    budget_margin: float = 0.1
    bench_runs: int = 50
    bench_warmup: int = 5
    bench_repeats: int = 3  # each latency: the lowest median of this many benchmarks (shared machines)
    compare_runs: int = 30
    calibration_images: int = 100
    eval_max_images: int = 0  # deployed-model evaluations on val (0: all)
    # filtering and NMS
    filtering: bool = True
    small_max: float = 32.0  # "small" objects: area < small_max² (COCO: 32)
    nms_ious: list[float] = field(default_factory=lambda: [0.6, 0.30, 0.25, 0.20, 0.15, 0.10])  # first: the baseline

    @classmethod
    def full(cls, **overrides) -> "DesignSettings":
        """Paper-like defaults (COCO or the full synthetic set, a GPU or hours of CPU)."""
        return cls(**overrides)

    @classmethod
    def quick(cls, **overrides) -> "DesignSettings":
        """About 15 minutes for ``--data synth`` on 2 CPU cores."""
        settings = dict(width=0.5, resolutions=[300, 288, 272, 256, 240, 224, 208, 192, 176, 160],
                        table_resolutions=[250, 236],
                        finetune_top=1, synth_train=1200, synth_val=200, base_epochs=5, qat_epochs=1,
                        finetune_epochs=1, batch_size=16, augment="light", lr=0.03, warmup_steps=30, qat_lr=0.005,
                        finetune_lr=0.005, finetune_warmup_steps=0, workers=1, max_val_images=100,
                        checkpoint_every=25, bench_runs=50, bench_warmup=5, compare_runs=20, calibration_images=32)
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def from_dict(cls, data: dict) -> "DesignSettings":
        return from_dict(cls, data, where="design settings")

    def validate(self) -> None:
        checks = [
            (self.width > 0, "width must be > 0"),
            (is_resolution(self.base_resolution), f"base_resolution must be a whole number >= {MIN_RESOLUTION}"),
            (bool(self.resolutions) and all(map(is_resolution, self.resolutions)),
             f"resolutions: whole numbers >= {MIN_RESOLUTION}"),
            (all(map(is_resolution, self.table_resolutions)), f"table_resolutions: whole numbers >= {MIN_RESOLUTION}"),
            (self.finetune_top >= 1, "finetune_top must be >= 1"),
            (min(self.base_epochs, self.qat_epochs, self.finetune_epochs) >= 1, "epochs must be >= 1"),
            (self.batch_size >= 2, "batch_size must be >= 2"),
            (self.augment in AUGMENTATIONS, f"augment must be one of {', '.join(AUGMENTATIONS)}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.threads >= 0, "--threads must be >= 0"),
            (min(self.bench_runs, self.bench_repeats, self.compare_runs, self.calibration_images) >= 1,
             "bench_runs, bench_repeats, compare_runs and calibration_images must be >= 1"),
            (bool(self.nms_ious) and all(0 < v <= 1 for v in self.nms_ious), "nms_ious: values in (0, 1]"),
            (self.small_max > 0, "small_max must be > 0"),
            (0 <= self.budget_margin < 1, "budget_margin must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise LpdetError(f"design settings: {message}")

    def latency_limit(self, budget_ms: float) -> float:
        """The latency a model may measure to fit `budget_ms`, `budget_margin` kept in reserve."""
        return budget_ms * (1.0 - self.budget_margin)

    def candidates(self) -> list[int]:
        """Every resolution measured in the search, largest first (base and table sizes included)."""
        return sorted(set(self.resolutions) | set(self.table_resolutions) | {self.base_resolution}, reverse=True)


@dataclass
class DesignResult:
    out_dir: Path
    report_md: Path
    report_html: Path
    final_model: Path | None
    summary: dict
    trials_run: list[str] = field(default_factory=list)
    trials_cached: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class _Model:
    """A deployable candidate: an int8 ONNX with its measured AP and latency."""

    label: str
    tag: str
    resolution: int
    onnx: Path
    checkpoint: Path
    metrics: dict
    latency_ms: float
    size_mb: float | None = None


# ============================================================================ the flow
def design(data: str | Path, budget_ms: float, out_dir: Path | str, *, quick: bool = False,
           settings: DesignSettings | None = None, arch: str | None = None, width: float | None = None,
           threads: int | None = None, progress: bool = True, echo=None) -> DesignResult:
    """Run the whole guided design flow (see the module docstring); returns where everything is."""
    started = time.perf_counter()
    custom_settings = settings is not None
    settings = settings or (DesignSettings.quick() if quick else DesignSettings.full())
    settings = replace(settings, **{k: v for k, v in (("arch", arch), ("width", width), ("threads", threads))
                                    if v is not None})
    settings.validate()
    if isinstance(budget_ms, bool) or not isinstance(budget_ms, (int, float)) or not budget_ms > 0:
        raise LpdetError(f"--budget-ms {budget_ms}: must be a latency in milliseconds > 0")
    budget_ms = float(budget_ms)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_json_atomic({"preset": ("custom" if custom_settings else "quick" if quick else "full"), "data": str(data),
                      "budget_ms": budget_ms, "settings": to_dict(settings)}, out_dir / "settings.json")
    cache = TrialCache(out_dir / "trials", progress=progress, echo=echo)
    s = settings
    data_path = dataset_yaml(data, synth_train=s.synth_train, synth_val=s.synth_val)
    preset = "custom settings" if custom_settings else "quick preset" if quick else "full preset"
    ctx = _Context(data=str(data), data_path=data_path, budget_ms=budget_ms, settings=s, out_dir=out_dir, quick=quick,
                   preset=preset)
    ctx.setup = _setup_section(ctx)

    try:
        final = _run_flow(ctx, cache)
    except _NoFit as e:
        md, html = _write(ctx, cache, started, failure=str(e))
        raise LpdetError(f"{e} (report: {md})") from None
    md, html = _write(ctx, cache, started)
    return DesignResult(out_dir=out_dir, report_md=md, report_html=html, final_model=final,
                        summary=ctx.summary, trials_run=list(cache.ran), trials_cached=list(cache.cached_names),
                        seconds=time.perf_counter() - started)


class _NoFit(Exception):
    pass


@dataclass
class _Context:
    data: str
    data_path: Path
    budget_ms: float
    settings: DesignSettings
    out_dir: Path
    quick: bool
    preset: str = "full preset"
    setup: Section | None = None
    sections: list[Section] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)  # Table 11.4
    summary: dict = field(default_factory=dict)


def _train_config(ctx: _Context, **fields_) -> TrainConfig:
    s = ctx.settings
    values = dict(data=str(ctx.data_path), arch=s.arch, width=s.width, resolution=s.base_resolution,
                  batch_size=s.batch_size, augment=s.augment, seed=s.seed, workers=s.workers, threads=s.train_threads,
                  precision=s.precision, max_val_images=s.max_val_images, checkpoint_every=s.checkpoint_every, out=Path("unused"))
    values.update(fields_)
    return TrainConfig(**values)


def _finetune_overrides(s: DesignSettings) -> dict:
    return dict(lr=s.finetune_lr, warmup_steps=s.finetune_warmup_steps, augment=s.augment, seed=s.seed, workers=s.workers,
                threads=s.train_threads, max_val_images=s.max_val_images, checkpoint_every=s.checkpoint_every)


def _run_flow(ctx: _Context, cache: TrialCache) -> Path | None:
    s, budget = ctx.settings, ctx.budget_ms
    limit = s.latency_limit(budget)  # what a model may measure to fit (the margin kept for re-benchmarks)
    base_r = s.base_resolution
    candidates = s.candidates()
    cache.plan(2 + 1 + 1 + 2 * len(candidates))
    bench_kw = dict(threads=s.threads, runs=s.bench_runs, warmup=s.bench_warmup, repeats=s.bench_repeats)

    # 1-2. float model, then QAT from it --------------------------------------------------------
    base = cache.train(f"float-r{base_r}", _train_config(ctx, epochs=s.base_epochs, lr=s.lr,
                                                          warmup_steps=s.warmup_steps))
    base_ckpt = cache.file(base, "best")
    qat = cache.train(f"qat-r{base_r}", _train_config(ctx, epochs=s.qat_epochs, lr=s.qat_lr, qat=True, init=base_ckpt,
                                                       warmup_steps=s.finetune_warmup_steps))
    qat_ckpt = cache.file(qat, "best")

    # 3. Table 11.1 --------------------------------------------------------------------------------
    def compare(directory: Path) -> dict:
        result = compare_quantization(base_ckpt, str(ctx.data_path), directory, qat_ckpt=qat_ckpt,
                                      calibration_images=s.calibration_images, threads=s.threads,
                                      runs=s.compare_runs, max_images=s.eval_max_images, progress=False)
        return {"files": {"fp32": "model_fp32.onnx", "md": "quant_compare.md"}, "compare": compare_to_dict(result)}

    comp = cache.run("quant-compare", {"float": file_identity(base_ckpt), "qat": file_identity(qat_ckpt),
                                       "data": data_identity(ctx.data_path), "calibration_images": s.calibration_images,
                                       "threads": s.threads, "runs": s.compare_runs, "max_images": s.eval_max_images},
                     compare, kind="compare")
    float_bench = cache.benchmark(f"float-r{base_r}-bench", cache.file(comp, "fp32"), **bench_kw)["latency"]
    ctx.sections.append(_quant_section(comp["compare"]))
    float_row = _compare_row(comp["compare"], "float")

    # 4. latency of every candidate (no training) ------------------------------------------------
    latency = {}
    for r in candidates:
        m = measure_int8(cache, f"noft-r{r}", qat_ckpt, ctx.data_path, resolution=r, evaluate=False,
                         calibration_images=s.calibration_images, **bench_kw)
        latency[r] = m["bench"]["latency"]["median_ms"]
    fitting = [r for r in candidates if latency[r] <= limit]
    search_table = Table("Resolution search: int8 latency of the QAT model at each candidate (no training)",
                         ["resolution", "input multiple of 8", "int8 latency ms", f"fits (<= {limit:.3g} ms)"],
                         [[r, r % 8 == 0, latency[r], latency[r] <= limit] for r in candidates],
                         note=f"Budget {budget:g} ms; {_limit_text(s, budget)}. Latency: median of {s.bench_runs} "
                              f"batch-1 runs (end-to-end: forward + NMS), {s.threads} thread(s), the lowest of "
                              f"{s.bench_repeats} repeats.",
                         formats={"int8 latency ms": ".2f"})
    if not fitting:
        fastest = min(candidates, key=lambda r: latency[r])
        ctx.sections.append(Section("Resolution search", "No candidate resolution meets the budget.", [search_table]))
        raise _NoFit(f"no resolution fits --budget-ms {budget:g} ({_limit_text(s, budget)}): the fastest candidate, "
                     f"{fastest}x{fastest}, measured {latency[fastest]:.2f} ms (int8 median, batch 1, {s.threads} "
                     f"thread(s)); raise the budget, or try smaller resolutions or a smaller width")
    if base_r in fitting:  # legitimate (the budget may be loose), but the user may expect a trade-off
        log.warning("the %d model fits the budget as it is (%.2f ms on this machine): the resolution search has "
                    "nothing to trade; a --budget-ms below %.2g makes it choose a smaller input", base_r,
                    latency[base_r], latency[base_r])
    aligned = [r for r in fitting if r % 8 == 0]
    to_tune = (aligned or fitting)[: s.finetune_top]

    # 5. Table 11.2 / Fig 11.2 --------------------------------------------------------------------
    sweep = resolution_sweep(qat_ckpt, ctx.data_path, candidates, ctx.out_dir / "resolution", epochs=s.finetune_epochs,
                             qat=True, finetune=set(to_tune) | {base_r}, batch_size=s.batch_size,
                             max_images=s.eval_max_images, calibration_images=s.calibration_images, budget_ms=budget,
                             train_overrides=_finetune_overrides(s), cache=cache, **bench_kw)
    tuned = [_Model(f"QAT fine-tuned @{row.resolution}", f"finetune-r{row.resolution}", row.resolution,
                    Path(row.ft_onnx), Path(row.ft_checkpoint), row.ft_metrics, row.ft_latency_ms)
             for row in sweep.rows if row.ft_metrics is not None]
    untuned = [_Model(f"QAT @{base_r} loaded at {row.resolution}", f"noft-r{row.resolution}", row.resolution,
                      Path(row.onnx), qat_ckpt, row.metrics, row.latency_ms) for row in sweep.rows]
    # Whether a resolution fits is decided once, by the search's measurement of its graph (a fine-tuned
    # model has the same graph; measuring it again near the budget would only add noise to the decision).
    # The final model is re-benchmarked before it is accepted. The base-resolution reference competes
    # too when it fits (same fine-tuning); ties in AP go to the faster.
    fit_tuned = [m for m in tuned if latency[m.resolution] <= limit]
    pool = fit_tuned or [m for m in untuned if latency[m.resolution] <= limit]
    chosen = max(pool, key=lambda m: (_ap(m.metrics), -latency[m.resolution]))
    ctx.sections.append(_resolution_section(ctx, sweep, search_table, to_tune, chosen, latency, fitting))

    # Table 11.4 rows so far
    noft_base = sweep.row(base_r)
    ref = next((m for m in tuned if m.resolution == base_r), None)
    _step(ctx, "float", f"fp32 ONNX @{base_r}", base_r, float_row["metrics"], float_bench["median_ms"])
    _step(ctx, "8-bit QAT", f"QAT int8 @{base_r}", base_r, noft_base.metrics, noft_base.latency_ms)
    # Steps that keep the graph (fine-tuning, filtering) show the search's measurement of that graph,
    # not a second one: the int8 kernels' time does not depend on the weights, and a re-measurement
    # would report the machine's load drift as the step's effect.
    if ref is not None:
        _step(ctx, f"+{s.finetune_epochs} epoch(s) QAT (reference)", f"QAT int8 @{base_r}, fine-tuned", base_r,
              ref.metrics, latency[base_r], note=SAME_GRAPH)
    _step(ctx, "resolution", chosen.label, chosen.resolution, chosen.metrics, latency[chosen.resolution],
          note="unchanged: the base resolution meets the budget" if chosen.resolution == base_r else
          f"best AP among the fine-tuned sizes that fit ({'a' if chosen.resolution % 8 == 0 else 'not a'} "
          f"multiple of 8)")
    current = chosen

    # 6. filtering ablation (Figs 11.3 / 11.4) ------------------------------------------------------
    if s.filtering:
        current = _filtering(ctx, cache, qat_ckpt, current, bench_kw, latency[current.resolution]) or current

    # 7. NMS sweep (Table 11.3) -------------------------------------------------------------------
    ious = list(dict.fromkeys(float(v) for v in s.nms_ious))
    nms = nms_sweep(current.onnx, ctx.data_path, ious, max_images=s.eval_max_images, out_dir=ctx.out_dir / "nms",
                    cache=cache, name=f"nms-{current.tag}", **bench_kw)
    best = nms.best()
    baseline = nms.find(ious[0]) or nms.rows[0]
    ctx.sections.append(Section(
        "Table 11.3: NMS threshold",
        f"Post-processing settings of the chosen model ({current.label}). The first IoU ({baseline.nms_iou:g}) is the "
        f"baseline; the setting with the highest AP is kept (ties: the faster): IoU {best.nms_iou:g}, score threshold "
        f"{best.score_threshold:g}, top-k {best.top_k}.",
        [nms_table(nms, title="Table 11.3: AP and end-to-end latency vs NMS setting")]))
    _step(ctx, "NMS setting", f"{current.label}, NMS IoU {best.nms_iou:g}", current.resolution, best.metrics,
          best.latency_ms, previous={"metrics": baseline.metrics, "latency_ms": baseline.latency_ms},
          basis=f"same model at NMS IoU {baseline.nms_iou:g} (end-to-end, real predictions)")

    # 8. final model ------------------------------------------------------------------------------

    post = PostprocessConfig(score_threshold=best.score_threshold, nms_iou=best.nms_iou, top_k=best.top_k)
    others = fit_tuned + [m for m in untuned if latency[m.resolution] <= limit]
    order = [current] + sorted((m for m in others if m.onnx != current.onnx),
                               key=lambda m: (-_ap(m.metrics), latency[m.resolution]))
    tried = []
    final = None
    for model in order:
        chosen_post = post if model is current else PostprocessConfig()
        fb = cache.benchmark(f"final-{model.tag}-bench", model.onnx, postprocess=chosen_post, **bench_kw)["latency"]
        tried.append((model, fb))
        if fb["median_ms"] <= limit:
            final = (model, fb, chosen_post)
            break
    if final is None:
        fastest = min(fb["median_ms"] for _, fb in tried)
        raise _NoFit(f"no model fitted --budget-ms {budget:g} ({_limit_text(s, budget)}) when re-benchmarked for "
                     f"the final pick (fastest: {fastest:.2f} ms); the machine's load may have changed: rerun, or "
                     f"raise the budget")
    model, fb, chosen_post = final
    metrics = best.metrics if model is current else model.metrics
    _step(ctx, "final (re-benchmarked)", model.label, model.resolution, metrics, fb["median_ms"],
          note="" if model is current else "the chosen model did not fit when re-benchmarked; next best")
    return _finalise(ctx, model, fb, chosen_post, metrics)


def _filtering(ctx: _Context, cache: TrialCache, qat_ckpt: Path, current: _Model, bench_kw: dict,
               graph_latency_ms: float) -> _Model | None:
    s = ctx.settings
    r = current.resolution
    try:
        ablation = filtering_ablation(qat_ckpt, ctx.data_path, ctx.out_dir / "filtering", epochs=s.finetune_epochs,
                                      resolution=r, qat=True, batch_size=s.batch_size, small_max=s.small_max,
                                      train_overrides=_finetune_overrides(s),
                                      names=(f"finetune-r{r}", f"finetune-r{r}-no-small"), cache=cache)
    except FilterTooSmall as e:
        ctx.sections.append(Section("Figures 11.3 / 11.4: dataset filtering", f"Skipped: {e}."))
        ctx.steps.append({"step": "dataset filtering", "model": "skipped", "note": str(e)})
        return None
    ckpt = Path(ablation.runs["filtered"]["checkpoint"])
    m = measure_int8(cache, f"finetune-r{r}-no-small", ckpt, ctx.data_path, resolution=None,
                     max_images=s.eval_max_images, calibration_images=s.calibration_images, **bench_kw)
    filtered = _Model(f"QAT fine-tuned @{r} without small-object images", f"finetune-r{r}-no-small", r,
                      m["onnx"], ckpt, m["eval"]["metrics"], m["bench"]["latency"]["median_ms"], m["export"]["size_mb"])
    # the unfiltered arm is the fine-tuning at r when the chosen model is that one (same trial)
    unfiltered_metrics = current.metrics if current.tag == f"finetune-r{r}" else None
    keep = _ap(filtered.metrics) > _ap(current.metrics)  # same graph and resolution: only AP differs
    deployed = {"filtered": filtered.metrics, **({"all": unfiltered_metrics} if unfiltered_metrics else {})}
    dropped = ablation.filter_report
    text = (f"Fine-tuning at {r} repeated, for about the same number of steps, without the "
            f"{dropped.get('removed_images')} training images (of {dropped.get('before', {}).get('images')}) that "
            f"hold small objects (area < {s.small_max:g}²). Deployed (int8) AP on val: "
            f"{_ap(filtered.metrics):.3f} filtered vs {_ap(current.metrics):.3f} for the chosen model: the "
            f"filtered model is {'kept' if keep else 'not kept'}.")
    ctx.sections.append(Section("Figures 11.3 / 11.4: dataset filtering", text,
                                [filter_table(ablation, deployed=deployed), *filter_figures(ablation)]))
    _step(ctx, "dataset filtering", filtered.label, r, filtered.metrics, graph_latency_ms, kept=keep, note=SAME_GRAPH)
    if keep:
        return filtered
    return None


def _finalise(ctx: _Context, model: _Model, bench: dict, post, metrics: dict) -> Path:
    final_dir = ctx.out_dir / "final"
    final_dir.mkdir(parents=True, exist_ok=True)
    # The chosen NMS setting travels in the model: `lpdet bench` / `eval` / `predict` use it.
    target = update_metadata(model.onnx, final_dir / "model.onnx", {"postprocess": to_dict(post)})
    s = ctx.settings
    ctx.summary = {
        "model": str(target), "source_onnx": str(model.onnx), "checkpoint": str(model.checkpoint),
        "description": model.label, "arch": s.arch, "width": s.width, "resolution": model.resolution,
        "AP": metrics.get("AP"), "AP50": metrics.get("AP50"), "AP75": metrics.get("AP75"),
        "AP_small": metrics.get("AP_small"), "AP_medium": metrics.get("AP_medium"), "AP_large": metrics.get("AP_large"),
        "latency_median_ms": bench["median_ms"], "latency_p90_ms": bench["p90_ms"],
        "forward_ms": bench["forward_ms"], "postprocess_ms": bench["postprocess_ms"],
        "size_mb": model_size_bytes(target) / 1e6, "nms_iou": post.nms_iou, "score_threshold": post.score_threshold,
        "top_k": post.top_k, "budget_ms": ctx.budget_ms, "meets_budget": bench["median_ms"] <= ctx.budget_ms,
        "budget_margin": s.budget_margin, "latency_limit_ms": s.latency_limit(ctx.budget_ms),
        "threads": s.threads, "device": bench.get("device"), "runtime": bench.get("runtime"), "data": ctx.data,
        "steps": ctx.steps,
    }
    save_json_atomic(ctx.summary, final_dir / "summary.json")
    return target


# ============================================================================ report pieces
def _ap(metrics: dict | None) -> float:
    value = (metrics or {}).get("AP")
    return float(value) if value is not None else float("-inf")


def _compare_row(compare: dict, name: str) -> dict:
    return next(r for r in compare["rows"] if r["name"] == name)


SAME_GRAPH = "same graph as in the resolution search: its latency"


def _step(ctx: _Context, step: str, model: str, resolution: int, metrics: dict, latency_ms: float, *,
          previous: dict | None = None, basis: str | None = None, kept: bool = True, note: str = "") -> None:
    prev = previous
    if prev is None:
        prev = next((p for p in reversed(ctx.steps) if p.get("kept", True) and "latency_ms" in p), None)
        basis = basis or (f"previous step ({prev['step']})" if prev else "")
    row = {"step": step, "model": model, "resolution": resolution, "AP": metrics.get("AP"),
           "AP_small": metrics.get("AP_small"), "AP_medium": metrics.get("AP_medium"),
           "AP_large": metrics.get("AP_large"), "latency_ms": latency_ms, "kept": kept, "basis": basis or "", "note": note}
    if prev is not None:
        prev_metrics = prev.get("metrics", prev)
        prev_ap, prev_lat = prev_metrics.get("AP"), prev.get("latency_ms")
        row["delta_AP"] = (row["AP"] - prev_ap) if row["AP"] is not None and prev_ap is not None else None
        row["delta_latency_ms"] = latency_ms - prev_lat if prev_lat is not None else None
        row["delta_latency_pct"] = 100 * (latency_ms - prev_lat) / prev_lat if prev_lat else None
    ctx.steps.append(row)


def _setup_section(ctx: _Context) -> Section:
    s = ctx.settings
    spec = resolve_dataset(str(ctx.data_path))
    rows = []
    thresholds = SizeThresholds()
    for split_name, split in (("train", spec.train), ("val", spec.val)):
        if split is None:
            continue
        st = dataset_stats(split.annotations, thresholds)
        total = st.total_objects or 1
        for b in BUCKETS:
            rows.append([split_name, b, st.objects[b], 100 * st.objects[b] / total, st.images_with[b], st.images])
    data_table = Table("Data: objects per COCO size bucket", ["split", "bucket", "objects", "% objects",
                                                              "images with", "images"], rows,
                       note=thresholds.describe(), formats={"% objects": ".1f"})
    load = ""
    if hasattr(os, "getloadavg"):
        load = f" Load average at the start: {os.getloadavg()[0]:.2f}."
    where = f" ({ctx.data_path})" if str(ctx.data_path) != ctx.data else ""
    text = (f"Data: {ctx.data}{where}. Budget: {ctx.budget_ms:g} ms int8 latency (median, batch 1, "
            f"{s.threads} thread(s)). Machine: {cpu_name()}, {platform.system()} {platform.machine()}; torch "
            f"{torch.__version__}, onnxruntime {onnxruntime.__version__} (CPUExecutionProvider).{load} "
            f"Settings: {ctx.preset}, all in settings.json ({s.arch}, width {s.width:g}, "
            f"base resolution {s.base_resolution}; epochs: float {s.base_epochs}, QAT {s.qat_epochs}, fine-tuning "
            f"{s.finetune_epochs}).")
    return Section("Setup", text, [data_table])


def _quant_section(compare: dict) -> Section:
    table = compare_table(compare, "Table 11.1: float vs 8-bit")
    table.note = (f"{compare['arch']} @{compare['resolution']} on {compare['images']} val images; onnxruntime CPU, "
                  f"{compare['threads']} thread(s), batch 1, median of {compare['runs']} runs interleaved across the "
                  f"rows; {compare['device']}. Naive 8-bit: per-tensor weights, ranges from 2 images; calibrated "
                  f"PTQ: per-channel weights, {compare['calibration_images']} calibration images.")
    text = "The float model and its 8-bit versions, each deployed as ONNX."
    if compare.get("weight_spread"):

        text += " " + format_spread(compare["weight_spread"])
    return Section("Table 11.1: quantization", text, [table])


def _resolution_section(ctx: _Context, sweep, search_table: Table, to_tune: list[int], chosen: _Model,
                        latency: dict, fit: list[int]) -> Section:
    s = ctx.settings
    base = s.base_resolution
    text = (f"Every candidate was exported int8 from the QAT model and benchmarked without training; "
            f"{len(fit)} of {len(latency)} fit the {ctx.budget_ms:g} ms budget ({_limit_text(s, ctx.budget_ms)}) "
            f"({', '.join(str(r) for r in sorted(fit, reverse=True)) or 'none'}). Fine-tuned with QAT for "
            f"{s.finetune_epochs} epoch(s): {', '.join(str(r) for r in sorted(to_tune, reverse=True))}"
            f"{'' if base in to_tune else f', and {base} as the reference'}. Chosen: {chosen.label} "
            f"(AP {_ap(chosen.metrics):.3f}, {chosen.latency_ms:.2f} ms).")
    if base in fit:
        text += (f" The budget does not bind: the {base} model itself fits ({latency[base]:.2f} ms on this machine); "
                 f"a budget below that makes the search trade resolution for latency.")
    return Section("Table 11.2 / Figure 11.2: input resolution", text,
                   [search_table, resolution_table(sweep, title="Table 11.2: AP and int8 latency vs input resolution",
                                                   reference=base),
                    resolution_figure(sweep, title="Figure 11.2: AP and int8 latency vs input resolution")])


def _steps_table(ctx: _Context) -> Table:
    rows = []
    for p in ctx.steps:
        if "latency_ms" not in p:
            rows.append([p["step"], p["model"], None, None, None, None, None, None, False, p.get("note", "")])
            continue
        rows.append([p["step"], p["model"], p["resolution"], ap_or_none(p["AP"]), p.get("delta_AP"),
                     p["latency_ms"], p.get("delta_latency_ms"), p.get("delta_latency_pct"), p["kept"],
                     "; ".join(x for x in (p.get("basis"), p.get("note")) if x)])
    return Table("Table 11.4: each step's measured change", ["step", "model", "resolution", "AP", "Δ AP",
                                                             "latency ms", "Δ latency ms", "Δ latency %", "kept",
                                                             "compared with / note"], rows,
                 note="Δ: this step minus the step it is compared with (negative Δ AP is a loss; negative Δ latency "
                      "a speed-up). AP: COCO AP on val of the deployed model; latency: median batch-1 end-to-end "
                      "(forward + NMS, default setting) on this machine, from the resolution search for the steps "
                      "that keep its graph; the NMS and final rows with the tuned NMS setting.",
                 formats={"Δ AP": "+.4f", "latency ms": ".2f", "Δ latency ms": "+.2f", "Δ latency %": "+.1f"})


def _final_section(ctx: _Context) -> Section:
    f = ctx.summary
    rows = [["resolution", f["resolution"]]]
    rows += [[k, ap_or_none(f[k])] for k in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")]
    rows += [["latency median ms", f["latency_median_ms"]], ["latency p90 ms", f["latency_p90_ms"]],
             ["budget ms", f["budget_ms"]], ["fits at most ms (budget less margin)", f["latency_limit_ms"]],
             ["size MB", f["size_mb"]], ["NMS IoU", f["nms_iou"]],
             ["score threshold", f["score_threshold"]], ["top-k", f["top_k"]], ["threads", f["threads"]]]
    check = (f"To check it: `lpdet bench {f['model']} --threads {f['threads']}` (the model carries its NMS "
             f"setting) and `lpdet eval {f['model']} --data {ctx.data_path}`.")
    return Section("Final model", f"{f['description']}: {f['model']} (summary: final/summary.json). Latency "
                                  f"re-benchmarked with the NMS setting below on {f['device']}; AP on val with it. "
                                  f"{check}",
                   [Table("Final model", ["quantity", "value"], [[k, _cell(v)] for k, v in rows])])


def _limit_text(s: DesignSettings, budget_ms: float) -> str:
    """e.g. 'a model fits at <= 4.5 ms, 10% of the budget kept in reserve for the machine's drift ...'."""
    if not s.budget_margin:
        return "a model fits at <= the budget"
    return (f"a model fits at <= {s.latency_limit(budget_ms):.3g} ms, {s.budget_margin:.0%} of the budget kept "
            f"in reserve for the machine's drift when it is benchmarked again")


def _cell(v):
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return v


def _write(ctx: _Context, cache: TrialCache, started: float, failure: str | None = None) -> tuple[Path, Path]:
    sections = [ctx.setup] + ctx.sections
    if ctx.steps:
        sections.append(Section("Table 11.4: step by step", "", [_steps_table(ctx)]))
    if failure:
        sections.append(Section("Result: no model meets the budget", failure))
    elif ctx.summary:
        sections.append(_final_section(ctx))
    seconds = time.perf_counter() - started
    sections[0] = Section(sections[0].title, sections[0].text + f"\n\nThis call took {seconds:.0f} s: "
                          f"{len(cache.ran)} trial(s) run, {len(cache.cached_names)} reused from the cache "
                          f"({cache.root}).", sections[0].items)
    return write_report(sections, ctx.out_dir, title=f"Guided design: {ctx.settings.arch} under {ctx.budget_ms:g} ms")
