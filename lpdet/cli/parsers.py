"""The `lpdet` argument parser: one small function per subcommand, every option with its help.

Only light modules are imported here; each subcommand's handler (`lpdet.cli.data_commands`,
`lpdet.cli.model_commands`, `lpdet.design.commands`) is imported when it runs (`CommandRef`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lpdet import __version__
from lpdet.command_ref import CommandRef
from lpdet.design.cli import add_design_commands
from lpdet.design.search.cli import add_search_command

DATA_HELP = "dataset YAML, or 'synth' for the embedded dataset (default synth)"
ARCHITECTURE_NAMES = ["mobilenet_v1_ssd", "mobilenet_v1_ssdlite", "mobilenet_v2_ssd", "mobilenet_v2_ssdlite"]
ARCH_HELP = "mobilenet_v1_ssd, mobilenet_v1_ssdlite, mobilenet_v2_ssd or mobilenet_v2_ssdlite (default mobilenet_v2_ssdlite)"


def _data(name: str) -> CommandRef:
    return CommandRef("lpdet.cli.data_commands", name)


def _model(name: str) -> CommandRef:
    return CommandRef("lpdet.cli.model_commands", name)


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
    _add_data_commands(commands, common)
    _add_model_info(commands, common)
    _add_search_space(commands, common)
    _add_train(commands, common)
    _add_eval(commands, common)
    _add_predict(commands, common)
    _add_export(commands, common)
    _add_quantize(commands, common)
    _add_bench(commands, common)
    _add_compare_quant(commands, common)
    _add_classify(commands, common)
    add_design_commands(commands, common)
    add_search_command(commands, common)
    return parser


def _classify(name: str) -> CommandRef:
    return CommandRef("lpdet.cli.classify_commands", name)


CLASSIFIER_NAMES = ["mobilenet_v1_classifier", "mobilenet_v2_classifier", "plain_conv_classifier"]
CLASSIFY_DATA_HELP = "classification dataset YAML (task: classification), or 'synth-cls' (default)"


def _add_classify(commands, common) -> None:
    classify = commands.add_parser("classify", parents=[common], help="image classifiers on the detectors' backbones"
                                   ).add_subparsers(dest="classify_command", required=True, metavar="SUBCOMMAND")
    train = classify.add_parser("train", parents=[common], help="train a classifier (same loop, QAT, checkpoints)")
    add_train_arguments(train)
    train.set_defaults(arch="mobilenet_v2_classifier", data="synth-cls", resolution=96, augment="light",
                       func=_classify("cmd_classify_train"))
    evaluate = classify.add_parser("eval", parents=[common], help="top-1 / top-5 of a classifier")
    evaluate.add_argument("model", type=Path, help="checkpoint, run directory or exported .onnx")
    evaluate.add_argument("--data", default="synth-cls", help=CLASSIFY_DATA_HELP)
    evaluate.add_argument("--split", choices=["val", "train"], default="val", help="which split (default val)")
    evaluate.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    evaluate.add_argument("--max-images", type=int, default=0, help="evaluate the first N images only (0: all)")
    evaluate.add_argument("--threads", type=int, default=0, help="inference threads (0: default)")
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    evaluate.add_argument("--agree-with", type=Path, metavar="MODEL",
                          help="also the share of images on which MODEL (e.g. the QAT checkpoint of an int8 .onnx) "
                               "predicts the same top-1 class")
    evaluate.set_defaults(func=_classify("cmd_classify_eval"))
    export = classify.add_parser("export", parents=[common], help="export a classifier as ONNX (fp32 or int8)")
    export.add_argument("model", type=Path, help="checkpoint or run directory")
    export.add_argument("--format", choices=["onnx", "onnx-int8"], default="onnx-int8",
                        help="onnx-int8: a QAT checkpoint's own int8 graph, else calibrated PTQ")
    export.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")
    export.add_argument("--force", action="store_true", help="overwrite the -o file if it exists")
    export.add_argument("--data", default="synth-cls", help="calibration data for a float checkpoint exported as int8")
    export.add_argument("--calibration-images", type=int, default=100, help="images that calibrate PTQ (default 100)")
    export.set_defaults(func=_classify("cmd_classify_export"))
    bench = classify.add_parser("bench", parents=[common], help="per-image latency of classifiers, interleaved")
    add_bench_arguments(bench)
    bench.set_defaults(nms_iou=None, score_threshold=None, top_k=None, class_agnostic_nms=False, latency_cmd=None,
                       adb=False, latency_cache=None, fresh=False, func=_model("cmd_bench"))
    compare = classify.add_parser("compare-quant", parents=[common],
                                  help="Table 11.1: top-1, latency and weight-range spread as float, naive 8-bit, "
                                       "calibrated PTQ and QAT, for several classifiers side by side")
    compare.add_argument("models", type=Path, nargs="+", metavar="FLOAT_CKPT", help="float classifier checkpoints")
    compare.add_argument("--qat", type=Path, nargs="*", default=[], metavar="QAT_CKPT",
                         help="QAT checkpoints, one per float checkpoint in the same order (omit: QAT row not run)")
    compare.add_argument("--data", default="synth-cls", help=CLASSIFY_DATA_HELP)
    compare.add_argument("--calibration-images", type=int, default=100, help="PTQ calibration images (default 100)")
    compare.add_argument("--max-images", type=int, default=0, help="evaluate on the first N val images (0: all)")
    compare.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    compare.add_argument("--runs", type=int, default=30, help="paired timing runs (default 30)")
    compare.add_argument("--out", type=Path, required=True, help="output folder (Markdown, JSON, ONNX files)")
    compare.set_defaults(func=_classify("cmd_classify_compare_quant"))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def _add_size_options(p) -> None:
    p.add_argument("--small-max", type=float, default=32.0, help="small objects: area < this² (COCO: 32)")
    p.add_argument("--large-min", type=float, default=96.0, help="large objects: area >= this² (COCO: 96)")


def _add_postprocess_options(parser) -> None:
    # Unset: the model's own settings (a model picked by `lpdet design` carries its tuned NMS), else
    # the defaults (IoU 0.6, score 0.01, top-k 100).
    parser.add_argument("--nms-iou", type=float, help="IoU threshold of per-class NMS (default: the model's, else 0.6)")
    parser.add_argument("--score-threshold", type=float,
                        help="drop detections scoring at or below this (default: the model's, else 0.01)")
    parser.add_argument("--top-k", type=int, help="keep at most this many detections per image (default: the model's, else 100)")
    parser.add_argument("--class-agnostic-nms", action="store_true",
                        help="NMS across classes on each anchor's best class (TF Lite's fast NMS) instead of per class")


def _add_data_commands(commands, common) -> None:
    data = commands.add_parser("data", parents=[common], help="datasets").add_subparsers(
        dest="data_command", required=True, metavar="SUBCOMMAND")
    synth = data.add_parser("synth", parents=[common], help="write the embedded synthetic COCO-format dataset")
    synth.add_argument("out_dir", type=Path, help="folder to write the dataset into (annotations, images, data.yaml)")
    synth.add_argument("--train", type=_positive_int, default=4000, help="training images (default 4000)")
    synth.add_argument("--val", type=_positive_int, default=500, help="validation images (default 500)")
    synth.add_argument("--seed", type=_positive_int, default=0, help="random seed of the generator (default 0)")
    synth.set_defaults(func=_data("cmd_data_synth"))

    stats = data.add_parser("stats", parents=[common], help="objects and images per COCO size bucket and class")
    stats.add_argument("--data", default="synth", help=DATA_HELP)
    stats.add_argument("--split", choices=["train", "val"], default="train", help="which split (default train)")
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    _add_size_options(stats)
    stats.set_defaults(func=_data("cmd_data_stats"))

    filt = data.add_parser("filter", parents=[common], help="drop training images holding objects of a size bucket")
    filt.add_argument("--data", default="synth", help=DATA_HELP)
    filt.add_argument("--drop-images-with", nargs="+", default=["small"], metavar="BUCKET",
                      help="small, medium and/or large (default: small)")
    filt.add_argument("--split", choices=["train", "val"], default="train", help="which split to filter (default train)")
    filt.add_argument("--out", type=Path, required=True, help="folder for the filtered annotations and data.yaml")
    _add_size_options(filt)
    filt.set_defaults(func=_data("cmd_data_filter"))
    _add_data_convert(data, common)


def _add_data_convert(data, common) -> None:
    conv = data.add_parser("convert", parents=[common], help="Pascal VOC or YOLO dataset -> COCO JSON + dataset YAML",
                           description="Layouts: VOC: Annotations/ + JPEGImages/ (+ ImageSets/Main/{train,val}.txt); "
                                       "YOLO: images/{train,val} + labels/{train,val}, or {train,valid}/{images,labels}, "
                                       "with a data.yaml (names:) or classes.txt/obj.names. See lpdet/data/convert/.")
    conv.add_argument("--from", dest="source_format", choices=["voc", "yolo"], required=True,
                      help="the source's annotation format")
    conv.add_argument("src", type=Path, help="the dataset's root folder (only read)")
    conv.add_argument("--out", type=Path, required=True, help="a new or empty folder for the COCO files and data.yaml")
    conv.add_argument("--classes", type=Path, help="class names, one per line, in label order")
    conv.add_argument("--copy-images", action="store_true", help="copy the images into OUT (default: reference them)")
    conv.add_argument("--val-fraction", type=float, help="hold out this share as val when the source has no split")
    conv.set_defaults(func=_data("cmd_data_convert"))

    coco = data.add_parser("coco", parents=[common], help="dataset YAML for the COCO 2017 layout")
    coco.add_argument("--root", type=Path, required=True, help="holds annotations/, train2017/, val2017/")
    coco.add_argument("--out", type=Path, required=True, help="the YAML file to write")
    coco.set_defaults(func=_data("cmd_data_coco"))


def _add_model_info(commands, common) -> None:
    model = commands.add_parser("model", parents=[common], help="model architectures").add_subparsers(
        dest="model_command", required=True, metavar="SUBCOMMAND")
    info = model.add_parser("info", parents=[common], help="parameters, multiply-adds, feature maps, multiple-of-8 geometry")
    _add_architecture_options(info)
    info.add_argument("--num-classes", type=int, default=90, help="object classes (default 90, as COCO)")
    info.add_argument("--json", action="store_true", help="print the profile as JSON")
    info.set_defaults(func=_data("cmd_model_info"))


def _add_architecture_options(parser) -> None:
    # Defaults unset: `--arch-config` excludes the three (ModelConfig's defaults fill them otherwise).
    parser.add_argument("--arch", help=ARCH_HELP)
    parser.add_argument("--width", type=float, help="width (depth) multiplier (default 1.0)")
    parser.add_argument("--resolution", type=int, help="square input size in pixels (default 320)")
    parser.add_argument("--arch-config", type=Path, metavar="CAND.yaml",
                        help="an architecture-search candidate (arch, resolution, per-stage detail; "
                             "see README \"Search space\"), instead of --arch/--width/--resolution")
    parser.add_argument("--quant-friendly", action="store_true",
                        help="quantization-friendly separable convs in the MobileNet backbone (Sheng et al. 2018): "
                             "no BN/ReLU6 after depthwise convs, ReLU instead of ReLU6")
    parser.add_argument("--anchor-grid", choices=("map", "stride"),
                        help="detectors: anchor centres spread over each map (\"map\", TF style, the default) or on "
                             "the convolutions' stride grid (\"stride\": box offsets that hold at every input size)")
    parser.add_argument("--anchor-reference", type=int, metavar="SIZE",
                        help="detectors: the input size the anchor scales are fractions of (default: --resolution); "
                             "at other sizes the anchors keep their pixel sizes")


def _add_search_space(commands, common) -> None:
    space = commands.add_parser("search-space", parents=[common], help="the architecture search space").add_subparsers(
        dest="space_command", required=True, metavar="SUBCOMMAND")
    sample = space.add_parser("sample", parents=[common],
                              help="write random candidates, the smallest and the largest as YAML files")
    sample.add_argument("--n", type=_positive_int, default=10, help="random candidates (default 10)")
    sample.add_argument("--seed", type=_positive_int, default=0, help="random seed (default 0)")
    sample.add_argument("--arch", default="mobilenet_v2_ssdlite", choices=ARCHITECTURE_NAMES,
                        help="mobilenet_v2_ssdlite (full space) or any other architecture (its widths and resolution)")
    sample.add_argument("--out", type=Path, required=True, help="folder for cand_NNN.yaml, smallest.yaml, largest.yaml")
    sample.set_defaults(func=_data("cmd_search_space_sample"))


def _add_train(commands, common) -> None:
    train = commands.add_parser("train", parents=[common], help="train a detector")
    add_train_arguments(train)
    train.set_defaults(func=_data("cmd_train"))


def add_train_arguments(train) -> None:
    """The options of `lpdet train` (also `lpdet classify train`, which changes some defaults)."""
    train.add_argument("--data", default="synth", help="dataset YAML, or 'synth' for the embedded dataset")
    _add_architecture_options(train)
    train.add_argument("--epochs", type=int, default=10, help="passes over the training split (default 10)")
    train.add_argument("--batch-size", type=int, default=32,
                       help="images per step (default 32); with several processes the global batch, split evenly")
    train.add_argument("--lr", type=float, default=0.05, help="peak learning rate (default 0.05)")
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    train.add_argument("--weight-decay", type=float, default=4e-5,
                       help="L2 weight decay, not on BatchNorm parameters and biases (default 4e-5)")
    train.add_argument("--depthwise-weight-decay", type=float,
                       help="L2 weight decay of the depthwise conv weights (default: --weight-decay)")
    train.add_argument("--warmup-steps", type=int, default=200,
                       help="linear learning-rate warm-up steps, at most a fifth of the run (default 200)")
    train.add_argument("--restart-epochs", type=int, default=0, help="cosine warm restarts every N epochs")
    train.add_argument("--seed", type=int, default=0, help="seed of every random choice: same seed, same run (default 0)")
    train.add_argument("--workers", type=int, default=1, help="data-loading processes")
    train.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    train.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cuda when available)")
    train.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                       help="bf16: autocast mixed precision (about 2x faster on CPUs with AVX512-BF16/AMX); "
                            "auto: bf16 where the hardware supports it, else fp32; QAT always runs in fp32")
    train.add_argument("--out", type=Path, default=Path("runs/train"),
                       help="run directory: config, logs, checkpoints (default runs/train)")
    train.add_argument("--init", type=Path, help="checkpoint to transfer weights from")
    train.add_argument("--backbone-weights", type=Path,
                       help="backbone weights: an ImageNet state dict (torchvision layout) or an lpdet classifier checkpoint")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    train.add_argument("--checkpoint-every", type=int, default=200, help="steps between `last` checkpoints")
    train.add_argument("--augment", choices=["ssd", "light"], default="ssd",
                       help="ssd: zoom-out, IoU crop, flip, photometric; light: flip and photometric only")
    train.add_argument("--max-val-images", type=int, default=0, help="validate on at most N images (0: all)")
    train.add_argument("--limit-train-batches", type=int, default=0,
                       help="at most N batches per epoch, drawn from a fresh shuffle each epoch (0: all)")
    train.add_argument("--multi-scale", type=int, nargs=2, metavar=("MIN", "MAX"),
                       help="detectors: each step at a multiple of 8 drawn from [MIN, MAX] (the batch is resized), "
                            "so the model works across input sizes; validation stays at --resolution")
    train.add_argument("--qat", action="store_true", help="8-bit quantization-aware training (use with --init FLOAT_CKPT)")
    train.add_argument("--freeze-bn-after", type=int, default=0, help="QAT: freeze BN statistics after N steps")
    train.add_argument("--freeze-observers-after", type=int, default=0,
                       help="QAT: freeze activation ranges after N steps")
    train.add_argument("--nproc", type=_positive_int, default=0,
                       help="data-parallel training in N processes on this machine (torchrun; one per GPU)")
    train.add_argument("--sync-bn", action="store_true", help="several processes: BatchNorm over the global batch (CUDA)")
    train.add_argument("--dist-timeout", dest="dist_timeout_s", type=int, default=1800,
                       help="several processes: seconds a process waits for the others before failing (default 1800)")


def _add_eval(commands, common) -> None:
    evaluate = commands.add_parser("eval", parents=[common], help="COCO AP of a checkpoint on a dataset")
    evaluate.add_argument("model", type=Path, help="checkpoint, run directory or exported .onnx")
    evaluate.add_argument("--data", default="synth", help=DATA_HELP)
    evaluate.add_argument("--split", choices=["val", "train"], default="val", help="which split (default val)")
    _add_postprocess_options(evaluate)
    evaluate.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    evaluate.add_argument("--workers", type=int, default=1, help="data-loading processes")
    evaluate.add_argument("--results", type=Path, help="where to write the COCO results JSON")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.add_argument("--threads", type=int, default=0, help="runtime threads (0: default)")
    evaluate.set_defaults(func=_model("cmd_eval"))


def _add_predict(commands, common) -> None:
    predict = commands.add_parser("predict", parents=[common], help="draw detections on images")
    predict.add_argument("model", type=Path, help="checkpoint, run directory or exported .onnx")
    predict.add_argument("images", type=Path, nargs="+", help="image files or folders")
    predict.add_argument("--out", type=Path, required=True, help="folder for the drawn images")
    predict.add_argument("--show-threshold", type=float, default=0.3, help="draw detections scoring at least this")
    _add_postprocess_options(predict)
    predict.set_defaults(func=_model("cmd_predict"))


def _add_export(commands, common) -> None:
    export = commands.add_parser("export", parents=[common], help="export a checkpoint for on-device runtimes")
    export.add_argument("model", type=Path, help="checkpoint or run directory")
    export.add_argument("--format", choices=["onnx", "onnx-int8", "tflite", "tflite-int8"], default="onnx-int8",
                        help="tflite formats need the extra: pip install \"lpdet[tflite]\"")
    export.add_argument("--resolution", type=int, help="export at another input resolution")
    export.add_argument("-o", "--output", type=Path, required=True, help="the file to write (.onnx or .tflite)")
    export.add_argument("--force", action="store_true", help="overwrite the -o file if it exists")
    export.add_argument("--data", default="synth", help="calibration data for a float checkpoint exported as int8")
    export.add_argument("--calibration-images", type=int, default=100,
                        help="images that calibrate post-training int8 (default 100)")
    export.add_argument("--nms-in-graph", action="store_true", help="end the ONNX graph in NMS: it returns final "
                        "detection_boxes/scores/classes and num_detections (settings: the options below)")
    _add_postprocess_options(export)
    export.set_defaults(func=_model("cmd_export"))


def _add_quantize(commands, common) -> None:
    quantize = commands.add_parser("quantize", parents=[common], help="post-training int8 quantization (calibrated or naive)")
    quantize.add_argument("model", type=Path, help="float checkpoint or run directory")
    quantize.add_argument("--data", default="synth", help="dataset for calibration images")
    quantize.add_argument("--calibration-images", type=int, default=100, help="calibration images (default 100)")
    quantize.add_argument("--naive", action="store_true", help="per-tensor weights, minimal calibration (baseline)")
    quantize.add_argument("-o", "--output", type=Path,
                          help="the .onnx to write (default: next to the checkpoint, CKPT-ptq-int8.onnx)")
    quantize.set_defaults(func=_model("cmd_quantize"))


def _add_bench(commands, common) -> None:
    bench = commands.add_parser("bench", parents=[common],
                                help="per-image latency of one model, or of several compared interleaved")
    add_bench_arguments(bench)
    _add_postprocess_options(bench)
    _add_device_options(bench)
    bench.set_defaults(func=_model("cmd_bench"))


def add_bench_arguments(bench) -> None:
    """The local-timing options of `lpdet bench` (also `lpdet classify bench`)."""
    bench.add_argument("models", type=Path, nargs="+", metavar="MODEL",
                       help="checkpoints, run directories or exported models; ratios are to the first")
    bench.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    bench.add_argument("--data", help="time on the first val images of this dataset (YAML or 'synth')")
    bench.add_argument("--images", type=Path, nargs="+", help="time on these image files or folders")
    bench.add_argument("--num-images", type=int, default=16, help="real images cycled through (default 16)")
    bench.add_argument("--target", type=float, default=0.03,
                       help="run rounds until every median's 95%% interval is within ± this (default 0.03)")
    bench.add_argument("--time-cap", type=float, default=60.0, help="stop after this many seconds anyway (default 60)")
    bench.add_argument("--runs", type=int, help="exactly this many rounds instead (no stopping rule)")
    bench.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    bench.add_argument("--cpus", help="pin the process to these CPUs while timing, e.g. 0,1 (Linux)")
    bench.add_argument("--json", action="store_true", help="print the timings as JSON")


def _add_device_options(bench) -> None:
    device = bench.add_argument_group("latency on another device (instead of this machine's onnxruntime)")
    device.add_argument("--latency-cmd", metavar="CMD",
                        help="a command that times {model} (the exported file's path) and prints milliseconds, "
                             "e.g. \"ssh pi@board ./bench {model}\"")
    device.add_argument("--adb", action="store_true", help="LiteRT benchmark_model on an Android phone over adb (.tflite)")
    device.add_argument("--adb-serial", help="the phone's adb serial (default: the only one connected)")
    device.add_argument("--adb-binary", default="/data/local/tmp/benchmark_model", help="benchmark_model on the phone")
    device.add_argument("--device-id", help="name the device in the cache (default: the command / the phone)")
    device.add_argument("--device-timeout", type=float, default=600.0, help="seconds one device measurement may take")
    device.add_argument("--latency-cache", type=Path, help="cache file (default ~/.cache/lpdet/device_latency.json)")
    device.add_argument("--fresh", action="store_true", help="measure again even if the cache has the model")


def _add_compare_quant(commands, common) -> None:
    compare = commands.add_parser("compare-quant", parents=[common], help="AP and latency: float, naive 8-bit, calibrated PTQ, QAT")
    compare.add_argument("model", type=Path, help="float checkpoint or run directory")
    compare.add_argument("--data", default="synth", help=DATA_HELP)
    compare.add_argument("--qat", type=Path, help="QAT checkpoint trained from MODEL (lpdet train --qat --init MODEL)")
    compare.add_argument("--calibration-images", type=int, default=100, help="calibration images (default 100)")
    compare.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    compare.add_argument("--runs", type=int, default=30, help="paired benchmark runs (default 30)")
    compare.add_argument("--max-images", type=int, default=0, help="evaluate on the first N val images (0: all)")
    compare.add_argument("--out", type=Path, help="output folder (default MODEL/quant-compare)")
    compare.set_defaults(func=_model("cmd_compare_quant"))
    table = commands.add_parser("table-11-1", parents=[common],
                                help="Table 11.1: detector and classifier comparisons as one table (Markdown + JSON)")
    table.add_argument("results", type=Path, nargs="+", metavar="RESULT",
                       help="quant_compare.json / classify_compare.json files, or the --out folders that hold them")
    table.add_argument("--out", type=Path, required=True, help="folder for table_11_1.md and table_11_1.json")
    table.set_defaults(func=_model("cmd_table_11_1"))
