"""The `lpdet` command line.

Each subcommand parses its options, calls one library function, and prints the result.
User-fixable problems arrive as `LpdetError` and are printed as one line (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from lpdet import __version__
from lpdet.data.filtering import filter_dataset
from lpdet.data.sizes import SizeThresholds, dataset_stats, format_stats
from lpdet.data.spec import resolve_dataset
from lpdet.data.splits import eval_split, split_of
from lpdet.data.synth import generate_synthetic_coco
from lpdet.deploy.export import export_onnx
from lpdet.deploy.int8 import export_int8, quantize_float
from lpdet.deploy.latency import benchmark, format_latency, latency_to_dict
from lpdet.deploy.model import source_metadata
from lpdet.deploy.ptq import load_calibration_images
from lpdet.deploy.runtime import load_detector, load_model
from lpdet.deploy.tflite import export_tflite
from lpdet.design.cli import add_design_commands
from lpdet.design.quant_compare import compare_quantization, format_compare
from lpdet.errors import LpdetError
from lpdet.eval.coco_eval import evaluate, format_metrics
from lpdet.eval.predict import expand_image_paths, predict_images
from lpdet.models.config import ModelConfig, is_qat
from lpdet.models.profile import format_profile, profile_model, profile_to_dict
from lpdet.serialize import save_json, to_dict
from lpdet.train.config import TrainConfig
from lpdet.train.loop import train

log = logging.getLogger("lpdet")


# ----------------------------------------------------------------------------- data
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


# ----------------------------------------------------------------------------- model
def cmd_model_info(args) -> None:
    config = ModelConfig(arch=args.arch, num_classes=args.num_classes, width=args.width, resolution=args.resolution)
    profile = profile_model(config)
    print(json.dumps(profile_to_dict(profile), indent=2) if args.json else format_profile(profile))


# ----------------------------------------------------------------------------- train
def cmd_train(args) -> None:
    if args.resume:
        best = train(TrainConfig(out=args.resume), resume=True, progress=not args.quiet)
    else:
        config = TrainConfig(
            data=args.data, arch=args.arch, width=args.width, resolution=args.resolution, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
            warmup_steps=args.warmup_steps, restart_epochs=args.restart_epochs, seed=args.seed,
            workers=args.workers, out=args.out, init=args.init, backbone_weights=args.backbone_weights,
            checkpoint_every=args.checkpoint_every, augment=args.augment, max_val_images=args.max_val_images,
            threads=args.threads, device=args.device, precision=args.precision,
            qat=args.qat, qat_freeze_bn_after=args.freeze_bn_after,
            qat_freeze_observers_after=args.freeze_observers_after)
        best = train(config, progress=not args.quiet)
    print(f"best checkpoint: {best}")


# ----------------------------------------------------------------------------- eval / predict
def _postprocess_config(args, model):
    """`model`'s own post-processing settings (embedded by `lpdet design`, else the defaults) with
    each --nms-iou / --score-threshold / --top-k given on the command line replacing its value."""

    return replace(model.postprocess, **_postprocess_overrides(args))


def _postprocess_overrides(args) -> dict:
    """The --nms-iou / --score-threshold / --top-k values given (checked), as PostprocessConfig fields."""
    if args.nms_iou is not None and not 0 < args.nms_iou <= 1:
        raise LpdetError(f"--nms-iou {args.nms_iou}: must be in (0, 1]")
    if args.score_threshold is not None and not 0 <= args.score_threshold < 1:
        raise LpdetError(f"--score-threshold {args.score_threshold}: must be in [0, 1)")
    if args.top_k is not None and args.top_k < 1:
        raise LpdetError(f"--top-k {args.top_k}: must be >= 1")
    given = {"nms_iou": args.nms_iou, "score_threshold": args.score_threshold, "top_k": args.top_k}
    return {k: v for k, v in given.items() if v is not None}


def cmd_eval(args) -> None:
    model = load_model(args.model, threads=args.threads)
    spec, _ = split_of(args.data, args.split)
    dataset = eval_split(args.data, model.resolution, model.category_ids, split=args.split, where=str(model.path))
    config = _postprocess_config(args, model)
    result = evaluate(lambda images: model.predict(images, config), dataset, batch_size=args.batch_size,
                      workers=args.workers, progress=not args.quiet)
    default_dir = model.path.parent if model.path.is_file() or model.path.name in ("best", "last") else model.path
    results_path = args.results or default_dir / f"eval-{model.path.stem}-{spec.name}-{args.split}-results.json"
    save_json(result.results, results_path)
    if args.json:
        print(json.dumps({"model": str(model.path), "kind": model.kind, "data": args.data, "split": args.split,
                          "images": result.num_images, "skipped_images": result.skipped_images,
                          "nms_iou": config.nms_iou, "score_threshold": config.score_threshold,
                          "top_k": config.top_k, "results": str(results_path), **result.metrics}, indent=2))
    else:
        print(f"{model.path} ({model.kind}) on {spec.name}/{args.split}: {result.num_images} images"
              + (f" ({result.skipped_images} unreadable, skipped)" if result.skipped_images else ""))
        print(format_metrics(result.metrics))
        print(f"post-processing: score > {config.score_threshold:g}, NMS IoU {config.nms_iou:g}, top-k {config.top_k}")
        print(f"COCO results: {results_path}")


def cmd_predict(args) -> None:
    model = load_model(args.model)
    paths = expand_image_paths(args.images)
    config = _postprocess_config(args, model)
    summary = predict_images(lambda images: model.predict(images, config), model.resolution, model.class_names,
                             paths, args.out, score_threshold=args.show_threshold)
    for item in summary:
        print(f"{item['image']}: {len(item['detections'])} detections -> {item['output']}")


# ----------------------------------------------------------------------------- quantize / export / bench
def _output_path(path: Path, suffix: str) -> Path:
    if path.suffix.lower() != suffix:
        raise LpdetError(f"-o {path}: the output must end in {suffix}")
    if path.is_dir():
        raise LpdetError(f"-o {path}: is a directory; name a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def cmd_export(args) -> None:
    out = _output_path(args.output, ".tflite" if args.format.startswith("tflite") else ".onnx")
    detector, ckpt = load_detector(args.model, resolution=args.resolution)
    qat = is_qat(detector.config)
    resolution = detector.config.resolution
    metadata = source_metadata(ckpt)
    if args.format.startswith("tflite"):
        if qat:
            raise LpdetError(f"{ckpt.path} is a QAT checkpoint: TFLite export takes a float checkpoint "
                             f"(int8 by calibrated PTQ); use --format onnx-int8 for QAT")
        images = (load_calibration_images(args.data, resolution, args.calibration_images)
                  if args.format == "tflite-int8" else None)
        export_tflite(detector, out, calibration_images=images, metadata=metadata)
    elif args.format == "onnx":
        if qat:
            raise LpdetError(f"{ckpt.path} is a QAT checkpoint: export it with --format onnx-int8")
        export_onnx(detector, out, metadata=metadata)
    else:
        if not qat:
            log.warning("%s is a float checkpoint: onnx-int8 uses calibrated post-training quantization "
                        "(train with --qat for the accuracy of quantization-aware training)", ckpt.path)
        export_int8(detector, out, lambda: load_calibration_images(args.data, resolution, args.calibration_images),
                    metadata=metadata)
    print(f"wrote {out} ({args.format}{', QAT' if qat and args.format == 'onnx-int8' else ''}, "
          f"{out.stat().st_size / 1e6:.2f} MB, input 1x3x{resolution}x{resolution})")


def cmd_quantize(args) -> None:
    detector, ckpt = load_detector(args.model)
    if is_qat(detector.config):
        raise LpdetError(f"{ckpt.path} is already quantization-aware; export it with lpdet export --format onnx-int8")
    default = ckpt.path.parent / f"{ckpt.path.name}-{'naive' if args.naive else 'ptq'}-int8.onnx"
    out = _output_path(args.output or default, ".onnx")
    images = load_calibration_images(args.data, detector.config.resolution, args.calibration_images)
    quantize_float(detector, out, images, metadata=source_metadata(ckpt), naive=args.naive)
    print(f"wrote {out} ({'naive per-tensor' if args.naive else 'calibrated per-channel'} int8, "
          f"{len(images)} calibration images)")


def cmd_bench(args) -> None:
    if args.runs < 1 or args.threads < 0 or args.repeats < 1:
        raise LpdetError("--runs and --repeats must be >= 1 and --threads >= 0")
    result = benchmark(args.model, threads=args.threads, runs=args.runs, warmup=args.warmup, repeats=args.repeats,
                       postprocess_overrides=_postprocess_overrides(args))
    print(json.dumps(latency_to_dict(result), indent=2) if args.json else format_latency(result))


def cmd_compare_quant(args) -> None:
    out = args.out or Path(args.model) / "quant-compare"
    result = compare_quantization(args.model, args.data, out, qat_ckpt=args.qat,
                                  calibration_images=args.calibration_images, threads=args.threads,
                                  runs=args.runs, progress=not args.quiet)
    print(format_compare(result))
    print(f"wrote {out / 'quant_compare.md'} and {out / 'quant_compare.json'}")


# ----------------------------------------------------------------------------- parser
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def _add_postprocess_options(parser) -> None:
    # Unset: the model's own settings (a model picked by `lpdet design` carries its tuned NMS), else
    # the defaults (IoU 0.6, score 0.01, top-k 100).
    parser.add_argument("--nms-iou", type=float, help="IoU threshold of per-class NMS (default: the model's, else 0.6)")
    parser.add_argument("--score-threshold", type=float,
                        help="drop detections scoring at or below this (default: the model's, else 0.01)")
    parser.add_argument("--top-k", type=int, help="keep at most this many detections per image (default: the model's, else 100)")


def build_parser() -> argparse.ArgumentParser:
    # -q/-v work before or after the subcommand; SUPPRESS keeps a subcommand from resetting them.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    parser = argparse.ArgumentParser(prog="lpdet", description="Design low-power object detectors.")
    parser.add_argument("--version", action="version", version=f"lpdet {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", parents=[common], help="datasets").add_subparsers(dest="data_command", required=True,
                                                                       metavar="SUBCOMMAND")
    synth = data.add_parser("synth", parents=[common], help="write the embedded synthetic COCO-format dataset")
    synth.add_argument("out_dir", type=Path)
    synth.add_argument("--train", type=_positive_int, default=4000, help="training images (default 4000)")
    synth.add_argument("--val", type=_positive_int, default=500, help="validation images (default 500)")
    synth.add_argument("--seed", type=_positive_int, default=0)
    synth.set_defaults(func=cmd_data_synth)

    def add_size_options(p):
        p.add_argument("--small-max", type=float, default=32.0, help="small objects: area < this² (COCO: 32)")
        p.add_argument("--large-min", type=float, default=96.0, help="large objects: area >= this² (COCO: 96)")

    stats = data.add_parser("stats", parents=[common], help="objects and images per COCO size bucket and class")
    stats.add_argument("--data", default="synth")
    stats.add_argument("--split", choices=["train", "val"], default="train")
    stats.add_argument("--json", action="store_true")
    add_size_options(stats)
    stats.set_defaults(func=cmd_data_stats)

    filt = data.add_parser("filter", parents=[common], help="drop training images holding objects of a size bucket")
    filt.add_argument("--data", default="synth")
    filt.add_argument("--drop-images-with", nargs="+", default=["small"], metavar="BUCKET",
                      help="small, medium and/or large (default: small)")
    filt.add_argument("--split", choices=["train", "val"], default="train")
    filt.add_argument("--out", type=Path, required=True, help="folder for the filtered annotations and data.yaml")
    add_size_options(filt)
    filt.set_defaults(func=cmd_data_filter)

    model = commands.add_parser("model", parents=[common], help="model architectures").add_subparsers(
        dest="model_command", required=True, metavar="SUBCOMMAND")
    info = model.add_parser("info", parents=[common], help="parameters, multiply-adds, feature maps, multiple-of-8 geometry")
    info.add_argument("--arch", default="mobilenet_v2_ssdlite")
    info.add_argument("--width", type=float, default=1.0)
    info.add_argument("--resolution", type=int, default=320)
    info.add_argument("--num-classes", type=int, default=90, help="object classes (default 90, as COCO)")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_model_info)

    train = commands.add_parser("train", parents=[common], help="train a detector")
    train.add_argument("--data", default="synth", help="dataset YAML, or 'synth' for the embedded dataset")
    train.add_argument("--arch", default="mobilenet_v2_ssdlite")
    train.add_argument("--width", type=float, default=1.0)
    train.add_argument("--resolution", type=int, default=320)
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=0.05, help="peak learning rate")
    train.add_argument("--momentum", type=float, default=0.9)
    train.add_argument("--weight-decay", type=float, default=4e-5)
    train.add_argument("--warmup-steps", type=int, default=200)
    train.add_argument("--restart-epochs", type=int, default=0, help="cosine warm restarts every N epochs")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--workers", type=int, default=1, help="data-loading processes")
    train.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    train.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cuda when available)")
    train.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                       help="bf16: autocast mixed precision (about 2x faster on CPUs with AVX512-BF16/AMX); "
                            "auto: bf16 where the hardware supports it, else fp32; QAT always runs in fp32")
    train.add_argument("--out", type=Path, default=Path("runs/train"))
    train.add_argument("--init", type=Path, help="checkpoint to transfer weights from")
    train.add_argument("--backbone-weights", type=Path, help="ImageNet backbone state dict (torchvision layout)")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    train.add_argument("--checkpoint-every", type=int, default=200, help="steps between `last` checkpoints")
    train.add_argument("--augment", choices=["ssd", "light"], default="ssd",
                       help="ssd: zoom-out, IoU crop, flip, photometric; light: flip and photometric only")
    train.add_argument("--max-val-images", type=int, default=0, help="validate on at most N images (0: all)")
    train.add_argument("--qat", action="store_true", help="8-bit quantization-aware training (use with --init FLOAT_CKPT)")
    train.add_argument("--freeze-bn-after", type=int, default=0, help="QAT: freeze BN statistics after N steps")
    train.add_argument("--freeze-observers-after", type=int, default=0,
                       help="QAT: freeze activation ranges after N steps")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", parents=[common], help="COCO AP of a checkpoint on a dataset")
    evaluate.add_argument("model", type=Path, help="checkpoint, run directory or exported .onnx")
    evaluate.add_argument("--data", default="synth")
    evaluate.add_argument("--split", choices=["val", "train"], default="val")
    _add_postprocess_options(evaluate)
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--workers", type=int, default=1)
    evaluate.add_argument("--results", type=Path, help="where to write the COCO results JSON")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.add_argument("--threads", type=int, default=0, help="runtime threads (0: default)")
    evaluate.set_defaults(func=cmd_eval)

    predict = commands.add_parser("predict", parents=[common], help="draw detections on images")
    predict.add_argument("model", type=Path, help="checkpoint, run directory or exported .onnx")
    predict.add_argument("images", type=Path, nargs="+", help="image files or folders")
    predict.add_argument("--out", type=Path, required=True)
    predict.add_argument("--show-threshold", type=float, default=0.3, help="draw detections scoring at least this")
    _add_postprocess_options(predict)
    predict.set_defaults(func=cmd_predict)

    export = commands.add_parser("export", parents=[common], help="export a checkpoint for on-device runtimes")
    export.add_argument("model", type=Path, help="checkpoint or run directory")
    export.add_argument("--format", choices=["onnx", "onnx-int8", "tflite", "tflite-int8"], default="onnx-int8",
                        help="tflite formats need the extra: pip install \"lpdet[tflite]\"")
    export.add_argument("--resolution", type=int, help="export at another input resolution")
    export.add_argument("-o", "--output", type=Path, required=True)
    export.add_argument("--data", default="synth", help="calibration data for a float checkpoint exported as int8")
    export.add_argument("--calibration-images", type=int, default=100)
    export.set_defaults(func=cmd_export)

    quantize = commands.add_parser("quantize", parents=[common], help="post-training int8 quantization (calibrated or naive)")
    quantize.add_argument("model", type=Path, help="float checkpoint or run directory")
    quantize.add_argument("--data", default="synth", help="dataset for calibration images")
    quantize.add_argument("--calibration-images", type=int, default=100)
    quantize.add_argument("--naive", action="store_true", help="per-tensor weights, minimal calibration (baseline)")
    quantize.add_argument("-o", "--output", type=Path)
    quantize.set_defaults(func=cmd_quantize)

    bench = commands.add_parser("bench", parents=[common], help="per-image latency of a checkpoint or exported model")
    bench.add_argument("model", type=Path)
    bench.add_argument("--threads", type=int, default=1)
    bench.add_argument("--runs", type=int, default=50)
    bench.add_argument("--warmup", type=int, default=5)
    bench.add_argument("--repeats", type=int, default=3,
                       help="time the runs this many times and report the repeat with the lowest median "
                            "(as lpdet design does; others are inflated by load from other jobs)")
    bench.add_argument("--json", action="store_true")
    _add_postprocess_options(bench)
    bench.set_defaults(func=cmd_bench)

    compare = commands.add_parser("compare-quant", parents=[common], help="AP and latency: float, naive 8-bit, calibrated PTQ, QAT")
    compare.add_argument("model", type=Path, help="float checkpoint or run directory")
    compare.add_argument("--data", default="synth")
    compare.add_argument("--qat", type=Path, help="QAT checkpoint trained from MODEL (lpdet train --qat --init MODEL)")
    compare.add_argument("--calibration-images", type=int, default=100)
    compare.add_argument("--threads", type=int, default=1)
    compare.add_argument("--runs", type=int, default=30)
    compare.add_argument("--out", type=Path, help="output folder (default MODEL/quant-compare)")
    compare.set_defaults(func=cmd_compare_quant)


    add_design_commands(commands, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        args.func(args)
    except LpdetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command in ("design", "sweep"):
            hint = "run the same command again: finished trials are reused and an unfinished training resumes"
        elif args.command == "train":
            hint = f"continue with `lpdet train --resume {getattr(args, 'resume', None) or args.out}`"
        else:
            hint = ""
        print("interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
