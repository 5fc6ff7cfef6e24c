"""What `lpdet eval / predict / export / quantize / bench / compare-quant` do once parsed
(parsers: `lpdet.cli.parsers`)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from lpdet.data.splits import eval_split, split_of
from lpdet.deploy.export import export_onnx
from lpdet.deploy.int8 import export_int8, quantize_float
from lpdet.deploy.latency import StopRule
from lpdet.deploy.latency_backends import AdbBenchmarkBackend, CommandBackend, measure_latency
from lpdet.deploy.latency_cache import LatencyCache
from lpdet.deploy.latency_inputs import bench_images, parse_cpus
from lpdet.deploy.latency_report import comparison_to_dict, format_comparison, format_latency
from lpdet.deploy.model import source_metadata
from lpdet.deploy.nms_graph import append_nms_to_file
from lpdet.deploy.ptq import load_calibration_images
from lpdet.deploy.runtime import load_detector, load_model
from lpdet.deploy.tflite import export_tflite
from lpdet.design.quant_compare import compare_quantization, format_compare
from lpdet.design.table_11_1 import combine_results, format_table_11_1, write_table_11_1
from lpdet.errors import LpdetError
from lpdet.eval.coco_eval import evaluate, format_metrics
from lpdet.eval.predict import expand_image_paths, predict_images
from lpdet.models.config import is_qat
from lpdet.models.postprocess import PostprocessConfig
from lpdet.serialize import atomic_output, save_json

log = logging.getLogger("lpdet")


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
    given = {"nms_iou": args.nms_iou, "score_threshold": args.score_threshold, "top_k": args.top_k,
             "class_agnostic": True if getattr(args, "class_agnostic_nms", False) else None}
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
              + (f" ({result.skipped_images} unreadable: scored as missed)" if result.skipped_images else ""))
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
    if len(summary) < len(paths):
        print(f"{len(paths) - len(summary)} of {len(paths)} images could not be read (the warnings above name "
              f"them); skipped")


def _output_path(path: Path, suffix: str, *, overwrite: bool = True) -> Path:
    if path.suffix.lower() != suffix:
        raise LpdetError(f"-o {path}: the output must end in {suffix}")
    if path.is_dir():
        raise LpdetError(f"-o {path}: is a directory; name a file")
    if not overwrite and path.exists():
        raise LpdetError(f"-o {path}: the file already exists; pass --force to overwrite it, or choose another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def cmd_export(args) -> None:
    out = _output_path(args.output, ".tflite" if args.format.startswith("tflite") else ".onnx", overwrite=args.force)
    if args.nms_in_graph and args.format.startswith("tflite"):
        raise LpdetError("--nms-in-graph: ONNX only; use --format onnx or onnx-int8")
    post = PostprocessConfig(**_postprocess_overrides(args))
    detector, ckpt = load_detector(args.model, resolution=args.resolution)
    qat = is_qat(detector.config)
    resolution = detector.config.resolution
    with atomic_output(out) as tmp:  # `out` is the old file or the finished new one, never half
        _export_to(tmp, args, detector, ckpt)
        if args.nms_in_graph:
            append_nms_to_file(tmp, tmp, post)
    print(f"wrote {out} ({args.format}{', QAT' if qat and args.format == 'onnx-int8' else ''}"
          f"{', NMS in the graph' if args.nms_in_graph else ''}, "
          f"{out.stat().st_size / 1e6:.2f} MB, input 1x3x{resolution}x{resolution})")


def _export_to(out: Path, args, detector, ckpt) -> None:
    """Write `detector` to `out` in the format `--format` names."""
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


def cmd_quantize(args) -> None:
    detector, ckpt = load_detector(args.model)
    if is_qat(detector.config):
        raise LpdetError(f"{ckpt.path} is already quantization-aware; export it with lpdet export --format onnx-int8")
    default = ckpt.path.parent / f"{ckpt.path.name}-{'naive' if args.naive else 'ptq'}-int8.onnx"
    out = _output_path(args.output or default, ".onnx")
    images = load_calibration_images(args.data, detector.config.resolution, args.calibration_images)
    with atomic_output(out) as tmp:
        quantize_float(detector, tmp, images, metadata=source_metadata(ckpt), naive=args.naive)
    print(f"wrote {out} ({'naive per-tensor' if args.naive else 'calibrated per-channel'} int8, "
          f"{len(images)} calibration images)")


def _device_backend(args):
    """The device backend the bench flags ask for, or None for this machine's onnxruntime."""
    if args.latency_cmd and args.adb:
        raise LpdetError("--latency-cmd and --adb: choose one device backend")
    if args.latency_cmd:
        return CommandBackend(args.latency_cmd, timeout_s=args.device_timeout, device_id=args.device_id)
    if args.adb:
        return AdbBenchmarkBackend(serial=args.adb_serial, binary=args.adb_binary, threads=args.threads or 1,
                                   timeout_s=args.device_timeout)
    return None


def _local_timing(args) -> dict:
    """The harness settings for timing on this machine: real images, stopping rule, pinning."""
    if args.images:
        images = bench_images(expand_image_paths(args.images), count=args.num_images)
    else:
        images = bench_images(data=args.data, count=args.num_images)
    rule = StopRule.fixed(args.runs) if args.runs else StopRule(target=args.target, time_cap_s=args.time_cap)
    return dict(images=images, threads=args.threads, warmup=args.warmup, rule=rule,
                postprocess_overrides=_postprocess_overrides(args), cpus=parse_cpus(args.cpus) if args.cpus else None)


def cmd_bench(args) -> None:
    if (args.runs is not None and args.runs < 1) or args.threads < 0 or args.time_cap <= 0 \
            or not 0 < args.target < 1:
        raise LpdetError("--runs must be >= 1, --threads >= 0, --time-cap > 0 and --target in (0, 1)")
    backend = _device_backend(args)
    local = _local_timing(args) if backend is None else {}
    comparison = measure_latency(args.models, backend=backend, cache=LatencyCache(args.latency_cache),
                                 fresh=args.fresh, **local)
    if args.json:
        for s in comparison.not_separated():
            log.warning("%s vs %s: not separated (ratio interval includes 1)", args.models[s.b], args.models[s.a])
        print(json.dumps(comparison_to_dict(comparison), indent=2))
    elif len(comparison.results) == 1 and backend is None:
        print(format_latency(replace(comparison.results[0], ratio=None)))  # a ratio to itself says nothing
        print(f"rounds       {comparison.rounds} in {comparison.seconds:.1f} s; stopped: {comparison.stop_reason}")
    else:
        print(format_comparison(comparison))


def cmd_compare_quant(args) -> None:
    out = args.out or Path(args.model) / "quant-compare"
    result = compare_quantization(args.model, args.data, out, qat_ckpt=args.qat,
                                  calibration_images=args.calibration_images, threads=args.threads,
                                  runs=args.runs, max_images=args.max_images, progress=not args.quiet)
    print(format_compare(result))
    print(f"wrote {out / 'quant_compare.md'} and {out / 'quant_compare.json'}")


def cmd_table_11_1(args) -> None:
    table = combine_results(args.results)
    md, js = write_table_11_1(table, args.out)
    print(format_table_11_1(table))
    print(f"wrote {md} and {js}")
