"""What `lpdet sweep resolution|nms|filter` and `lpdet design` do once parsed (the parsers are in
`lpdet.design.cli`): check the options, run the experiment, print its table and where the files are."""

from __future__ import annotations

from lpdet.data.selection import check_select_fraction
from lpdet.design.cli import parse_float_list, parse_int_list
from lpdet.design.filtering import filter_table, filtering_ablation
from lpdet.design.flow import DesignSettings, design
from lpdet.design.flow_latency import check_budget
from lpdet.design.nms import nms_sweep, nms_table
from lpdet.design.report import markdown_table
from lpdet.design.resolution import resolution_sweep, resolution_table
from lpdet.errors import LpdetError
from lpdet.models.config import MIN_RESOLUTION, check_resolution


def _progress(args) -> bool:
    return not getattr(args, "quiet", False)


def _check_positive(option: str, value, minimum=1) -> None:
    if value is None or value < minimum:
        raise LpdetError(f"{option} {value}: must be >= {minimum}")


def cmd_sweep_resolution(args) -> None:
    resolutions = parse_int_list("--resolutions", args.resolutions, minimum=MIN_RESOLUTION)
    _check_positive("--epochs", args.epochs)
    _check_positive("--batch-size", args.batch_size, 2)
    _check_positive("--runs", args.runs)
    if args.threads < 0:
        raise LpdetError(f"--threads {args.threads}: must be >= 0")
    if args.budget_ms is not None and not args.budget_ms > 0:
        raise LpdetError(f"--budget-ms {args.budget_ms}: must be > 0")
    overrides = {"lr": args.lr, "warmup_steps": args.warmup_steps, "workers": args.workers,
                 "max_val_images": args.max_val_images}
    sweep = resolution_sweep(args.init, args.data, resolutions, args.out, epochs=args.epochs,
                             qat=not args.float, finetune=not args.no_finetune, batch_size=args.batch_size,
                             threads=args.threads, runs=args.runs, max_images=args.max_images, budget_ms=args.budget_ms,
                             train_overrides=overrides, progress=_progress(args))
    print(markdown_table(resolution_table(sweep)))
    print(f"wrote {args.out / 'resolution_sweep.md'}, resolution_sweep.json and resolution_sweep.png")


def cmd_sweep_nms(args) -> None:
    ious = parse_float_list("--ious", args.ious, low=0.0, high=1.0, low_open=True)
    scores = parse_float_list("--score-thresholds", args.score_thresholds, low=0.0, high=0.999999)
    tops = parse_int_list("--top-ks", args.top_ks, minimum=1)
    _check_positive("--runs", args.runs)
    if args.threads < 0:
        raise LpdetError(f"--threads {args.threads}: must be >= 0")
    sweep = nms_sweep(args.model, args.data, ious, score_thresholds=scores, top_ks=tops, threads=args.threads,
                      runs=args.runs, max_images=args.max_images, out_dir=args.out, progress=_progress(args))
    print(markdown_table(nms_table(sweep)))
    best = sweep.best()
    print(f"best: NMS IoU {best.nms_iou:g}, score threshold {best.score_threshold:g}, top-k {best.top_k}: "
          f"AP {best.ap:.4f}, {best.latency_ms:.2f} ms end-to-end")
    if args.out:
        print(f"wrote {args.out / 'nms_sweep.md'} and nms_sweep.json")


def cmd_sweep_filter(args) -> None:
    _check_positive("--epochs", args.epochs)
    _check_positive("--batch-size", args.batch_size, 2)
    if args.width is not None and not args.width > 0:
        raise LpdetError(f"--width {args.width}: must be > 0")
    if args.resolution is not None:
        check_resolution(args.resolution, f"--resolution {args.resolution}")
    if not args.small_max > 0:
        raise LpdetError(f"--small-max {args.small_max}: must be > 0")
    overrides = {"lr": args.lr, "warmup_steps": args.warmup_steps, "workers": args.workers,
                 "max_val_images": args.max_val_images}
    ablation = filtering_ablation(args.init, args.data, args.out, epochs=args.epochs, resolution=args.resolution,
                                  arch=args.arch, width=args.width, qat=True if args.qat else None,
                                  batch_size=args.batch_size, drop_images_with=args.drop_images_with,
                                  small_max=args.small_max, train_overrides=overrides, progress=_progress(args))
    print(markdown_table(filter_table(ablation)))
    print(f"wrote {args.out / 'filter_ablation.md'}, filter_ablation.json and the AP-by-size plots")


def cmd_design(args) -> None:
    check_budget(args.budget_ms, args.budget_ratio)
    if args.select_fraction is not None:
        check_select_fraction(args.select_fraction)
    if args.threads < 0:
        raise LpdetError(f"--threads {args.threads}: must be >= 0")
    if args.width is not None and not args.width > 0:
        raise LpdetError(f"--width {args.width}: must be > 0")
    overrides = {}
    if args.budget_margin is not None:
        if not 0 <= args.budget_margin < 1:
            raise LpdetError(f"--budget-margin {args.budget_margin}: must be a fraction in [0, 1), e.g. 0.1")
        overrides["budget_margin"] = args.budget_margin
    resolutions = parse_int_list("--resolutions", args.resolutions, minimum=MIN_RESOLUTION)
    if resolutions:
        overrides["resolutions"] = resolutions
    settings = None
    if overrides:
        settings = (DesignSettings.quick if args.quick else DesignSettings.full)(**overrides)
    result = design(args.data, args.budget_ms, args.out, quick=args.quick, settings=settings, arch=args.arch,
                    width=args.width, threads=args.threads, select_fraction=args.select_fraction,
                    budget_ratio=args.budget_ratio, base=args.base, from_scratch=args.from_scratch,
                    backbone_weights=args.backbone_weights, search=args.search, progress=_progress(args))
    s = result.summary
    ratio = f" = {s['budget_ratio']:g} x the base model's {s['base_latency_ms']:.2f} ms" if s.get("budget_ratio") else ""
    print(f"final model: {result.final_model} ({s['description']}): AP {s['AP']:.4f} (val), "
          f"{s['latency_median_ms']:.2f} ms median (budget {s['budget_ms']:.3g} ms{ratio}), {s['size_mb']:.2f} MB, "
          f"resolution {s['resolution']}, NMS IoU {s['nms_iou']:g}")
    print(f"report: {result.report_md} and {result.report_html} "
          f"({len(result.trials_run)} trials run, {len(result.trials_cached)} cached, {result.seconds:.0f} s)")
