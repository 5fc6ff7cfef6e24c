"""The design's architecture-search step (the seed's 2019 step), after the resolution search:
``lpdet design --search DIR`` takes a finished `lpdet search` (`lpdet.design.search.folder`) and
puts its chosen architecture on the same footing as the resolution-only model.

Same data, splits, training and harness: the candidate is built with the supernet's inherited
weights, BatchNorm recalibrated on the design's training images (the search's own
`inherited_checkpoint`), fine-tuned with QAT on the design's training split with the design's
fine-tuning schedule (the resolution-only model's), exported int8 and evaluated on the design's
val and selection splits (`measure_int8`); its latency is one interleaved run of the base model
(QAT int8 at the base resolution), the resolution-only chosen model and the search's model, read as
the resolution search reads it (`budget_latency`). Every step is a cached trial.

Rule (Table 11.4's "kept"): the search's model is kept when it fits the design's budget and has a
higher AP on the design's selection split than the resolution-only model. The final pick is left
unchanged either way (the filtering and NMS steps run on the resolution-only model's
architecture); the row and the section say so.
"""

from __future__ import annotations

from pathlib import Path

from lpdet.design.flow_context import Candidate, FlowContext, StepRow, ap_of, bench_kw, choice_ap, record_step
from lpdet.design.flow_latency import budget_latency, budget_text, limit_text
from lpdet.design.latency_trials import interval_text, measure_interleaved
from lpdet.design.noise import INTERVAL_NOTE
from lpdet.design.report import Figure, Section, Table, figure_from_matplotlib
from lpdet.design.search.candidate import load_context
from lpdet.design.search.finalists import inherited_checkpoint, with_detail
from lpdet.design.search.folder import SearchFolder, image_files
from lpdet.design.settings import finetune_overrides, train_config
from lpdet.design.tables import save_json_atomic
from lpdet.design.trials import TrialCache, measure_int8
from lpdet.models.config import kept_anchors
from lpdet.serialize import to_dict

__all__ = ["arch_search_step", "add_row_after_final", "SECTION_TITLE", "STEP"]

SECTION_TITLE = "Architecture search"
STEP = "architecture search"


def arch_search_step(ctx: FlowContext, cache: TrialCache, folder: SearchFolder, search) -> StepRow:
    """Fine-tune, measure and time the search's chosen candidate (see the module docstring); append the
    report's section and return its Table 11.4 row (the flow adds it after the final row: a side branch,
    compared with the resolution-only model `search.chosen`)."""
    s, candidate = ctx.settings, folder.candidate
    cache.plan(6)  # inheritance, fine-tuning, export, two evaluations, latency
    sctx = load_context(folder.settings, ctx.data_path, folder.supernet)
    init = inherited_checkpoint(cache, "arch-search-init", candidate, sctx, folder.supernet)
    cfg = train_config(ctx.train_path, arch=candidate.arch, width=candidate.width, resolution=candidate.resolution,
                       **kept_anchors(sctx.supernet.config), epochs=s.finetuning.epochs,
                       batch_size=s.training.batch_size, init=init, qat=True,
                       **finetune_overrides(s))  # the resolution sweep's fine-tuning, as the resolution-only model's
    trained = cache.train("arch-search-finetune", with_detail(cfg, candidate))
    m = measure_int8(cache, "arch-search", cache.file(trained, "best"), ctx.data_path, resolution=None,
                     max_images=s.eval_max_images, calibration_images=s.calibration_images, select=True,
                     benchmark=False, **bench_kw(s))
    label = f"search trial {folder.chosen['trial']} ({folder.chosen.get('kind', 'search')}), QAT fine-tuned @{candidate.resolution}"
    model = Candidate(label, "arch-search", candidate.resolution, m.onnx, cache.file(trained, "best"), m.metrics,
                      0.0, m.size_mb, predictions=m.predictions, select_metrics=m.select_metrics)
    base_onnx = Path(search.sweep.row(s.base_resolution).onnx)
    timed = measure_interleaved(cache, "arch-search-latency", [base_onnx, search.chosen.onnx, model.onnx],
                                ctx.data_path, s.bench)["models"]
    model.latency_ms = budget_latency(ctx, timed[2])
    chosen_ms = budget_latency(ctx, timed[1])
    limit = s.latency_limit(ctx.budget_ms)
    fits, better = model.latency_ms <= limit, choice_ap(model) > choice_ap(search.chosen)
    kept = fits and better
    steps = (int(trained["steps"]), _steps_of(search))
    ctx.sections.append(_section(ctx, folder, search, model, timed, fits, kept, steps))
    note = (("kept by the rule (fits the budget, higher select AP)" if kept else
             "not kept: " + ("it does not fit the budget" if not fits else "its select AP is not higher"))
            + "; the final pick is unchanged (filtering and NMS run on the resolution-only model's architecture)")
    record_step(ctx, STEP, label, candidate.resolution, model.metrics, model.latency_ms, predictions=model.predictions,
                select_metrics=model.select_metrics, kept=kept, note=note,
                previous=(search.chosen.metrics, chosen_ms, search.chosen.predictions),
                basis=f"the resolution-only model ({search.chosen.label}), timed in the same run")
    return ctx.steps.pop()


