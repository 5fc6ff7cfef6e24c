"""Training throughput of a classifier at the seed's ImageNet setting (default: MobileNetV2 1.0,
224x224, 1,000 classes), to say how long a real ImageNet training would take on this machine.

Why it exists: issue 14 asks, where no training on this CPU reaches naive 8-bit's collapse, how long
the seed's kind of training would take. Each step is the training loop's core (channels-last input,
forward under bf16 autocast or in fp32, cross-entropy, backward, SGD) on a fixed random batch, so the
figure excludes data loading; the median of the timed steps is reported after two warm-up steps.

    python benchmarks/classifier_throughput.py [--arch mobilenet_v2_classifier] [--width 1.0]
        [--resolution 224] [--classes 1000] [--batch-size 32] [--steps 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lpdet.models.config import ModelConfig
from lpdet.models.registry import build_detector

IMAGENET_TRAIN_IMAGES = 1_281_167


def images_per_second(model: torch.nn.Module, batch: torch.Tensor, labels: torch.Tensor, *, bf16: bool,
                      steps: int) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(batch)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return batch.shape[0] / statistics.median(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mobilenet_v2_classifier")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per precision (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = ModelConfig(args.arch, num_classes=args.classes, width=args.width, resolution=args.resolution)
    model = build_detector(config).train().to(memory_format=torch.channels_last)
    batch = torch.rand(args.batch_size, 3, args.resolution, args.resolution).contiguous(
        memory_format=torch.channels_last)
    labels = torch.randint(0, args.classes, (args.batch_size,))
    for precision in ("fp32", "bf16"):
        rate = images_per_second(model, batch, labels, bf16=precision == "bf16", steps=args.steps)
        epoch_hours = IMAGENET_TRAIN_IMAGES / rate / 3600
        print(f"{precision}: {rate:.1f} images/s; one ImageNet epoch {epoch_hours:.1f} h, "
              f"150 epochs {150 * epoch_hours / 24:.0f} days, 300 epochs {300 * epoch_hours / 24:.0f} days")


if __name__ == "__main__":
    main()
