"""`lpdet sweep resolution|nms|filter` and `lpdet design`: the design commands of the CLI.

`add_design_commands(commands, common)` registers their parsers on the main parser's subparsers;
the handlers (`lpdet.design.commands`) are imported when a command runs. List options
(``--resolutions 300,280``) are parsed by `parse_int_list` / `parse_float_list`, so a bad value
is a one-line `LpdetError`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lpdet.command_ref import CommandRef
from lpdet.errors import LpdetError

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


# ----------------------------------------------------------------------------- parser
def _handler(name: str) -> CommandRef:
    return CommandRef("lpdet.design.commands", name)


def add_design_commands(commands, common: argparse.ArgumentParser) -> None:
    """Register ``sweep {resolution,nms,filter}`` and ``design`` on the main parser's subparsers."""
    sweep = commands.add_parser("sweep", parents=[common], help="design sweeps: resolution, NMS, dataset filtering")
    sweeps = sweep.add_subparsers(dest="sweep_command", required=True, metavar="SUBCOMMAND")
    _add_resolution_sweep(sweeps, common)
    _add_nms_sweep(sweeps, common)
    _add_filter_sweep(sweeps, common)
    _add_design(commands, common)


def _add_training(p, *, lr: float, warmup: int) -> None:
    p.add_argument("--batch-size", type=int, default=32, help="images per training step (default 32)")
    p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr})")
    p.add_argument("--warmup-steps", type=int, default=warmup, help=f"learning-rate warm-up steps (default {warmup})")
    p.add_argument("--workers", type=int, default=1, help="data-loading processes")
    p.add_argument("--max-val-images", type=int, default=0, help="per-epoch validation on at most N images")


def _add_resolution_sweep(sweeps, common) -> None:
    res = sweeps.add_parser("resolution", parents=[common],
                            help="AP and int8 latency per input resolution, with and without fine-tuning")
    res.add_argument("--init", type=Path, required=True, help="checkpoint (QAT or float) to start from")
    res.add_argument("--resolutions", default="300,280,270,250,240,236", help="comma-separated input sizes")
    res.add_argument("--data", default="synth", help="dataset YAML, or 'synth' for the embedded dataset")
    res.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs per resolution")
    res.add_argument("--out", type=Path, required=True, help="output folder (tables, plot, cached trials)")
    res.add_argument("--no-finetune", action="store_true", help="only load the checkpoint at each resolution")
    res.add_argument("--float", action="store_true", help="fine-tune in float (default: 8-bit QAT)")
    res.add_argument("--threads", type=int, default=1, help="inference threads for latency (default 1)")
    res.add_argument("--runs", type=int, default=30, help="benchmark runs per model")
    res.add_argument("--max-images", type=int, default=0, help="evaluate on at most N val images (0: all)")
    res.add_argument("--budget-ms", type=float, help="mark the resolutions whose int8 latency fits")
    _add_training(res, lr=0.005, warmup=20)
    res.set_defaults(func=_handler("cmd_sweep_resolution"))


def _add_nms_sweep(sweeps, common) -> None:
    nms = sweeps.add_parser("nms", parents=[common], help="AP and end-to-end latency per NMS setting")
    nms.add_argument("model", type=Path, help="checkpoint, run directory or exported .onnx")
    nms.add_argument("--data", default="synth", help="dataset YAML, or 'synth' for the embedded dataset")
    nms.add_argument("--ious", default="0.30,0.25,0.20,0.15,0.10", help="comma-separated NMS IoU thresholds")
    nms.add_argument("--score-thresholds", help="comma-separated score thresholds (default 0.01)")
    nms.add_argument("--top-ks", help="comma-separated detections kept per image (default 100)")
    nms.add_argument("--out", type=Path, help="write nms_sweep.md/json (and cache the measurements) here")
    nms.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    nms.add_argument("--runs", type=int, default=30, help="benchmark runs for the forward time")
    nms.add_argument("--max-images", type=int, default=0, help="evaluate on at most N val images (0: all)")
    nms.set_defaults(func=_handler("cmd_sweep_nms"))


