"""What `lpdet search` does once parsed: build the settings, run the search, print where things are."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lpdet.design.search.driver import SearchOptions, SearchResult, run_search
from lpdet.design.search.finalists_report import comparison_text
from lpdet.design.search.settings import SearchSettings
from lpdet.errors import LpdetError
from lpdet.models.shipped import shipped_base_for, synth_base_checkpoint
from lpdet.serialize import load_mapping

__all__ = ["cmd_search", "settings_from_args"]


def settings_from_args(args) -> SearchSettings:
    """The preset (or --settings YAML), then the options given on the command line."""
    if args.settings is not None:
        if not Path(args.settings).is_file():
            raise LpdetError(f"--settings {args.settings}: no such file; give a settings.yaml a search wrote")
        settings = SearchSettings.from_dict(load_mapping(args.settings))
    else:
        settings = SearchSettings.quick() if args.quick else SearchSettings.full()
    overrides = {"trials": args.trials, "time_budget_min": args.time_budget_min,
                 "budget_margin": args.budget_margin, "select_fraction": args.select_fraction}
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    if args.arch is not None:
        settings.space = replace(settings.space, arch=args.arch)
    if args.threads is not None:
        settings.bench = replace(settings.bench, threads=args.threads)
    settings.supernet = replace(settings.supernet, init=_supernet_init(args, settings))
    settings.validate()
    return settings


def _supernet_init(args, settings: SearchSettings) -> str:
    """What the supernet starts from: --supernet-init, else for --data synth the shipped base when
    it is the standard network the space's largest candidate grows from, else the settings' own."""
    given = getattr(args, "supernet_init", None)
    if given is not None and getattr(args, "supernet_from_scratch", False):
        raise LpdetError("--supernet-init and --supernet-from-scratch: give one of them")
    if given is not None:
        if not Path(given).exists():
            raise LpdetError(f"--supernet-init {given}: no such checkpoint; give a float detector's checkpoint "
                             f"folder (RUN/best), or leave the option out")
        return str(given)
    if getattr(args, "supernet_from_scratch", False):
        return ""
    if args.data == "synth" and not settings.supernet.init:
        if shipped_base_for(settings.space.arch, settings.width) is not None:
            return str(synth_base_checkpoint())
    return settings.supernet.init


def cmd_search(args) -> None:
    settings = settings_from_args(args)
    if args.supernet is not None and not Path(args.supernet).exists():
        raise LpdetError(f"--supernet {args.supernet}: no such checkpoint; give a checkpoint folder a search "
                         f"trained (OUT/trials/supernet/supernet) or leave --supernet out to train one")
    opts = SearchOptions(data=args.data, budget_ms=args.budget_ms, out=args.out, storage=args.storage,
                         study=args.study, supernet=args.supernet, progress=not getattr(args, "quiet", False))
    _print(run_search(settings, opts), opts)


def _print(result: SearchResult, opts: SearchOptions) -> None:
    fitting = sum(r.fits for r in result.rows)
    print(f"{len(result.rows)} candidates scored ({result.ran_here} here), {fitting} fit the "
          f"{opts.budget_ms:g} ms budget (less its margin)")
    if result.chosen is None:
        print("no candidate fits: raise --budget-ms, or search a space of smaller networks")
    else:
        c = result.chosen
        print(f"chosen: trial {c.trial}, AP {c.select_ap:.4f} on the selection split, {c.latency_ms:.2f} ms int8 "
              f"(measured) -> {result.chosen_onnx}")
    if result.finalists is not None:
        print(comparison_text(result.finalists))
    for key, path in result.files.items():
        print(f"{key}: {path}")
