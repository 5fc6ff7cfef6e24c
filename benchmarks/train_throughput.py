"""Training and evaluation throughput of MobileNetV2-SSDLite at 320 on this machine.

Measures the real pipeline (data loading + SSD augmentation + forward + multibox loss +
backward + SGD step; and for eval: resize + forward + post-processing) on a freshly
generated synthetic dataset. Prints images/s.

    python benchmarks/train_throughput.py [--steps 8] [--batch-size 32] [--workers 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mobilenet_v2_ssdlite")
    parser.add_argument("--resolution", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed training steps (after 2 warm-up steps)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    from lpdet.data.coco import CocoDetection
    from lpdet.data.loader import make_loader
    from lpdet.data.synth import generate_synthetic_coco
    from lpdet.data.spec import load_dataset_yaml
    from lpdet.data.transforms import eval_transforms, train_transforms
    from lpdet.eval.coco_eval import detector_predictor
    from lpdet.models.loss import multibox_loss
    from lpdet.models.config import ModelConfig
    from lpdet.models.registry import build_detector

    if args.threads:
        torch.set_num_threads(args.threads)
    n_train = args.batch_size * (args.steps + 2)
    with tempfile.TemporaryDirectory() as tmp:
        spec = load_dataset_yaml(generate_synthetic_coco(Path(tmp), n_train, 64, seed=0, progress=False))
        train_set = CocoDetection(spec.train.annotations, spec.train.images, transform=train_transforms(args.resolution))
        val_set = CocoDetection(spec.val.annotations, spec.val.images, transform=eval_transforms(args.resolution))
        model = build_detector(ModelConfig(args.arch, num_classes=train_set.num_classes, resolution=args.resolution))
        model = model.to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        loader = make_loader(train_set, args.batch_size, shuffle=True, seed=0, epoch=0, workers=args.workers)
        timed_images, start = 0, None
        for step, (images, targets, _) in enumerate(loader):
            if step == 2:  # skip warm-up (allocator, worker start-up)
                start = time.perf_counter()
            norm = [{"boxes": t["boxes"] / args.resolution, "labels": t["labels"]} for t in targets]
            cls_logits, box_deltas = model(images.contiguous(memory_format=torch.channels_last))
            loss = multibox_loss(cls_logits, box_deltas, norm, model.anchors)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if start is not None:
                timed_images += len(targets)
        train_ips = timed_images / (time.perf_counter() - start)

        model.eval()
        predict = detector_predictor(model)
        loader = make_loader(val_set, 16, shuffle=False, seed=0, epoch=0, workers=args.workers)
        timed_images, start = 0, None
        for step, (images, targets, _) in enumerate(loader):
            if step == 1:
                start = time.perf_counter()
            predict(images.contiguous(memory_format=torch.channels_last))
            if start is not None:
                timed_images += len(targets)
        eval_ips = timed_images / (time.perf_counter() - start)

    print(f"{args.arch} @ {args.resolution}, batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
          f"data workers {args.workers}")
    print(f"training:   {train_ips:6.1f} images/s  (data + augmentation + forward + loss + backward + step)")
    print(f"evaluation: {eval_ips:6.1f} images/s  (data + forward + post-processing)")


if __name__ == "__main__":
    main()