def add_row_after_final(ctx: FlowContext, row: StepRow) -> None:
    """Table 11.4's architecture-search row, last: a side branch compared with the resolution-only model (the
    rows before it compare with the previous kept step); ``final/summary.json`` lists it too."""
    ctx.steps.append(row)
    if ctx.summary:
        ctx.summary.update(steps=to_dict(ctx.steps), architecture_search=to_dict(row))
        save_json_atomic(ctx.summary, ctx.out_dir / "final" / "summary.json")


def _steps_of(search) -> int | None:
    row = search.sweep.row(search.chosen.resolution)
    return row.ft_steps if row is not None and search.chosen.tag.startswith("finetune-") else None


def _section(ctx: FlowContext, folder: SearchFolder, search, model: Candidate, timed: list[dict], fits: bool,
             kept: bool, steps: tuple[int, int | None]) -> Section:
    s, chosen = ctx.settings, search.chosen
    limit = s.latency_limit(ctx.budget_ms)
    text = (f"Search: {folder.path}; its chosen candidate, trial {folder.chosen['trial']} "
            f"({folder.chosen.get('kind', 'search')}, {model.resolution} px), was chosen by the search on its own "
            f"selection split (select AP {folder.chosen['select_ap']:.4f} by inherited weights, "
            f"{folder.chosen['latency_ms']:.2f} ms in its own run, its budget {folder.budget_ms:g} ms). "
            f"{_data_text(ctx, folder)} Here it was built with the supernet's weights (BatchNorm recalibrated on "
            f"the design's training images), fine-tuned with QAT on the design's training split for {steps[0]} "
            f"steps (the resolution-only model: {steps[1] if steps[1] is not None else 'not fine-tuned'}), exported "
            f"int8 and evaluated on the design's val and selection splits. Latency: one interleaved run of the base "
            f"model, the resolution-only model and the search's model.")
    diff = ctx.interval(chosen.predictions, model.predictions) or f"{ap_of(model.metrics) - ap_of(chosen.metrics):+.4f}"
    text += (f"\n\nOn the design's budget, {budget_text(ctx)} ({limit_text(s, ctx.budget_ms)}): the search's model "
             f"{'fits' if fits else 'does NOT fit'} ({model.latency_ms:.2f} ms against {limit:.2f} ms). val AP of the "
             f"search's model minus the resolution-only model: {diff}. Rule: kept when it fits and its select AP is "
             f"higher ({choice_ap(model):.4f} vs {choice_ap(chosen):.4f}): {'kept' if kept else 'not kept'}; the "
             f"final pick is unchanged either way (the later steps are for the resolution-only architecture). "
             f"Grid finalists are not re-measured here (see the search's own report). Δ AP {INTERVAL_NOTE}")
    rows = [[name, r, ap_of(metrics) if metrics else None, sel, t["median_ms"], interval_text(t), t.get("ratio"),
             budget_latency(ctx, t) <= limit]
            for (name, r, metrics, sel), t in zip(
                [(f"base: QAT int8 @{s.base_resolution}", s.base_resolution, search.sweep.row(s.base_resolution).metrics,
                  (search.sweep.row(s.base_resolution).select_metrics or {}).get("AP")),
                 (f"resolution only: {chosen.label}", chosen.resolution, chosen.metrics, choice_ap(chosen)),
                 (f"architecture search: {model.label}", model.resolution, model.metrics, choice_ap(model))], timed)]
    table = Table("Architecture search against the resolution-only model, timed together",
                  ["model", "resolution", "val AP", "select AP", "median ms", "95% interval ms", "vs base", "fits"],
                  rows, formats={"median ms": ".2f", "vs base": ".3f", "select AP": ".4f", "val AP": ".4f"},
                  note="vs base: the median of per-round paired ratios to the base model in this run; fits: read as "
                       "the resolution search reads it (with --budget-ratio, the ratio x the base's latency there).")
    items: list = [table, _figure(ctx, search, model, timed[2].get("ratio"), limit)]
    if folder.pareto_png is not None:
        items.append(Figure("The search's own Pareto front", folder.pareto_png.read_bytes(),
                            caption="From the search's folder: AP on the search's selection split (inherited weights, "
                                    "no fine-tuning) against latency in the search's own runs, not the design's."))
    return Section(SECTION_TITLE, text, items)


