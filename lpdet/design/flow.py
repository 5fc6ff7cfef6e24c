"""The guided design flow in one call: float → 8-bit QAT → resolution under a latency budget →
dataset filtering → NMS tuning → the final int8 model and a report.

    design("synth", budget_ms=12.0, out_dir="runs/design", quick=True)
    design("synth", None, "runs/design", budget_ratio=0.64, quick=True)   # 0.64 x the base model's latency

Three splits (`lpdet.design.splits`): every training run learns from train less a selection split
(the YAML's ``select:`` or ``select_fraction`` of train); every choice below, and each run's best
epoch, is made on the selection split; val is only reported. Every AP comparison in the report
carries a paired bootstrap interval over val images (`lpdet.design.noise`). Every latency is the
one harness (`lpdet.design.latency_trials`): real val images, the models of a decision interleaved
in one run, the median over all timed passes with its interval and p90.

Steps (every one a cached trial in ``out_dir/trials``, so a second call redoes nothing and an
interrupted call continues where it stopped; a changed setting redoes what it affects):

1. **Float base model** at `base_resolution` (300): `lpdet.design.base_model` — ``--base CKPT``, else
   the detector shipped for the embedded ``synth`` data, else trained here (``--from-scratch``,
   optionally from ``--backbone-weights``), ending with a multi-scale stage over the sizes step 4
   measures, so that the base holds at them before any fine-tuning.
2. **QAT**: 8-bit quantization-aware training initialised from the float model.
3. **Quantization table** (Table 11.1): `compare_quantization`: float / naive 8-bit / calibrated
   PTQ / QAT, each as ONNX on onnxruntime, AP on val and latency.
4. **Resolution search**: the QAT model exported int8 at each candidate resolution (300 down,
   multiples of 8, plus non-multiples such as 250 / 236 for the table), all measured in one
   interleaved run with the base resolution (which also resolves `budget_ratio` into ms); those
   whose median latency is at most `budget_ms`·(1 − `budget_margin`) fit (the margin, 10% by
   default, keeps the pick within the budget when the machine's speed drifts). The largest
   `finetune_top` fitting multiples of 8 (any fitting size if no multiple of 8 fits) are
   fine-tuned with QAT at their resolution, and so is the base resolution as a reference with
   the same extra training (Table 11.2, Fig 11.2).
   The fine-tuned model (reference included) that fits with the best AP on select is chosen.
5. **Filtering ablation** at the chosen resolution: the same fine-tuning, for about the same
   number of steps, without the training images holding small objects (Figs 11.3 / 11.4); the
   filtered model is kept only if its deployed AP on select is higher.
6. **NMS sweep** on the chosen model (Table 11.3), per-class and class-agnostic NMS; the setting
   with the best AP on select is kept (ties: the faster).
7. **Final**: the chosen int8 ONNX re-measured with the chosen NMS setting, interleaved with the
   base model; if it still fits
   (budget less margin) it is copied to ``out_dir/final/model.onnx`` with ``final/summary.json``
   (else the next best fitting model is tried). Table 11.4 lists each step's measured change in AP and
   latency (losses included).

``report.md`` / ``report.html`` hold all of it; every number in them was measured by this flow
(in this call or a cached trial of an earlier one) on this machine. If no candidate resolution
meets the budget, the report says so and `LpdetError` names the fastest measured latency.

Presets (`DesignSettings`, written to ``out_dir/settings.json``):

* `full()` (the default; paper-like, for COCO or the full synthetic set and a GPU or many CPU
  hours): width 1.0, batch 32; 60 float epochs (lr 0.05) then 10 multi-scale, 10 QAT epochs and 10
  fine-tuning epochs per resolution (lr 0.005); 17 candidates (300, 296, ..., 192 and 250, 236); the
  2 largest fitting multiples of 8 fine-tuned; NMS IoU 0.6 (baseline), 0.30, ..., 0.10.
* `quick()` shrinks every step so ``--data synth`` finishes in about 15 minutes on 2 idle CPU
  cores: width 0.5 (the shipped base's, which it starts from), batch 16, light augmentation, 40
  batches of QAT and of every fine-tuning (with ``--from-scratch``: 5 x 75 batches of float
  training, 2 x 75 multi-scale), 9 candidates (300, 288, 256, 240, 224, 208, 192, 160 and 236), 1
  fine-tuned resolution, 32 calibration images.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from lpdet.deploy.export import update_metadata
from lpdet.deploy.runtime import model_size_bytes
from lpdet.design.base_model import check_base_classes, choose_base
from lpdet.design.flow_arch_search import STEP as ARCH_SEARCH, add_row_after_final, arch_search_step
from lpdet.design.flow_choices import filtering_step, nms_step
from lpdet.design.flow_context import (SAME_GRAPH, Candidate, FlowContext, NoFit, bench_kw, choice_ap, compare_row,
                                       record_step)
from lpdet.design.flow_latency import (budget_latency, budget_text, budget_view, check_budget, limit_text,
                                      search_latencies)
from lpdet.design.flow_report import quant_section, resolution_section, setup_section, write_design_report
from lpdet.design.latency_trials import interval_text, measure_interleaved, straddles
from lpdet.design.noise import NoiseJudge
from lpdet.design.quant_compare import compare_quantization, compare_to_dict
from lpdet.design.report import Section
from lpdet.design.resolution import resolution_sweep
from lpdet.design.search.folder import SearchFolder, open_search_folder
from lpdet.design.settings import DesignSettings, finetune_overrides, training_config
from lpdet.design.splits import design_data
from lpdet.design.tables import save_json_atomic
from lpdet.design.trials import TrialCache, data_identity, dataset_yaml, file_identity
from lpdet.errors import LpdetError
from lpdet.models.checkpoint_format import resolve_checkpoint
from lpdet.progress import progress_bar
from lpdet.models.postprocess import PostprocessConfig
from lpdet.serialize import to_dict

__all__ = ["DesignSettings", "DesignResult", "design"]

log = logging.getLogger("lpdet.design")
DESIGN_STEPS = ("float base", "QAT", "quantization table", "resolution search", "dataset filtering",
                "NMS sweep", "final model")


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


def design(data: str | Path, budget_ms: float | None, out_dir: Path | str, *, quick: bool = False,
           settings: DesignSettings | None = None, arch: str | None = None, width: float | None = None,
           threads: int | None = None, select_fraction: float | None = None, budget_ratio: float | None = None,
           base: Path | None = None, from_scratch: bool = False, backbone_weights: Path | None = None,
           search: Path | None = None, progress: bool = True, echo=None) -> DesignResult:
    """Run the whole guided design flow (see the module docstring); returns where everything is. The
    budget: `budget_ms`, or `budget_ratio` x the base model's int8 latency measured on this machine
    (exactly one of them). `search`: a finished `lpdet search` folder whose chosen architecture is
    compared with the resolution-only model (`lpdet.design.flow_arch_search`)."""
    started = time.perf_counter()
    custom_settings = settings is not None
    settings = settings or (DesignSettings.quick() if quick else DesignSettings.full())
    settings = replace(settings, **{k: v for k, v in (("arch", arch), ("width", width), ("select_fraction", select_fraction),
                                                      ("base", base), ("backbone_weights", backbone_weights))
                                    if v is not None}, from_scratch=from_scratch or settings.from_scratch)
    if threads is not None:
        settings = replace(settings, bench=replace(settings.bench, threads=threads))
    settings.validate()
    settings, start = choose_base(settings, str(data), arch=arch, width=width)
    budget_ms, budget_ratio = check_budget(budget_ms, budget_ratio)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_json_atomic({"preset": ("custom" if custom_settings else "quick" if quick else "full"), "data": str(data),
                      "budget_ms": budget_ms, "budget_ratio": budget_ratio, "settings": to_dict(settings),
                      "search": str(search) if search is not None else None},
                     out_dir / "settings.json")
    cache = TrialCache(out_dir / "trials", progress=progress, echo=echo)
    s = settings
    splits = design_data(dataset_yaml(data, synth_train=s.synth_train, synth_val=s.synth_val), out_dir / "selection",
                         s.select_fraction)
    preset = "custom settings" if custom_settings else "quick preset" if quick else "full preset"
    ctx = FlowContext(data=str(data), data_path=splits.evaluation, budget_ms=budget_ms, settings=s, out_dir=out_dir,
                      quick=quick, preset=preset, train_path=splits.training, select_source=splits.select_source,
                      budget_ratio=budget_ratio, noise=NoiseJudge(splits.evaluation), base=start)
    check_base_classes(start, splits.evaluation)
    found = open_search_folder(search, arch=s.arch, data=splits.evaluation) if search is not None else None
    ctx.setup = setup_section(ctx)

    try:
        final = _run_flow(ctx, cache, found)
    except NoFit as e:
        md, html = write_design_report(ctx, cache, started, failure=str(e))
        raise LpdetError(f"{e} (report: {md})") from None
    md, html = write_design_report(ctx, cache, started)
    return DesignResult(out_dir=out_dir, report_md=md, report_html=html, final_model=final,
                        summary=ctx.summary, trials_run=list(cache.ran), trials_cached=list(cache.cached_names),
                        seconds=time.perf_counter() - started)


def _run_flow(ctx: FlowContext, cache: TrialCache, found: SearchFolder | None = None) -> Path | None:
    """The steps of the module docstring, one function each, under one progress bar (step k of n, time
    left: tqdm's estimate from the steps done so far); returns the final model's path."""
    cache.plan(2 + 1 + 1 + 2 * len(ctx.settings.candidates()))
    names = [*DESIGN_STEPS[:4], *([ARCH_SEARCH] if found else []), *DESIGN_STEPS[4:]]
    with progress_bar(total=len(names), enabled=cache.progress, desc="design", unit="step") as bar:
        def next_step(done: int = 1) -> None:
            bar.update(done)
            if bar.n < len(names):
                bar.set_postfix_str(f"next: {names[bar.n]}")

        bar.set_postfix_str(f"next: {names[0]}")
        base_ckpt, qat_ckpt = _train_float_and_qat(ctx, cache)  # 1-2
        next_step(2)
        float_row, float_onnx, float_predictions = _quantization_table(ctx, cache, base_ckpt, qat_ckpt)  # 3
        next_step()
        search = _search_resolutions(ctx, cache, qat_ckpt, float_onnx)  # 4
        _record_search_steps(ctx, search, float_row, float_predictions)
        next_step()
        searched = arch_search_step(ctx, cache, found, search) if found else None  # the seed's 2019 step
        next_step(1 if found else 0)
        current = search.chosen
        if ctx.settings.filtering:  # 5
            current = filtering_step(ctx, cache, qat_ckpt, current, search.latency[current.resolution]) or current
        next_step()
        best, post = nms_step(ctx, cache, current, search.forward[current.resolution])  # 6
        next_step()
        final = _final_model(ctx, cache, current, best, post, search)  # 7
        if searched:
            add_row_after_final(ctx, searched)
        next_step()
    return final


def _train_float_and_qat(ctx: FlowContext, cache: TrialCache) -> tuple[Path, Path]:
    """Steps 1-2: the float base model (given, shipped or trained here), then QAT from it; their
    checkpoints."""
    s, base_r = ctx.settings, ctx.settings.base_resolution
    if ctx.given_base is not None:
        base_ckpt = resolve_checkpoint(ctx.given_base)
    else:
        base = cache.train(f"float-r{base_r}", training_config(s, ctx.train_path, s.float_training,
                                                                backbone_weights=s.backbone_weights))
        base_ckpt = cache.file(base, "best")
        if s.multi_scale_training.epochs > 0:  # so that the base holds at the sizes the search measures
            stage = cache.train(f"float-ms-r{base_r}", training_config(s, ctx.train_path, s.multi_scale_training,
                                                                        init=base_ckpt,
                                                                        multi_scale=s.multi_scale_bounds()))
            base_ckpt = cache.file(stage, "best")
    qat = cache.train(f"qat-r{base_r}", training_config(s, ctx.train_path, s.qat_training, qat=True, init=base_ckpt))
    return base_ckpt, cache.file(qat, "best")


def _quantization_table(ctx: FlowContext, cache: TrialCache, base_ckpt: Path,
                        qat_ckpt: Path) -> tuple[dict, Path, Path]:
    """Step 3 (Table 11.1); returns the float row, the float model's ONNX file and its predictions file."""
    s = ctx.settings

    def compare(directory: Path) -> dict:
        result = compare_quantization(base_ckpt, str(ctx.data_path), directory, qat_ckpt=qat_ckpt,
                                      calibration_images=s.calibration_images, threads=s.bench.threads,
                                      runs=s.compare_runs, max_images=s.eval_max_images, progress=False)
        return {"files": {"fp32": "model_fp32.onnx", "md": "quant_compare.md"}, "compare": compare_to_dict(result)}

    comp = cache.run("quant-compare", {"float": file_identity(base_ckpt), "qat": file_identity(qat_ckpt),
                                       "data": data_identity(ctx.data_path), "calibration_images": s.calibration_images,
                                       "threads": s.bench.threads, "runs": s.compare_runs, "max_images": s.eval_max_images,
                                       "keeps": "predictions"},
                     compare, kind="compare")
    kept = {r["name"]: cache.path("quant-compare") / r["predictions"]
            for r in comp["compare"]["rows"] if r["status"] == "ok"}
    intervals = {name: ctx.interval(kept["float"], path) for name, path in kept.items() if name != "float"}
    ctx.sections.append(quant_section(comp["compare"], intervals))
    return compare_row(comp["compare"], "float"), cache.file(comp, "fp32"), kept["float"]


@dataclass
class _Search:
    """What the resolution search measured and chose."""

    latency: dict[int, float]  # candidate resolution -> int8 latency of the QAT model loaded at it (no training)
    forward: dict[int, float]  # the same measurement's graph-only median (NMS excluded)
    float_latency: dict  # the fp32 model at the base resolution, timed in the same run
    fitting: list[int]  # candidates within the budget less the margin
    sweep: object  # the resolution experiment (lpdet.design.resolution.ResolutionSweep)
    tuned: list[Candidate]  # fine-tuned at their resolution (the base resolution included, as the reference)
    untuned: list[Candidate]  # the QAT model loaded at each candidate
    chosen: Candidate
    ratio: dict[int, float]  # candidate resolution -> its paired latency ratio to the base resolution


def _search_resolutions(ctx: FlowContext, cache: TrialCache, qat_ckpt: Path, float_onnx: Path) -> _Search:
    """Step 4 (Table 11.2 / Fig 11.2): latency at every candidate, fine-tuning of the largest that fit
    (and of the base resolution as the reference), the best fitting fine-tuned model chosen."""
    s, base_r = ctx.settings, ctx.settings.base_resolution
    measured = search_latencies(ctx, cache, qat_ckpt, float_onnx)  # resolves a --budget-ratio into ctx.budget_ms
    ctx.setup = setup_section(ctx)
    budget, search_table = ctx.budget_ms, measured.table
    limit = s.latency_limit(budget)  # what a model may measure to fit (the margin kept for re-benchmarks)
    candidates = s.candidates()
    latency = {r: measured.median(r) for r in candidates}
    fitting = [r for r in candidates if latency[r] <= limit]
    if not fitting:
        fastest = min(candidates, key=lambda r: latency[r])
        ctx.sections.append(Section("Resolution search", "No candidate resolution meets the budget.", [search_table]))
        raise NoFit(f"no resolution fits the budget, {budget_text(ctx)} ({limit_text(s, budget)}): the fastest candidate, "
                    f"{fastest}x{fastest}, measured {latency[fastest]:.2f} ms (int8 median, batch 1, {s.bench.threads} "
                    f"thread(s)); raise the budget, or try smaller resolutions or a smaller width")
    if base_r in fitting:  # legitimate (the budget may be loose), but the user may expect a trade-off
        log.warning("the %d model fits the budget as it is (%.2f ms on this machine): the resolution search has "
                    "nothing to trade; a budget below %.2g ms (or a --budget-ratio below 1) makes it choose a smaller input", base_r,
                    latency[base_r], latency[base_r])
    aligned = [r for r in fitting if r % 8 == 0]
    to_tune = (aligned or fitting)[: s.finetune_top]
    sweep = resolution_sweep(qat_ckpt, ctx.data_path, candidates, ctx.out_dir / "resolution", epochs=s.finetuning.epochs,
                             qat=True, finetune=set(to_tune) | {base_r}, batch_size=s.training.batch_size,
                             max_images=s.eval_max_images, calibration_images=s.calibration_images, budget_ms=budget,
                             fit_limit_ms=limit, train_overrides=finetune_overrides(s), cache=cache,
                             train_data=ctx.train_path, select=True, latency=measured.models, **bench_kw(s))
    tuned = [Candidate(f"QAT fine-tuned @{row.resolution}", f"finetune-r{row.resolution}", row.resolution,
                       Path(row.ft_onnx), Path(row.ft_checkpoint), row.ft_metrics, row.ft_latency_ms,
                       predictions=Path(row.ft_predictions), select_metrics=row.ft_select_metrics)
             for row in sweep.rows if row.ft_metrics is not None]
    untuned = [Candidate(f"QAT @{base_r} loaded at {row.resolution}", f"noft-r{row.resolution}", row.resolution,
                         Path(row.onnx), qat_ckpt, row.metrics, row.latency_ms, predictions=Path(row.predictions),
                         select_metrics=row.select_metrics)
               for row in sweep.rows]
    # Whether a resolution fits is decided once, by the search's measurement of its graph (a fine-tuned
    # model has the same graph; measuring it again near the budget would only add noise to the decision).
    # The final model is re-benchmarked before it is accepted. The base-resolution reference competes
    # too when it fits (same fine-tuning); ties in AP go to the faster.
    pool = [m for m in tuned if latency[m.resolution] <= limit] or [m for m in untuned if latency[m.resolution] <= limit]
    chosen = max(pool, key=lambda m: (choice_ap(m), -latency[m.resolution]))  # chosen on select, not val
    ctx.sections.append(resolution_section(ctx, sweep, search_table, to_tune, chosen, latency, fitting))
    forward = {r: measured.models[r]["forward_ms"] for r in candidates}
    return _Search(latency=latency, forward=forward, float_latency=measured.reference, fitting=fitting, sweep=sweep,
                   tuned=tuned, untuned=untuned, chosen=chosen,
                   ratio={r: measured.models[r].get("ratio") for r in candidates})


def _record_search_steps(ctx: FlowContext, search: _Search, float_row: dict, float_predictions: Path) -> None:
    """Table 11.4's rows for the float model, QAT, the reference fine-tuning and the resolution."""
    s, base_r, latency, chosen = ctx.settings, ctx.settings.base_resolution, search.latency, search.chosen
    noft_base = search.sweep.row(base_r)
    ref = next((m for m in search.tuned if m.resolution == base_r), None)
    record_step(ctx, "float", f"fp32 ONNX @{base_r}", base_r, float_row["metrics"], search.float_latency["median_ms"],
                predictions=float_predictions)
    record_step(ctx, "8-bit QAT", f"QAT int8 @{base_r}", base_r, noft_base.metrics, noft_base.latency_ms,
                predictions=noft_base.predictions, select_metrics=noft_base.select_metrics)
    # Steps that keep the graph (fine-tuning, filtering) show the search's measurement of that graph,
    # not a second one: the int8 kernels' time does not depend on the weights, and a re-measurement
    # would report the machine's load drift as the step's effect.
    if ref is not None:
        record_step(ctx, f"+{s.finetuning.epochs} epoch(s) QAT (reference)", f"QAT int8 @{base_r}, fine-tuned", base_r,
                    ref.metrics, latency[base_r], predictions=ref.predictions, select_metrics=ref.select_metrics,
                    note=SAME_GRAPH)
    record_step(ctx, "resolution", chosen.label, chosen.resolution, chosen.metrics, latency[chosen.resolution],
                predictions=chosen.predictions, select_metrics=chosen.select_metrics,
                note="unchanged: the base resolution meets the budget" if chosen.resolution == base_r else
                f"best select AP among the fine-tuned sizes that fit ({'a' if chosen.resolution % 8 == 0 else 'not a'} "
                f"multiple of 8)")


def _final_model(ctx: FlowContext, cache: TrialCache, current: Candidate, best, post: PostprocessConfig,
                 search: _Search) -> Path:
    """Step 7: the chosen model re-benchmarked with its NMS setting; if it no longer fits, the next best
    fitting one is tried. The one that fits becomes ``final/model.onnx``."""
    s, budget, latency = ctx.settings, ctx.budget_ms, search.latency
    limit = s.latency_limit(budget)
    others = [m for m in search.tuned if latency[m.resolution] <= limit] + \
        [m for m in search.untuned if latency[m.resolution] <= limit]
    order = [current] + sorted((m for m in others if m.onnx != current.onnx),
                               key=lambda m: (-choice_ap(m), latency[m.resolution]))
    tried = []
    final = None
    base_onnx = Path(search.sweep.row(s.base_resolution).onnx)
    for model in order:
        chosen_post = post if model is current else PostprocessConfig()
        # the same statistic as the search: interleaved with the base model (both with this NMS setting)
        fb = measure_interleaved(cache, f"final-{model.tag}-latency", [base_onnx, model.onnx], ctx.data_path,
                                 s.bench, postprocess=chosen_post)["models"][1]
        tried.append((model, fb))
        if budget_latency(ctx, fb) <= limit:
            final = (model, fb, chosen_post)
            break
    if final is None:
        fastest = min(budget_latency(ctx, fb) for _, fb in tried)
        raise NoFit(f"no model fitted the budget, {budget_text(ctx)} ({limit_text(s, budget)}) when re-benchmarked for "
                    f"the final pick (fastest: {fastest:.2f} ms); the machine's load may have changed: rerun, or "
                    f"raise the budget")
    model, fb, chosen_post = final
    metrics = best.metrics if model is current else model.metrics
    record_step(ctx, "final (re-benchmarked)", model.label, model.resolution, metrics, budget_latency(ctx, fb),
                predictions=best.predictions if model is current else model.predictions,
                select_metrics=best.select_metrics if model is current else model.select_metrics,
                note="; ".join(x for x in ("" if model is current else "the chosen model did not fit when "
                                           "re-benchmarked; next best",
                                           _rebenchmark_text(ctx, fb),
                                           "its interval straddles the fit limit" if straddles(budget_view(ctx, fb), limit)
                                           else "")
                               if x))
    return _finalise(ctx, model, fb, chosen_post, metrics)


def _rebenchmark_text(ctx: FlowContext, fb: dict) -> str:
    """What the final re-benchmark measured, and how its latency column was read from it."""
    measured = f"re-benchmark: {fb['median_ms']:.2f} ms" + (f" {interval_text(fb)}" if interval_text(fb) else "")
    if ctx.budget_ratio is None or fb.get("ratio") is None:
        return measured
    return (f"{measured}, {fb['ratio']:.3f} of the base model timed with it; the latency column is that ratio "
            f"x the base's {ctx.base_latency_ms:.2f} ms in the resolution search (the machine's drift cancels)")


def _finalise(ctx: FlowContext, model: Candidate, bench: dict, post, metrics: dict) -> Path:
    final_dir = ctx.out_dir / "final"
    final_dir.mkdir(parents=True, exist_ok=True)
    # The chosen NMS setting travels in the model: `lpdet bench` / `eval` / `predict` use it.
    target = update_metadata(model.onnx, final_dir / "model.onnx", {"postprocess": to_dict(post)})
    s = ctx.settings
    for_budget = budget_latency(ctx, bench)
    ctx.summary = {
        "model": str(target), "source_onnx": str(model.onnx), "checkpoint": str(model.checkpoint),
        "description": model.label, "arch": s.arch, "width": s.width, "resolution": model.resolution,
        "AP_split": "val", "selection_split": ctx.select_source,
        "AP": metrics.get("AP"), "AP50": metrics.get("AP50"), "AP75": metrics.get("AP75"),
        "AP_small": metrics.get("AP_small"), "AP_medium": metrics.get("AP_medium"), "AP_large": metrics.get("AP_large"),
        "latency_median_ms": bench["median_ms"], "latency_p90_ms": bench["p90_ms"],
        "latency_interval_ms": bench.get("median_interval_ms"), "latency_vs_base": bench.get("ratio"),
        "budget_ratio": ctx.budget_ratio, "base_latency_ms": ctx.base_latency_ms,
        "forward_ms": bench["forward_ms"], "postprocess_ms": bench["postprocess_ms"],
        "size_mb": model_size_bytes(target) / 1e6, "nms_iou": post.nms_iou, "class_agnostic": post.class_agnostic, "score_threshold": post.score_threshold,
        "top_k": post.top_k, "budget_ms": ctx.budget_ms, "latency_for_budget_ms": for_budget,
        "meets_budget": for_budget <= ctx.budget_ms,
        "budget_margin": s.budget_margin, "latency_limit_ms": s.latency_limit(ctx.budget_ms),
        "threads": s.bench.threads, "device": bench.get("device"), "runtime": bench.get("runtime"), "data": ctx.data,
        "steps": to_dict(ctx.steps),
    }
    save_json_atomic(ctx.summary, final_dir / "summary.json")
    return target
