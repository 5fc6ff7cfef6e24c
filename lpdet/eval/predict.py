"""`lpdet predict`: run a detector on image files and draw its boxes, labels and scores."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes

from lpdet.errors import LpdetError

log = logging.getLogger("lpdet.predict")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
           "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3"]


def expand_image_paths(paths: list[Path]) -> list[Path]:
    """Image files named directly or found (non-recursively) in named folders."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise LpdetError(f"{path}: no such image or folder")
    if not found:
        raise LpdetError(f"no images found in {', '.join(map(str, paths))}")
    return found


def load_rgb(path: Path) -> Image.Image | None:
    """The image upright and in RGB, or None (logged) if it cannot be read (PIL's guard against
    decompression bombs, images over twice `Image.MAX_IMAGE_PIXELS`, included)."""
    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img).convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        log.warning("skipping %s: cannot read the image (%s)", path, e)
        return None


def output_paths(paths: list[Path], out_dir: Path) -> list[Path]:
    """Where each image's drawing goes: ``NAME.pred.png`` with NAME the input's whole file name,
    so ``a.jpg`` and ``a.png`` do not collide and no output can be an input image; a name
    repeated from another folder gets ``.2``, ``.3``, ... before ``.pred.png``."""
    inputs = {path.resolve() for path in paths}
    taken: set[str] = set()
    targets = []
    for path in paths:
        name, n = f"{path.name}.pred.png", 1
        while name in taken or (out_dir / name).resolve() in inputs:
            n += 1
            name = f"{path.name}.{n}.pred.png"
        taken.add(name)
        targets.append(out_dir / name)
    return targets


def predict_images(predict, resolution: int, class_names: list[str], paths: list[Path], out_dir: Path,
                   *, score_threshold: float = 0.3) -> list[dict]:
    """Draw detections above `score_threshold` for each image into `out_dir` (names from
    `output_paths`: input images are never overwritten); returns per-image detections."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = []
    for path, target in zip(paths, output_paths(paths, out_dir)):
        image = load_rgb(path)
        if image is None:
            continue
        pixels = F.pil_to_tensor(image)
        batch = F.resize(pixels, [resolution, resolution], antialias=True).float().div(255).unsqueeze(0)
        det = predict(batch)[0]
        keep = det["scores"] >= score_threshold
        boxes = det["boxes"][keep] * torch.tensor([image.width, image.height, image.width, image.height])
        labels = det["labels"][keep].tolist()
        scores = det["scores"][keep].tolist()
        texts = [f"{class_names[label - 1]} {score:.2f}" for label, score in zip(labels, scores)]
        colors = [PALETTE[(label - 1) % len(PALETTE)] for label in labels]
        drawn = draw_bounding_boxes(pixels, boxes, labels=texts, colors=colors, width=2) if texts else pixels
        F.to_pil_image(drawn).save(target)
        summary.append({"image": str(path), "output": str(target),
                        "detections": [{"label": class_names[l - 1], "score": round(s, 4),
                                        "box_xyxy": [round(v, 1) for v in b.tolist()]}
                                       for l, s, b in zip(labels, scores, boxes)]})
    return summary
