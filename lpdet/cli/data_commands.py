"""What `lpdet data ...`, `lpdet model info`, `lpdet search-space` and `lpdet train` do once parsed (parsers: `lpdet.cli.parsers`)."""

from __future__ import annotations

import json
import random
from dataclasses import fields, replace

from lpdet.data.coco2017 import write_coco2017_yaml
from lpdet.data.convert import convert_dataset
from lpdet.data.filtering import filter_dataset
from lpdet.data.sizes import SizeThresholds, dataset_stats, format_stats
from lpdet.data.spec import resolve_dataset
from lpdet.data.splits import split_of
from lpdet.data.synth import generate_synthetic_coco
from lpdet.errors import LpdetError
from lpdet.models import arch_space
from lpdet.models.config import DEFAULT_ARCH, ModelConfig
from lpdet.models.profile import format_profile, profile_model, profile_to_dict
from lpdet.quant.qat import QatConfig
from lpdet.serialize import save_yaml, to_dict
from lpdet.train.config import TrainConfig
from lpdet.train import launch
from lpdet.train.distributed import Ranks
from lpdet.train.loop import train


def cmd_data_synth(args) -> None:
    yaml_path = generate_synthetic_coco(args.out_dir, args.train, args.val, seed=args.seed, progress=not args.quiet)
    print(f"wrote the synthetic dataset; use it with --data {yaml_path}")


def _thresholds(args):
    try:
        return SizeThresholds(small=args.small_max ** 2, large=args.large_min ** 2)
    except (ValueError, TypeError) as e:
        raise LpdetError(f"--small-max/--large-min: {e}") from None


def cmd_data_stats(args) -> None:
    _, split = split_of(args.data, args.split)
    stats = dataset_stats(split.annotations, _thresholds(args))
    print(json.dumps(to_dict(stats), indent=2) if args.json else format_stats(stats))


def cmd_data_filter(args) -> None:
    yaml_path = filter_dataset(resolve_dataset(args.data), args.out, drop_images_with=args.drop_images_with,
                               thresholds=_thresholds(args), split=args.split)
    report = json.loads((args.out / "filter_report.json").read_text())
    print(json.dumps(report, indent=2))
    print(f"filtered dataset: --data {yaml_path}")


def cmd_data_convert(args) -> None:
    yaml_path = convert_dataset(args.source_format, args.src, args.out, classes=args.classes,
                                copy_images=args.copy_images, val_fraction=args.val_fraction)
    print(f"converted {args.source_format} dataset {args.src}: use it with --data {yaml_path} "
          f"(counts and skips in {yaml_path.parent / 'convert_report.json'})")


def cmd_data_coco(args) -> None:
    print(f"COCO 2017 dataset YAML: --data {write_coco2017_yaml(args.root, args.out)}")


def model_config_from_args(args, num_classes: int) -> ModelConfig:
    """The model `--arch/--width/--resolution` name, or the candidate `--arch-config` names (it sets
    all three, so they may not be given with it)."""
    given = {name: getattr(args, name) for name in ("arch", "width", "resolution") if getattr(args, name) is not None}
    quant_friendly = bool(getattr(args, "quant_friendly", False))
    anchors = {"anchor_grid": getattr(args, "anchor_grid", None) or "map",
               "anchor_reference": getattr(args, "anchor_reference", None)}
    if args.arch_config is None:
        return ModelConfig(**{"arch": DEFAULT_ARCH, **given}, num_classes=num_classes, quant_friendly=quant_friendly,
                           **anchors)
    if given:
        raise LpdetError(f"--arch-config {args.arch_config} sets the arch, width and resolution: "
                         f"drop --{next(iter(given))} (or edit the file)")
    config = arch_space.to_model_config(arch_space.load_candidate(args.arch_config), num_classes)
    return replace(config, quant_friendly=quant_friendly, **anchors)


def cmd_model_info(args) -> None:
    config = model_config_from_args(args, args.num_classes)
    profile = profile_model(config)
    print(json.dumps(profile_to_dict(profile), indent=2) if args.json else format_profile(profile))


def train_config_from_args(args) -> TrainConfig:
    """The `TrainConfig` the `lpdet train` flags describe: flags named as its fields fill them; the
    model and QAT flags fill its nested configs."""
    return TrainConfig(
        model=model_config_from_args(args, num_classes=0),
        qat=QatConfig(freeze_bn_after=args.freeze_bn_after, freeze_observers_after=args.freeze_observers_after)
        if args.qat else None,
        **{f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name not in ("model", "qat")
           and hasattr(args, f.name)})


def launched_processes(args) -> bool:
    """`train`/`classify train --nproc N`: start N processes running this same command under torchrun
    (each comes back to its handler) and return True once they ended; under torchrun, check --nproc."""
    if args.nproc > 1 and not launch.started_by_torchrun():
        launch.launch(args.nproc, args.command_line, run_dir=args.resume or args.out)
        return True  # rank 0 printed the best checkpoint
    if launch.started_by_torchrun():
        launch.check_nproc(args.nproc)
    return False


def print_best(best) -> None:
    if Ranks.from_environment().is_main:  # one line per run, not per process
        print(f"best checkpoint: {best}")


def run_training(args, check_config=None) -> None:
    """`lpdet train` and `lpdet classify train`: launch torchrun's processes (--nproc), or train (or
    resume) here; print the best checkpoint once. `check_config` vets a new run's `TrainConfig`."""
    if launched_processes(args):
        return
    if args.resume:
        best = train(TrainConfig(out=args.resume), resume=True, progress=not args.quiet)
    else:
        cfg = train_config_from_args(args)
        if check_config is not None:
            check_config(cfg)
        best = train(cfg, progress=not args.quiet)
    print_best(best)


def cmd_train(args) -> None:
    run_training(args)


def cmd_search_space_sample(args) -> None:
    space = arch_space.SearchSpace(arch=args.arch)
    rng = random.Random(args.seed)
    named = {"smallest": arch_space.smallest_candidate(space), "largest": arch_space.largest_candidate(space)}
    named.update({f"cand_{i:03d}": arch_space.sample_candidate(space, rng) for i in range(args.n)})
    rejected = 0
    for name, candidate in named.items():
        try:
            arch_space.check_geometry(arch_space.to_model_config(candidate, arch_space.CHECK_NUM_CLASSES), name)
        except LpdetError as e:  # cannot happen with the default choices (all rounded to 8); counted if it does
            rejected += 1
            print(f"skipped {e}")
            continue
        save_yaml(candidate, args.out / f"{name}.yaml")
    print(f"{args.arch} search space: {arch_space.space_size(space):,} distinct networks; wrote {len(named) - rejected} "
          f"candidates to {args.out} ({rejected} rejected); train one with lpdet train --arch-config FILE")
