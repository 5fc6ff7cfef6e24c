"""The design report's sections (setup, Table 11.1, resolution, Table 11.4, final model) and writing
`report.md` / `report.html`."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import onnxruntime
import torch

from lpdet.data.sizes import BUCKETS, SizeThresholds, dataset_stats
from lpdet.data.spec import resolve_dataset
from lpdet.deploy.latency import cpu_name
from lpdet.design.flow_context import Candidate, FlowContext, ap_of
from lpdet.design.flow_latency import budget_text, limit_text
from lpdet.design.noise import INTERVAL_NOTE
from lpdet.design.quant_compare import compare_table
from lpdet.design.report import Section, Table, write_report
from lpdet.design.resolution import resolution_figure, resolution_table
from lpdet.design.tables import ap_or_none
from lpdet.design.trials import TrialCache
from lpdet.quant.weight_ranges import format_spread


def setup_section(ctx: FlowContext) -> Section:
    s = ctx.settings
    spec = resolve_dataset(str(ctx.data_path))
    rows = []
    thresholds = SizeThresholds()
    for split_name, split in (("train", spec.train), ("select", spec.select), ("val", spec.val)):
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
    text = (f"Data: {ctx.data}{where}. Budget: {budget_text(ctx)} int8 latency (median, batch 1, "
            f"{s.bench.threads} thread(s)). Machine: {cpu_name()}, {platform.system()} {platform.machine()}; torch "
            f"{torch.__version__}, onnxruntime {onnxruntime.__version__} (CPUExecutionProvider).{load} "
            f"Settings: {ctx.preset}, all in settings.json ({s.arch}, width {s.width:g}, "
            f"base resolution {s.base_resolution}; epochs: float {s.float_training.epochs}{_multi_scale_text(ctx)}, "
            f"QAT {s.qat_training.epochs}, fine-tuning {s.finetuning.epochs}).")
    if ctx.base is not None:
        text += f" Float base model: {ctx.base.description}."
    text += (f" Selection split: {ctx.select_source}. Every choice of the design (resolution, dataset filtering, "
             f"NMS setting, each training run's best epoch) is made on it; val is only reported.")
    return Section("Setup", text, [data_table])


def _multi_scale_text(ctx: FlowContext) -> str:
    """The multi-scale stage of a base the flow trains itself (none for a shipped or given base)."""
    s = ctx.settings
    if ctx.given_base is not None or s.multi_scale_training.epochs == 0:
        return ""
    low, high = s.multi_scale_bounds()
    return f" then {s.multi_scale_training.epochs} multi-scale ({low}-{high})"


def quant_section(compare: dict, intervals: dict[str, str | None] | None = None) -> Section:
    table = compare_table(compare, "Table 11.1: float vs 8-bit", intervals=intervals)
    table.note = (f"{compare['arch']} @{compare['resolution']} on {compare['images']} val images; onnxruntime CPU, "
                  f"{compare['threads']} thread(s), batch 1, median of {compare['runs']} runs on real val images, interleaved across the "
                  f"rows; {compare['device']}. Naive 8-bit: per-tensor weights, ranges from 2 images; calibrated "
                  f"PTQ: per-channel weights, {compare['calibration_images']} calibration images."
                  + (f" Δ AP vs float {INTERVAL_NOTE}" if intervals is not None else ""))
    text = "The float model and its 8-bit versions, each deployed as ONNX."
    if compare.get("weight_spread"):

        text += " " + format_spread(compare["weight_spread"])
    return Section("Table 11.1: quantization", text, [table])


def resolution_section(ctx: FlowContext, sweep, search_table: Table, to_tune: list[int], chosen: Candidate,
                        latency: dict, fit: list[int]) -> Section:
    s = ctx.settings
    base = s.base_resolution
    text = (f"Every candidate was exported int8 from the QAT model and benchmarked without training; "
            f"{len(fit)} of {len(latency)} fit the budget, {budget_text(ctx)} ({limit_text(s, ctx.budget_ms)}) "
            f"({', '.join(str(r) for r in sorted(fit, reverse=True)) or 'none'}). Fine-tuned with QAT for "
            f"{s.finetuning.epochs} epoch(s): {', '.join(str(r) for r in sorted(to_tune, reverse=True))}"
            f"{'' if base in to_tune else f', and {base} as the reference'}. Chosen: {chosen.label} "
            f"(AP {ap_of(chosen.metrics):.3f}, {chosen.latency_ms:.2f} ms).")
    if base in fit:
        text += (f" The budget does not bind: the {base} model itself fits ({latency[base]:.2f} ms on this machine); "
                 f"a budget below that makes the search trade resolution for latency.")
    return Section("Table 11.2 / Figure 11.2: input resolution", text,
                   [search_table, resolution_table(sweep, title="Table 11.2: AP and int8 latency vs input resolution",
                                                   reference=base),
                    resolution_figure(sweep, title="Figure 11.2: AP and int8 latency vs input resolution")])


def steps_table(ctx: FlowContext) -> Table:
    rows = []
    for p in ctx.steps:
        if not p.measured:
            rows.append([p.step, p.model, None, None, None, None, None, None, None, None, False, p.note])
            continue
        rows.append([p.step, p.model, p.resolution, ap_or_none(p.AP), p.delta_AP, p.delta_AP_interval,
                     ap_or_none(p.select_AP), p.latency_ms, p.delta_latency_ms, p.delta_latency_pct, p.kept,
                     "; ".join(x for x in (p.basis, p.note) if x)])
    return Table("Table 11.4: each step's measured change", ["step", "model", "resolution", "AP", "Δ AP",
                                                             "Δ AP [95% interval]", "select AP", "latency ms",
                                                             "Δ latency ms", "Δ latency %", "kept",
                                                             "compared with / note"], rows,
                 note="Δ: this step minus the step it is compared with (negative Δ AP is a loss; negative Δ latency "
                      "a speed-up). AP: COCO AP on val of the deployed model; latency: median batch-1 end-to-end "
                      "(forward + NMS, default setting) on this machine, from the resolution search for the steps "
                      "that keep its graph; the NMS and final rows with the tuned NMS setting. AP and Δ AP: on val "
                      "(reported only); select AP: on the selection split, where each step's choice is made (— where "
                      "no choice needs it). Δ AP " + INTERVAL_NOTE,
                 formats={"Δ AP": "+.4f", "latency ms": ".2f", "Δ latency ms": "+.2f", "Δ latency %": "+.1f"})


def final_section(ctx: FlowContext) -> Section:
    f = ctx.summary
    rows = [["resolution", f["resolution"]]]
    rows += [[k, ap_or_none(f[k])] for k in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")]
    interval = f.get("latency_interval_ms")
    rows += [["latency median ms", f["latency_median_ms"]],
             ["latency median 95% interval ms", f"[{interval[0]:.2f}, {interval[1]:.2f}]" if interval else None],
             ["latency p90 ms", f["latency_p90_ms"]],
             ["budget ms", f["budget_ms"]], ["budget ratio (x base model)", f.get("budget_ratio")],
             ["fits at most ms (budget less margin)", f["latency_limit_ms"]],
             ["size MB", f["size_mb"]], ["NMS IoU", f["nms_iou"]],
             ["score threshold", f["score_threshold"]], ["top-k", f["top_k"]], ["threads", f["threads"]]]
    check = (f"To check it: `lpdet bench {f['model']} --threads {f['threads']}` (the model carries its NMS "
             f"setting) and `lpdet eval {f['model']} --data {ctx.data_path}`.")
    return Section("Final model", f"{f['description']}: {f['model']} (summary: final/summary.json). Latency "
                                  f"re-benchmarked with the NMS setting below on {f['device']}; AP on val with it. "
                                  f"{check}",
                   [Table("Final model", ["quantity", "value"], [[k, _cell(v)] for k, v in rows])])


def _cell(v):
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return v


def write_design_report(ctx: FlowContext, cache: TrialCache, started: float, failure: str | None = None) -> tuple[Path, Path]:
    sections = [ctx.setup] + ctx.sections
    if ctx.steps:
        sections.append(Section("Table 11.4: step by step", "", [steps_table(ctx)]))
    if failure:
        sections.append(Section("Result: no model meets the budget", failure))
    elif ctx.summary:
        sections.append(final_section(ctx))
    seconds = time.perf_counter() - started
    sections[0] = Section(sections[0].title, sections[0].text + f"\n\nThis call took {seconds:.0f} s: "
                          f"{len(cache.ran)} trial(s) run, {len(cache.cached_names)} reused from the cache "
                          f"({cache.root}).", sections[0].items)
    return write_report(sections, ctx.out_dir, title=f"Guided design: {ctx.settings.arch} under {budget_text(ctx)}")