def _data_text(ctx: FlowContext, folder: SearchFolder) -> str:
    """Where the search's supernet learned, against the design's selection and val splits (by image id)."""
    if folder.data is None:
        return "The search used its dataset's own select: split (not compared with the design's here)."
    trained = image_files(folder.data, "train")
    select, val = image_files(ctx.data_path, "select"), image_files(ctx.data_path, "val")
    same_val = image_files(folder.data, "val") == val
    return (f"Its supernet trained on {len(trained)} images: {len(trained & select)} of the design's "
            f"{len(select)} selection images and {len(trained & val)} of its {len(val)} val images among them"
            f"{' (the select AP below is then optimistic)' if trained & select else ''}; the search's val split is "
            f"{'the same as' if same_val else 'NOT the same as'} the design's.")


def _figure(ctx: FlowContext, search, model: Candidate, ratio: float | None, limit: float) -> Figure:
    from matplotlib.figure import Figure as MplFigure  # imported when drawing (see report.line_plot)

    fig = MplFigure(figsize=(7.0, 4.4))
    ax = fig.add_subplot()
    base = ctx.base_latency_ms
    for points, style, name in ((search.untuned, "o", "resolution only, QAT loaded at r (no fine-tuning)"),
                                (search.tuned, "s", "resolution only, QAT fine-tuned at r")):
        pts = sorted((search.ratio[m.resolution], choice_ap(m)) for m in points if search.ratio.get(m.resolution))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style + "-", markersize=5, linewidth=0.8, label=name)
    chosen = search.chosen
    ax.plot([search.ratio.get(chosen.resolution)], [choice_ap(chosen)], "D", markersize=9, color="tab:green",
            label=f"resolution-only chosen ({chosen.resolution})")
    if ratio is not None:
        ax.plot([ratio], [choice_ap(model)], "*", markersize=16, color="tab:orange",
                label="architecture search's model, fine-tuned alike")
    if limit / base <= 1.5 * max(ax.get_xlim()[1], 1.0):  # a loose budget's limit would squash the points
        ax.axvline(limit / base, color="tab:red", linestyle=":", label="fit limit")
    ax.set_xlabel("int8 latency / the base model's (paired, interleaved runs)")
    ax.set_ylabel("AP on the design's selection split")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return figure_from_matplotlib(fig, "Architecture search: select AP vs latency ratio to the base",
                                  caption="Resolution-only points: the resolution search's interleaved run; the "
                                          "search's model: its own run with the base and the resolution-only model.")
