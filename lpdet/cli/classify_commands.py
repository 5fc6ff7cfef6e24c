"""What `lpdet classify train / eval / export / compare-quant` do once parsed (parsers:
`lpdet.cli.parsers`; `classify bench` is `lpdet bench`'s handler). The same training loop, QAT,
export and latency code as the detectors, with the classification task (`lpdet.train.tasks`)."""

from __future__ import annotations

import json
from pathlib import Path

from lpdet.cli.data_commands import run_training
from lpdet.cli.model_commands import _output_path
from lpdet.data.classification import ImageFolderDataset, is_classification_data, resolve_classification_data
from lpdet.data.transforms import eval_transforms
from lpdet.deploy.export import export_onnx
from lpdet.deploy.int8 import export_int8
from lpdet.deploy.model import source_metadata
from lpdet.deploy.ptq import load_calibration_images
from lpdet.deploy.runtime import load_detector, load_model
from lpdet.design.classify_compare import compare_classifiers, format_classifier_compare
from lpdet.errors import LpdetError
from lpdet.eval.accuracy import evaluate_accuracy, format_accuracy
from lpdet.models.config import is_qat
from lpdet.models.registry import CLASSIFIERS, is_classifier
from lpdet.serialize import atomic_output


def cmd_classify_train(args) -> None:
    run_training(args, check_config=_check_classifier)


def _check_classifier(cfg) -> None:
    if not is_classifier(cfg.model):
        raise LpdetError(f"--arch {cfg.model.arch}: not a classifier; choose one of {', '.join(CLASSIFIERS)} "
                         f"(detectors train with lpdet train)")


def _check_data(data: str) -> None:
    if not is_classification_data(data):
        raise LpdetError(f"--data {data}: not a classification dataset; pass 'synth-cls' or a dataset YAML with "
                         f"'task: classification'")


def _classifier_model(path: Path, threads: int = 0):
    model = load_model(path, threads=threads)
    if model.task != "classification":
        raise LpdetError(f"{model.path}: is a detector, not a classifier; evaluate it with lpdet eval")
    return model


def cmd_classify_eval(args) -> None:
    _check_data(args.data)
    model = _classifier_model(args.model, args.threads)
    spec = resolve_classification_data(args.data)
    folder = spec.val if args.split == "val" else spec.train
    if folder is None:
        raise LpdetError(f"--data {args.data}: has no {args.split} folder; add '{args.split}:' to its YAML")
    dataset = ImageFolderDataset(folder, eval_transforms(model.resolution))
    if dataset.class_names != model.class_names:
        raise LpdetError(f"{model.path}: its classes {model.class_names} differ from {folder}'s {dataset.class_names}; "
                         f"evaluate on the dataset it was trained on")
    result = evaluate_accuracy(model.forward, dataset, batch_size=args.batch_size, max_images=args.max_images,
                               progress=not args.quiet)
    agreement = _top1_agreement(args, model, dataset, result) if args.agree_with else None
    if args.json:
        print(json.dumps({"model": str(model.path), "kind": model.kind, "data": args.data, "split": args.split,
                          "images": result.num_images, "skipped_images": result.skipped_images,
                          **result.metrics, **(agreement or {})}, indent=2))
    else:
        print(f"{model.path} ({model.kind}) on {spec.name}/{args.split}: {result.num_images} images"
              + (f" ({result.skipped_images} unreadable, skipped)" if result.skipped_images else ""))
        print(format_accuracy(result.metrics))
        if agreement:
            print(f"same top-1 as {agreement['agree_with']}: {agreement['top1_agreement'] * 100:.2f}% "
                  f"({agreement['agreeing_images']} of {result.num_images} images; its own top1 "
                  f"{agreement['other_top1'] * 100:.2f}%)")


def _top1_agreement(args, model, dataset, result) -> dict:
    """`--agree-with OTHER`: the share of the images on which OTHER (e.g. the QAT checkpoint an int8
    ONNX file was exported from) predicts the same top-1 class as the evaluated model."""
    other = _classifier_model(args.agree_with, args.threads)
    if other.class_names != model.class_names or other.resolution != model.resolution:
        raise LpdetError(f"--agree-with {args.agree_with}: its classes or input size ({other.resolution}) differ "
                         f"from {model.path}'s ({model.resolution}); compare two versions of one classifier")
    theirs = evaluate_accuracy(other.forward, dataset, batch_size=args.batch_size, max_images=args.max_images,
                               progress=not args.quiet)
    same = sum(a == b for a, b in zip(result.predictions, theirs.predictions))
    return {"agree_with": str(other.path), "agreeing_images": same,
            "top1_agreement": same / max(len(result.predictions), 1), "other_top1": theirs.metrics["top1"]}


def cmd_classify_export(args) -> None:
    out = _output_path(args.output, ".onnx", overwrite=args.force)
    classifier, ckpt = load_detector(args.model)
    if not is_classifier(classifier.config):
        raise LpdetError(f"{ckpt.path}: is a detector; export it with lpdet export")
    qat = is_qat(classifier.config)
    metadata = source_metadata(ckpt)
    resolution = classifier.config.resolution
    with atomic_output(out) as tmp:
        if args.format == "onnx":
            if qat:
                raise LpdetError(f"{ckpt.path} is a QAT checkpoint: export it with --format onnx-int8")
            export_onnx(classifier, tmp, metadata=metadata)
            how = "fp32"
        else:
            how = export_int8(classifier, tmp, lambda: load_calibration_images(args.data, resolution,
                                                                               args.calibration_images),
                              metadata=metadata)
    print(f"wrote {out} ({how}, {out.stat().st_size / 1e6:.2f} MB, input 1x3x{resolution}x{resolution})")


def cmd_classify_compare_quant(args) -> None:
    _check_data(args.data)
    if args.qat and len(args.qat) != len(args.models):
        raise LpdetError(f"--qat: give one QAT checkpoint per float checkpoint ({len(args.models)}), "
                         f"got {len(args.qat)}")
    result = compare_classifiers(args.models, args.data, args.out, qat_ckpts=args.qat or None,
                                 calibration_images=args.calibration_images, threads=args.threads, runs=args.runs,
                                 max_images=args.max_images, progress=not args.quiet)
    print(format_classifier_compare(result))
    print(f"wrote {args.out / 'classify_compare.md'} and {args.out / 'classify_compare.json'}")
