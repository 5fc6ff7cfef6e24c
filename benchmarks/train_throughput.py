"""Training throughput of lpdet's MobileNetV2-SSDLite at 320 against torchvision's SSDLite320-MobileNetV3.

Both detectors train on the same batches (lpdet's SSD augmentation of a freshly generated
synthetic dataset, loaded once), with the same batch size, torch threads and precision: fp32,
and bf16 autocast where the CPU runs bf16 natively (AVX512-BF16 / AMX; lpdet's own test). lpdet
runs its training loop's step (channels-last input, bf16 forward, fp32 multibox loss, gradient
check, SGD); torchvision's model runs the plain loop of its reference scripts (autocast around
`model(images, targets)`, which includes its loss; SGD). torchvision's model is built with
``weights=None, weights_backbone=None``: nothing is downloaded.

The configurations are interleaved round by round (the order reversed every other round), so a
shared machine's drift hits them alike; each figure is the median over rounds with the range.
The cost-normalised figure is GMAC/s = images/s x GMAC per image (multiply-adds of one image's
forward at 320, counted by torch's FlopCounterMode, which reproduces torchvision's documented
0.583 GMAC for its 91-class model and lpdet's own `profile_detector` count exactly).
lpdet's data pipeline (loader + augmentation, `--workers` processes) is timed in the same rounds.

    python benchmarks/train_throughput.py [--batch-size 16] [--rounds 3] [--steps 2] [--workers 1] [--threads 1]

On a machine shared with other jobs pass ``--threads 1``: with more torch threads than free cores
OpenMP's spinning slowed both models about tenfold in our measurements (2 threads on a 2-core
Xeon at load 7: 0.2 images/s; 1 thread: 2 images/s).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

MODELS = ("lpdet mobilenet_v2_ssdlite", "torchvision ssdlite320_mobilenet_v3_large")


def forward_gmacs(forward, image: torch.Tensor) -> float:
    """Multiply-adds (G) of one image's forward pass; FlopCounterMode counts 2 FLOPs per MAC."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        forward(image)
    return counter.get_total_flops() / 2e9


