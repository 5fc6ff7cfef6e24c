"""What latency is measured on and where: real images (post-processing cost depends on the
detections a real image gives), and optionally a chosen set of CPUs.

`bench_images(paths=..., data=...)` loads real images once; `inputs_at(images, resolution)` turns
them into the model's batch-1 inputs with the evaluation resize, so a benchmark sees what
`lpdet eval` feeds the model. Without images the fixed seeded noise of `benchmark_input` is used,
with a logged warning (noise gives an unrealistic number of detections to NMS).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from lpdet.errors import LpdetError

__all__ = ["benchmark_input", "bench_images", "inputs_at", "pinned_cpus", "parse_cpus"]

log = logging.getLogger("lpdet")
_warned_noise = False


def benchmark_input(resolution: int, seed: int = 0) -> torch.Tensor:
    """The fixed batch-1 noise input used when no images are given: uniform [0, 1] pixels, seeded."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, resolution, resolution, generator=generator)


def bench_images(paths: Sequence[Path] | None = None, data: str | None = None, count: int = 16) -> list:
    """Up to `count` RGB images (PIL): the files in `paths`, else the first of the val split of
    `data` (a dataset YAML or "synth"); unreadable files are skipped with a warning. [] if neither."""
    from lpdet.data.images import load_rgb_image

    if count < 1:
        raise LpdetError(f"number of benchmark images: must be >= 1, got {count}")
    if paths:
        files = [Path(p) for p in paths][:count]
    elif data:
        files = _val_files(data, count)
    else:
        return []
    images = []
    for path in files:
        try:
            images.append(load_rgb_image(path))
        except Exception as e:  # PIL raises many types for corrupt data: skip, counted below
            log.warning("%s: skipped for benchmarking (cannot read the image: %s)", path, e)
    if not images:
        raise LpdetError(f"no readable benchmark images among {len(files)} file(s), e.g. {files[0]}")
    return images


def _val_files(data: str, count: int) -> list[Path]:
    from lpdet.data.classification import is_classification_data, resolve_classification_data, scan_image_folder
    from lpdet.data.coco import CocoDetection
    from lpdet.data.spec import resolve_dataset

    if is_classification_data(data):  # every class: items spread evenly over the class-sorted list
        spec = resolve_classification_data(data)
        items = scan_image_folder(spec.val)[1]
        return [path for path, _ in items[::max(1, len(items) // count)]][:count]
    spec = resolve_dataset(data)
    split = spec.val or spec.train
    if split is None:
        raise LpdetError(f"--data {data}: has no val: (or train:) split to take benchmark images from")
    dataset = CocoDetection(split.annotations, split.images)
    return [dataset.image_path(i) for i in range(min(count, len(dataset)))]


def inputs_at(images: list, resolution: int) -> list[torch.Tensor]:
    """Batch-1 inputs `[1, 3, R, R]` in [0, 1] with the evaluation resize; the noise input (and a
    warning, once per process) when `images` is empty."""
    global _warned_noise
    if not images:
        if not _warned_noise:
            log.warning("latency measured on random noise: give real images (--data or --images) for a "
                        "realistic post-processing cost")
            _warned_noise = True
        return [benchmark_input(resolution)]
    from lpdet.data.transforms import eval_transforms

    resize = eval_transforms(resolution)
    empty_boxes, empty_labels = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    return [resize(image, empty_boxes, empty_labels)[0].unsqueeze(0).contiguous() for image in images]


def parse_cpus(text: str) -> list[int]:
    """'0,1' or '0-3' or '0,2-3' -> CPU ids."""
    cpus = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            cpus.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise LpdetError(f"--cpus {text}: expected CPU ids like 0,1 or 0-3") from None
    if not cpus:
        raise LpdetError(f"--cpus {text!r}: names no CPU")
    return sorted(set(cpus))


def _thread_ids() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]  # no /proc: the calling thread only


@contextlib.contextmanager
def pinned_cpus(cpus: Sequence[int] | None):
    """Run the block with every thread of this process (and those it starts) on `cpus`; afterwards
    each thread gets its previous affinity back (threads started meanwhile, e.g. a runtime's thread
    pool, get the process's previous one). None or empty: no change. Linux only."""
    if not cpus:
        yield
        return
    if not hasattr(os, "sched_setaffinity"):
        raise LpdetError("--cpus: pinning to CPUs needs Linux (os.sched_setaffinity); leave --cpus out")
    allowed = os.sched_getaffinity(0)
    if not set(cpus) <= allowed:
        raise LpdetError(f"--cpus {','.join(map(str, cpus))}: this process may only use CPUs "
                         f"{','.join(map(str, sorted(allowed)))}")
    previous = {}
    try:
        for tid in _thread_ids():
            with contextlib.suppress(OSError):  # a thread may end meanwhile
                previous[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, cpus)
        yield
    finally:
        for tid in _thread_ids():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, previous.get(tid, allowed))
