"""The `lpdet search` parser (light: its handler, `lpdet.design.search.command`, loads when it runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lpdet.command_ref import CommandRef

__all__ = ["add_search_command"]


def add_search_command(commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser("search", parents=[common],
                            help="latency-aware architecture search (weight sharing, Optuna, measured int8 latency)")
    p.add_argument("--data", default="synth", help="dataset YAML, or 'synth' for the embedded dataset")
    p.add_argument("--budget-ms", type=float, required=True,
                   help="int8 latency budget (median, batch 1, end to end, ms) on this machine")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder (study.db, supernet, candidates, Pareto front, chosen model)")
    p.add_argument("--quick", action="store_true", help="a ~30 minute search (2 CPU cores, --data synth)")
    p.add_argument("--storage", help="Optuna database URL to share one study between workers "
                                     "(default: sqlite in --out), e.g. postgresql://user@host/db")
    p.add_argument("--study", default="lpdet-search", help="study name in the storage (default lpdet-search)")
    p.add_argument("--trials", type=int, help="finished trials the study stops at, all workers together "
                                              "(default 100; --quick: 40)")
    p.add_argument("--time-budget-min", type=float, help="this worker starts no trial after M minutes (default: none)")
    p.add_argument("--supernet", type=Path, help="a trained super-network checkpoint (default: train one in --out); "
                                                 "every worker of a shared study passes the same")
    p.add_argument("--supernet-init", type=Path, metavar="CKPT",
                   help="start the supernet from this trained float detector (the standard network at the search's "
                        "width; default with --data synth: the shipped base when its width is the search's)")
    p.add_argument("--supernet-from-scratch", action="store_true",
                   help="train the supernet from random weights even with --data synth")
    p.add_argument("--arch", choices=["mobilenet_v2_ssdlite", "mobilenet_v1_ssd"],
                   help="the space searched (default mobilenet_v2_ssdlite; mobilenet_v1_ssd: stage widths, extra "
                        "widths and resolution)")
    p.add_argument("--threads", type=int, help="inference threads the budget is for (default 1)")
    p.add_argument("--budget-margin", type=float,
                   help="fraction of the budget kept in reserve: a candidate fits at budget x (1 - margin) (default 0.1)")
    p.add_argument("--select-fraction", type=float,
                   help="share of train held out as the selection split candidates are scored on (default 0.1)")
    p.add_argument("--settings", type=Path, metavar="SETTINGS.yaml",
                   help="every search knob as YAML (a settings.yaml a search wrote), instead of the preset")
    p.set_defaults(func=CommandRef("lpdet.design.search.command", "cmd_search"))
