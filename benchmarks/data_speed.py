"""Data-pipeline speed on this machine: the SSD train transform per image and loading a large
COCO annotation file. These were timing asserts in the tests once; a test's verdict must not
depend on which CPU runs it, so the figures live here.

    python benchmarks/data_speed.py [--images 50] [--annotations 100000]

Prints CPU ms per image for the train transform (process time, one thread; ~6 ms seen on one
AMD EPYC core) and wall seconds to load and index a COCO file of N annotations on 2000 images
(~1 s seen), each as the median of --repeats runs with the min and max beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lpdet.data.coco import CocoDetection
from lpdet.data.transforms import train_transforms


def transform_ms_per_image(n_images: int) -> float:
    """CPU ms per image of `train_transforms(300)` on a 400x300 image with three boxes."""
    transform = train_transforms(300)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    boxes = torch.tensor([[50.0, 40, 150, 200], [200, 100, 380, 280], [10, 10, 40, 30]])
    labels = torch.tensor([1, 2, 3])
    torch.manual_seed(0)
    for _ in range(5):  # warm-up
        transform(image, boxes, labels)
    start = time.process_time()
    for _ in range(n_images):
        transform(image, boxes, labels)
    return (time.process_time() - start) / n_images * 1e3


def write_large_coco(path: Path, n_images: int, n_annotations: int) -> None:
    rng = np.random.default_rng(0)
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in range(1, n_images + 1)]
    xy = rng.uniform(0, 460, (n_annotations, 2)).round(1)
    annotations = [{"id": k + 1, "image_id": int(k % n_images) + 1, "category_id": 1 + int(k % 3), "iscrowd": 0,
                    "area": 100.0, "bbox": [float(xy[k, 0]), float(xy[k, 1]), 10.0, 10.0]}
                   for k in range(n_annotations)]
    categories = [{"id": c, "name": str(c)} for c in (1, 2, 3)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def coco_load_seconds(annotations: Path, images: Path) -> float:
    start = time.perf_counter()
    CocoDetection(annotations, images)
    return time.perf_counter() - start


def _summary(values: list[float], unit: str) -> str:
    return f"median {statistics.median(values):.2f} {unit} (min {min(values):.2f}, max {max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50, help="images per transform timing")
    parser.add_argument("--annotations", type=int, default=100_000, help="annotations in the large COCO file")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ms = [transform_ms_per_image(args.images) for _ in range(args.repeats)]
    print(f"train transform (300x300, SSD augmentation): {_summary(ms, 'ms/image')}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "im").mkdir()
        write_large_coco(root / "big.json", 2000, args.annotations)
        seconds = [coco_load_seconds(root / "big.json", root / "im") for _ in range(args.repeats)]
    print(f"COCO load, {args.annotations} annotations on 2000 images: {_summary(seconds, 's')}")


if __name__ == "__main__":
    main()
