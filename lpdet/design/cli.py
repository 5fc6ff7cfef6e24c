"""`lpdet sweep resolution|nms|filter` and `lpdet design`: the design commands of the CLI.

`add_design_commands(commands, common)` registers them on the main parser's subparsers. List
options (``--resolutions 300,280``) are parsed here, so a bad value is a one-line `LpdetError`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lpdet.design.flow import DesignSettings, design
from lpdet.design.sweeps import (filter_table, filtering_ablation, nms_sweep, nms_table, resolution_sweep,
                                 resolution_table)
from lpdet.design.report import markdown_table
from lpdet.errors import LpdetError
from lpdet.models.config import MIN_RESOLUTION, check_resolution

__all__ = ["add_design_commands", "parse_int_list", "parse_float_list"]


def parse_int_list(option: str, text: str | None, *, minimum: int | None = None) -> list[int] | None:
    """``"300,280"`` -> ``[300, 280]``; `LpdetError` naming `option` for anything else."""
    if text is None:
        return None
    values = []
    for part in str(text).replace(" ", "").split(","):
        try:
            value = int(part)
        except ValueError:
            raise LpdetError(f"{option} {text}: {part!r} is not a whole number; give a comma-separated list "
                             f"such as 300,280,240") from None
        if minimum is not None and value < minimum:
            raise LpdetError(f"{option} {text}: {value} is below {minimum}")
        values.append(value)
    return values


def parse_float_list(option: str, text: str | None, *, low: float | None = None, high: float | None = None,
                     low_open: bool = False) -> list[float] | None:
    """``"0.3,0.2"`` -> ``[0.3, 0.2]`` with optional bounds; `LpdetError` naming `option` otherwise."""
    if text is None:
        return None
    values = []
    for part in str(text).replace(" ", "").split(","):
        try:
            value = float(part)
        except ValueError:
            raise LpdetError(f"{option} {text}: {part!r} is not a number; give a comma-separated list such as "
                             f"0.3,0.2,0.1") from None
        if value != value or (low is not None and (value <= low if low_open else value < low)) or \
                (high is not None and value > high):
            bound = f"{'(' if low_open else '['}{low}, {high}]"
            raise LpdetError(f"{option} {text}: {value} is outside {bound}")
        values.append(value)
    return values


def _progress(args) -> bool:
    return not getattr(args, "quiet", False)


def _check_positive(option: str, value, minimum=1) -> None:
    if value is None or value < minimum:
        raise LpdetError(f"{option} {value}: must be >= {minimum}")


# ----------------------------------------------------------------------------- commands
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
    if args.budget_ms is None or not args.budget_ms > 0:
        raise LpdetError(f"--budget-ms {args.budget_ms}: must be a latency in milliseconds > 0")
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
                    width=args.width, threads=args.threads, progress=_progress(args))
    s = result.summary
    print(f"final model: {result.final_model} ({s['description']}): AP {s['AP']:.4f}, "
          f"{s['latency_median_ms']:.2f} ms median (budget {s['budget_ms']:g} ms), {s['size_mb']:.2f} MB, "
          f"resolution {s['resolution']}, NMS IoU {s['nms_iou']:g}")
    print(f"report: {result.report_md} and {result.report_html} "
          f"({len(result.trials_run)} trials run, {len(result.trials_cached)} cached, {result.seconds:.0f} s)")


# ----------------------------------------------------------------------------- parser
def add_design_commands(commands, common: argparse.ArgumentParser) -> None:
    """Register ``sweep {resolution,nms,filter}`` and ``design`` on the main parser's subparsers."""

    def add_training(p, *, lr: float, warmup: int) -> None:
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr})")
        p.add_argument("--warmup-steps", type=int, default=warmup)
        p.add_argument("--workers", type=int, default=1, help="data-loading processes")
        p.add_argument("--max-val-images", type=int, default=0, help="per-epoch validation on at most N images")

    sweep = commands.add_parser("sweep", parents=[common], help="design sweeps: resolution, NMS, dataset filtering")
    sweeps = sweep.add_subparsers(dest="sweep_command", required=True, metavar="SUBCOMMAND")

    res = sweeps.add_parser("resolution", parents=[common],
                            help="AP and int8 latency per input resolution, with and without fine-tuning")
    res.add_argument("--init", type=Path, required=True, help="checkpoint (QAT or float) to start from")
    res.add_argument("--resolutions", default="300,280,270,250,240,236", help="comma-separated input sizes")
    res.add_argument("--data", default="synth")
    res.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs per resolution")
    res.add_argument("--out", type=Path, required=True)
    res.add_argument("--no-finetune", action="store_true", help="only load the checkpoint at each resolution")
    res.add_argument("--float", action="store_true", help="fine-tune in float (default: 8-bit QAT)")
    res.add_argument("--threads", type=int, default=1, help="inference threads for latency (default 1)")
    res.add_argument("--runs", type=int, default=30, help="benchmark runs per model")
    res.add_argument("--max-images", type=int, default=0, help="evaluate on at most N val images (0: all)")
    res.add_argument("--budget-ms", type=float, help="mark the resolutions whose int8 latency fits")
    add_training(res, lr=0.005, warmup=20)
    res.set_defaults(func=cmd_sweep_resolution)

    nms = sweeps.add_parser("nms", parents=[common], help="AP and end-to-end latency per NMS setting")
    nms.add_argument("model", type=Path, help="checkpoint, run directory or exported .onnx")
    nms.add_argument("--data", default="synth")
    nms.add_argument("--ious", default="0.30,0.25,0.20,0.15,0.10", help="comma-separated NMS IoU thresholds")
    nms.add_argument("--score-thresholds", help="comma-separated score thresholds (default 0.01)")
    nms.add_argument("--top-ks", help="comma-separated detections kept per image (default 100)")
    nms.add_argument("--out", type=Path, help="write nms_sweep.md/json (and cache the measurements) here")
    nms.add_argument("--threads", type=int, default=1)
    nms.add_argument("--runs", type=int, default=30, help="benchmark runs for the forward time")
    nms.add_argument("--max-images", type=int, default=0, help="evaluate on at most N val images (0: all)")
    nms.set_defaults(func=cmd_sweep_nms)

    filt = sweeps.add_parser("filter", parents=[common],
                             help="train with and without images holding small objects; AP by size over training")
    filt.add_argument("--data", default="synth")
    filt.add_argument("--out", type=Path, required=True)
    filt.add_argument("--epochs", type=int, required=True)
    filt.add_argument("--init", type=Path, help="checkpoint both runs start from (default: train from scratch)")
    filt.add_argument("--arch", default="mobilenet_v2_ssdlite", help="without --init")
    filt.add_argument("--width", type=float, help="default: the checkpoint's, else 1.0")
    filt.add_argument("--resolution", type=int, help="default: the checkpoint's, else 300")
    filt.add_argument("--qat", action="store_true", help="QAT training (default: as the --init checkpoint)")
    filt.add_argument("--drop-images-with", nargs="+", default=["small"], metavar="BUCKET")
    filt.add_argument("--small-max", type=float, default=32.0, help="small objects: area < this² (COCO: 32)")
    add_training(filt, lr=0.05, warmup=100)
    filt.set_defaults(func=cmd_sweep_filter)

    des = commands.add_parser("design", parents=[common],
                              help="the whole guided design flow under a latency budget, with a report")
    des.add_argument("--data", default="synth")
    des.add_argument("--budget-ms", type=float, required=True, help="int8 latency budget (median, batch 1, ms)")
    des.add_argument("--out", type=Path, required=True)
    des.add_argument("--budget-margin", type=float,
                     help="fraction of the budget kept in reserve: a model fits when it measures at most "
                          "budget x (1 - margin), so it still meets the budget when benchmarked again (default 0.1)")
    des.add_argument("--quick", action="store_true", help="a ~15 minute version of every step (2 CPU cores, synth)")
    des.add_argument("--threads", type=int, default=1, help="inference threads the budget is for (default 1)")
    des.add_argument("--arch", help="default mobilenet_v2_ssdlite")
    des.add_argument("--width", type=float, help="default 1.0 (--quick: 0.5)")
    des.add_argument("--resolutions", help="candidate resolutions (comma-separated), instead of the preset's")
    des.set_defaults(func=cmd_design)
