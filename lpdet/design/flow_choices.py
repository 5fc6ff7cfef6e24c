"""Steps 5 and 6 of the design flow (`lpdet.design.flow`): the choices made on the chosen resolution's
model, dataset filtering and the NMS setting, each on the selection split with val reported."""

from __future__ import annotations

from pathlib import Path

from lpdet.design.filtering import FilterTooSmall, filter_figures, filter_table, filtering_ablation
from lpdet.design.flow_context import (SAME_GRAPH, Candidate, FlowContext, StepRow, ap_of, bench_kw, choice_ap,
                                       record_step)
from lpdet.design.nms import nms_sweep, nms_table
from lpdet.design.noise import INTERVAL_NOTE
from lpdet.design.report import Section
from lpdet.design.settings import finetune_overrides
from lpdet.design.splits import SPLIT_NOTE
from lpdet.design.trials import TrialCache, measure_int8
from lpdet.models.postprocess import PostprocessConfig

__all__ = ["filtering_step", "nms_step"]


def filtering_step(ctx: FlowContext, cache: TrialCache, qat_ckpt: Path, current: Candidate,
               graph_latency_ms: float) -> Candidate | None:
    """Step 5 (Figs 11.3 / 11.4): the fine-tuning at the chosen resolution repeated without the training
    images holding small objects; the filtered model if its deployed AP is higher, else None."""
    s = ctx.settings
    r = current.resolution
    try:
        ablation = filtering_ablation(qat_ckpt, ctx.train_path, ctx.out_dir / "filtering", epochs=s.finetuning.epochs,
                                      resolution=r, qat=True, batch_size=s.training.batch_size, small_max=s.small_max,
                                      train_overrides=finetune_overrides(s),
                                      names=(f"finetune-r{r}", f"finetune-r{r}-no-small"), cache=cache)
    except FilterTooSmall as e:
        ctx.sections.append(Section("Figures 11.3 / 11.4: dataset filtering", f"Skipped: {e}."))
        ctx.steps.append(StepRow("dataset filtering", "skipped", note=str(e)))
        return None
    ckpt = Path(ablation.runs["filtered"].checkpoint)
    m = measure_int8(cache, f"finetune-r{r}-no-small", ckpt, ctx.data_path, resolution=None,
                     max_images=s.eval_max_images, calibration_images=s.calibration_images, select=True,
                     **bench_kw(s))
    filtered = Candidate(f"QAT fine-tuned @{r} without small-object images", f"finetune-r{r}-no-small", r,
                         m.onnx, ckpt, m.metrics, m.latency_ms, m.size_mb, predictions=m.predictions,
                         select_metrics=m.select_metrics)
    # the unfiltered arm is the fine-tuning at r when the chosen model is that one (same trial)
    unfiltered_metrics = current.metrics if current.tag == f"finetune-r{r}" else None
    keep = choice_ap(filtered) > choice_ap(current)  # same graph and resolution: only AP (on select) differs
    deployed = {"filtered": filtered.metrics, **({"all": unfiltered_metrics} if unfiltered_metrics else {})}
    dropped = ablation.filter_report
    text = (f"Fine-tuning at {r} repeated, for about the same number of steps, without the "
            f"{dropped.get('removed_images')} training images (of {dropped.get('before', {}).get('images')}) that "
            f"hold small objects (area < {s.small_max:g}²). Deployed (int8) AP on val: "
            f"{ap_of(filtered.metrics):.3f} filtered vs {ap_of(current.metrics):.3f} for the chosen model; on the "
            f"selection split, where the choice is made: {choice_ap(filtered):.3f} vs {choice_ap(current):.3f}: the "
            f"filtered model is {'kept' if keep else 'not kept'}. The training curves are on the selection split "
            f"(every training run of the design validates on it). Δ AP {INTERVAL_NOTE} {SPLIT_NOTE}")
    ctx.sections.append(Section("Figures 11.3 / 11.4: dataset filtering", text,
                                [filter_table(ablation, deployed=deployed,
                                              interval=ctx.interval(current.predictions, filtered.predictions)),
                                 *filter_figures(ablation)]))
    record_step(ctx, "dataset filtering", filtered.label, r, filtered.metrics, graph_latency_ms, kept=keep,
                predictions=filtered.predictions, select_metrics=filtered.select_metrics, note=SAME_GRAPH)
    if keep:
        return filtered
    return None


def nms_step(ctx: FlowContext, cache: TrialCache, current: Candidate, forward_ms: float):
    """Step 6 (Table 11.3): the NMS sweep on the chosen model, per-class and class-agnostic NMS at every
    IoU; returns its best row (on the selection split) and that setting. `forward_ms`: the graph's
    median from the resolution search's interleaved measurement (so that Table 11.3's end-to-end
    figures and Table 11.4's come from one measurement; only the NMS time is measured here)."""
    s = ctx.settings
    ious = list(dict.fromkeys(float(v) for v in s.nms_ious))
    nms = nms_sweep(current.onnx, ctx.data_path, ious, max_images=s.eval_max_images, out_dir=ctx.out_dir / "nms",
                    cache=cache, name=f"nms-{current.tag}", select=True, class_agnostic=(False, True),
                    forward_ms=forward_ms, forward_source="the resolution search's interleaved measurement of this graph",
                    **bench_kw(s))
    best = nms.best()
    baseline = nms.find(ious[0]) or nms.rows[0]
    agnostic = next(r for r in nms.rows if r.class_agnostic and abs(r.nms_iou - baseline.nms_iou) < 1e-9)
    intervals = [None if r is baseline else ctx.interval(baseline.predictions, r.predictions) for r in nms.rows]
    effect = (f"Class-agnostic NMS at IoU {baseline.nms_iou:g} against per-class: Δ AP "
              f"{intervals[nms.rows.index(agnostic)] or f'{agnostic.ap - baseline.ap:+.3f}'}, NMS "
              f"{agnostic.nms_ms - baseline.nms_ms:+.3f} ms per image ({agnostic.nms_ms:.3f} vs {baseline.nms_ms:.3f}).")
    ctx.sections.append(Section(
        "Table 11.3: NMS threshold",
        f"Post-processing settings of the chosen model ({current.label}). The first IoU ({baseline.nms_iou:g}, per "
        f"class) is the baseline; the setting with the highest AP on the selection split is kept (ties: the faster): "
        f"IoU {best.nms_iou:g}{', class-agnostic' if best.class_agnostic else ''}, score threshold "
        f"{best.score_threshold:g}, top-k {best.top_k}. {effect} {INTERVAL_NOTE} {SPLIT_NOTE}",
        [nms_table(nms, title="Table 11.3: AP and end-to-end latency vs NMS setting", intervals=intervals)]))
    record_step(ctx, "NMS setting", f"{current.label}, NMS IoU {best.nms_iou:g}"
                f"{' class-agnostic' if best.class_agnostic else ''}", current.resolution, best.metrics,
                best.latency_ms, predictions=best.predictions, select_metrics=best.select_metrics,
                previous=(baseline.metrics, baseline.latency_ms, baseline.predictions),
                basis=f"same model at NMS IoU {baseline.nms_iou:g}, per class (end-to-end, real predictions)")
    return best, PostprocessConfig(score_threshold=best.score_threshold, nms_iou=best.nms_iou, top_k=best.top_k,
                                   class_agnostic=best.class_agnostic)