def _add_filter_sweep(sweeps, common) -> None:
    filt = sweeps.add_parser("filter", parents=[common],
                             help="train with and without images holding small objects; AP by size over training")
    filt.add_argument("--data", default="synth", help="dataset YAML, or 'synth' for the embedded dataset")
    filt.add_argument("--out", type=Path, required=True, help="output folder (filtered data, runs, tables, plots)")
    filt.add_argument("--epochs", type=int, required=True, help="training epochs of each run")
    filt.add_argument("--init", type=Path, help="checkpoint both runs start from (default: train from scratch)")
    filt.add_argument("--arch", default="mobilenet_v2_ssdlite", help="architecture, without --init")
    filt.add_argument("--width", type=float, help="width multiplier (default: the checkpoint's, else 1.0)")
    filt.add_argument("--resolution", type=int, help="input size (default: the checkpoint's, else 300)")
    filt.add_argument("--qat", action="store_true", help="QAT training (default: as the --init checkpoint)")
    filt.add_argument("--drop-images-with", nargs="+", default=["small"], metavar="BUCKET",
                      help="drop the training images holding objects of these size buckets (default: small)")
    filt.add_argument("--small-max", type=float, default=32.0, help="small objects: area < this² (COCO: 32)")
    _add_training(filt, lr=0.05, warmup=100)
    filt.set_defaults(func=_handler("cmd_sweep_filter"))


def _add_design(commands, common) -> None:
    des = commands.add_parser("design", parents=[common],
                              help="the whole guided design flow under a latency budget, with a report")
    des.add_argument("--data", default="synth", help="dataset YAML, or 'synth' for the embedded dataset")
    des.add_argument("--budget-ms", type=float, help="int8 latency budget (median, batch 1, ms): a real deadline")
    des.add_argument("--budget-ratio", type=float,
                     help="budget = R x the int8 latency of the base model at its base resolution, measured on this "
                          "machine with the candidates (e.g. 0.64); give this or --budget-ms")
    des.add_argument("--select-fraction", type=float,
                     help="share of train held out as the selection split every choice is made on, when the dataset "
                          "YAML has no select: split (default 0.1)")
    des.add_argument("--out", type=Path, required=True, help="output folder (report, final model, cached trials)")
    des.add_argument("--budget-margin", type=float,
                     help="fraction of the budget kept in reserve: a model fits when it measures at most "
                          "budget x (1 - margin), so it still meets the budget when benchmarked again (default 0.1)")
    des.add_argument("--quick", action="store_true", help="a ~15 minute version of every step (2 CPU cores, synth)")
    des.add_argument("--threads", type=int, default=1, help="inference threads the budget is for (default 1)")
    des.add_argument("--arch", help="architecture (default mobilenet_v2_ssdlite)")
    des.add_argument("--width", type=float, help="width multiplier (default 1.0; --quick: 0.5)")
    des.add_argument("--resolutions", help="candidate resolutions (comma-separated), instead of the preset's")
    des.add_argument("--search", type=Path, metavar="SEARCH_DIR",
                     help="a finished `lpdet search --out SEARCH_DIR`: its chosen architecture is fine-tuned like the "
                          "resolution-only model and compared with it (report section 'Architecture search')")
    start = des.add_mutually_exclusive_group()
    start.add_argument("--base", type=Path, metavar="CKPT",
                       help="start from this float detector (its architecture, width and resolution) instead of "
                            "training one; default for --data synth: the detector shipped with lpdet")
    start.add_argument("--from-scratch", action="store_true",
                       help="train the float base model here (with --data synth: instead of the shipped one)")
    start.add_argument("--backbone-weights", type=Path, metavar="FILE",
                       help="train the float base model from these ImageNet backbone weights (torchvision's "
                            "MobileNet state dict)")
    des.set_defaults(func=_handler("cmd_design"))