def build_models(num_classes: int, resolution: int):
    """(lpdet detector, torchvision detector), both in train mode; the torchvision count includes background."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    from lpdet.models.registry import ModelConfig, build_detector

    torch.manual_seed(0)
    ours = build_detector(ModelConfig("mobilenet_v2_ssdlite", num_classes=num_classes, resolution=resolution))
    peer = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes + 1)
    return ours.to(memory_format=torch.channels_last).train(), peer.train()


def model_gmacs(ours, peer, resolution: int) -> tuple[float, float, float]:
    """(lpdet GMAC by FlopCounterMode, lpdet GMAC by its own profile, torchvision GMAC by FlopCounterMode)."""
    from lpdet.models.profile import profile_detector

    image = torch.zeros(1, 3, resolution, resolution)

    def peer_forward(x):  # backbone + head: torchvision's resize/normalise and box coding hold no MACs
        peer.head(list(peer.backbone(x).values()))

    ours.eval(), peer.eval()
    counts = (forward_gmacs(ours, image), profile_detector(ours).macs / 1e9, forward_gmacs(peer_forward, image))
    ours.train(), peer.train()
    return counts


def step_functions(ours, peer, resolution: int):
    """One SGD step per model on (images, targets in pixels), bf16 autocast on request."""
    from lpdet.models.loss import multibox_loss
    from lpdet.train.loop import _gradients_finite

    ours_opt = torch.optim.SGD(ours.parameters(), lr=1e-3, momentum=0.9)
    peer_opt = torch.optim.SGD(peer.parameters(), lr=1e-3, momentum=0.9)

    def ours_step(images, targets, bf16: bool) -> None:  # lpdet.train.loop's step
        images = images.contiguous(memory_format=torch.channels_last)
        norm = [{"boxes": t["boxes"] / resolution, "labels": t["labels"]} for t in targets]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            cls_logits, box_deltas = ours(images)
        loss = multibox_loss(cls_logits.float(), box_deltas.float(), norm, ours.anchors)["loss"]
        ours_opt.zero_grad(set_to_none=True)
        loss.backward()
        if _gradients_finite(ours):
            ours_opt.step()

    def peer_step(images, targets, bf16: bool) -> None:  # torchvision's reference loop
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses = peer(list(images), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        loss = sum(losses.values())
        peer_opt.zero_grad(set_to_none=True)
        loss.backward()
        peer_opt.step()

    return {MODELS[0]: ours_step, MODELS[1]: peer_step}


def time_loader(dataset, batch_size: int, batches: int, workers: int, epoch: int) -> float:
    """lpdet's data pipeline alone: images/s after the first batch (worker start-up excluded)."""
    from lpdet.data.loader import make_loader

    loader = make_loader(dataset, batch_size, shuffle=True, seed=1, epoch=epoch, workers=workers)
    images, start = 0, None
    for step, (_, targets, _) in enumerate(loader):
        if step == 0:
            start = time.perf_counter()
            continue
        images += len(targets)
        if step == batches:
            break
    return images / (time.perf_counter() - start)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} [{min(values):.2f}, {max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the interval is their range)")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per model and round")
    parser.add_argument("--workers", type=int, default=1, help="data-loading processes (lpdet train's default: 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--precision", choices=["both", "fp32", "bf16"], default="both")
    args = parser.parse_args()

    from lpdet.data.coco import CocoDetection
    from lpdet.data.loader import make_loader
    from lpdet.data.spec import load_dataset_yaml
    from lpdet.data.synth import generate_synthetic_coco
    from lpdet.data.transforms import train_transforms
    from lpdet.train.loop import _use_bf16

    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = [p for p in ("fp32", "bf16") if args.precision in (p, "both")]
    if "bf16" in precisions and not _use_bf16("auto", torch.device("cpu"), qat=False):
        print("this CPU has no native bf16: fp32 only")
        precisions = ["fp32"]
    batch = args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        spec = load_dataset_yaml(generate_synthetic_coco(Path(tmp), batch * (args.steps + 1) * 2, 1, seed=0,
                                                         progress=False))
        train_set = CocoDetection(spec.train.annotations, spec.train.images,
                                  transform=train_transforms(args.resolution), seed=0)
        batches = [(images, targets) for images, targets, _ in
                   make_loader(train_set, batch, shuffle=True, seed=0, epoch=0, workers=args.workers)]
        ours, peer = build_models(train_set.num_classes, args.resolution)
        ours_gmac, ours_profile_gmac, peer_gmac = model_gmacs(ours, peer, args.resolution)
        steps = step_functions(ours, peer, args.resolution)
        configs = [(model, precision) for precision in precisions for model in MODELS]
        for model, precision in configs:  # warm-up: allocator, oneDNN kernel selection
            steps[model](*batches[0], precision == "bf16")
        rates: dict[tuple[str, str], list[float]] = {c: [] for c in configs}
        data_rates: list[float] = []
        for round_index in range(args.rounds):
            order = configs if round_index % 2 == 0 else configs[::-1]
            for model, precision in order:
                start = time.perf_counter()
                for s in range(args.steps):
                    steps[model](*batches[(round_index + s) % len(batches)], precision == "bf16")
                rates[(model, precision)].append(args.steps * batch / (time.perf_counter() - start))
            data_rates.append(time_loader(train_set, batch, args.steps, args.workers, epoch=round_index + 1))

    print(f"{args.resolution}x{args.resolution}, batch {batch}, torch threads {torch.get_num_threads()}, "
          f"{args.rounds} interleaved rounds of {args.steps} steps; median [min, max] over rounds")
    print(f"GMAC per image (FlopCounterMode): lpdet {ours_gmac:.3f} (its profile_detector: {ours_profile_gmac:.3f}), "
          f"torchvision {peer_gmac:.3f}; {train_set.num_classes} classes + background")
    gmacs = {MODELS[0]: ours_gmac, MODELS[1]: peer_gmac}
    print(f"{'model':<44}{'precision':<10}{'images/s':>24}{'GMAC/s (images/s x GMAC)':>30}")
    for model, precision in configs:
        values = rates[(model, precision)]
        print(f"{model:<44}{precision:<10}{summary(values):>24}{summary([v * gmacs[model] for v in values]):>30}")
    for precision in precisions:
        ratio = [o / p for o, p in zip(rates[(MODELS[0], precision)], rates[(MODELS[1], precision)])]
        per_gmac = [r * ours_gmac / peer_gmac for r in ratio]
        print(f"lpdet / torchvision, {precision}: images/s {summary(ratio)}, GMAC/s {summary(per_gmac)} "
              f"(paired within rounds)")
    print(f"lpdet data pipeline alone (SSD augmentation, {args.workers} worker(s)): {summary(data_rates)} images/s")


if __name__ == "__main__":
    main()
