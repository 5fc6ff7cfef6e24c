"""One synthetic image: background, placed (possibly occluded or cut) objects and their COCO boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lpdet.data.synth.background import draw_background
from lpdet.data.synth.camera import degrade_image
from lpdet.data.synth.objects import degrade_sprite, render_sprite, sample_side
from lpdet.data.synth.style import SYNTH_CLASSES, random_rgba

SPLITS = {"train": 0, "val": 1}  # the split's number is part of each image's seed
_IMG_SIZE_RANGE = (256, 384)      # width and height are drawn independently: varied aspect ratios
_JPEG_QUALITY = 90
_MIN_VISIBLE = 0.5                # drop/avoid annotations more than half occluded
_ALPHA_SOLID = 0.5                # alpha at which a pixel counts as "object" (label mask, bbox)


def _place_objects(rng: np.random.Generator, img: np.ndarray) -> list[tuple[int, list[float]]]:
    """Paste 2-12 objects into `img` (in place); return (category id, xywh bbox) per kept object.

    Later objects may overlap earlier ones, but a position that would leave an earlier
    object less than 50% visible is rejected (and the object skipped after a few tries),
    so every label is for something that can be seen.
    """
    h, w = img.shape[:2]
    n = 2 + min(int(rng.poisson(3.6 * w * h / 320**2)), 10)
    labels = np.full((h, w), -1, np.int16)  # index of the top-most object at each pixel
    visible: list[int] = []
    in_image: list[int] = []
    boxes: list[tuple[int, list[float]]] = []
    for _ in range(n):
        cls = int(rng.integers(len(SYNTH_CLASSES)))
        sprite = render_sprite(rng, SYNTH_CLASSES[cls], sample_side(rng, 0.85 * min(w, h)), w, h)
        sh, sw = sprite.alpha.shape
        solid = sprite.alpha >= _ALPHA_SOLID
        total = int(solid.sum())
        if total == 0:
            continue
        # Most objects lie fully inside; 15% may be cut by the border (losing up to 40%).
        cut = rng.uniform(0.0, 0.4) if rng.random() < 0.15 else 0.0
        placed = None
        for _try in range(12):
            ox = int(round(rng.uniform(-cut * sw, w - sw + cut * sw))) if sw < w else 0
            oy = int(round(rng.uniform(-cut * sh, h - sh + cut * sh))) if sh < h else 0
            x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + sw, w), min(oy + sh, h)
            m = solid[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
            if m.sum() < 0.6 * total:
                continue
            hidden = np.bincount(labels[y0:y1, x0:x1][m] + 1, minlength=len(visible) + 1)[1:]
            if all(visible[j] - hidden[j] >= _MIN_VISIBLE * in_image[j] for j in np.flatnonzero(hidden)):
                placed = (ox, oy, x0, y0, x1, y1, m, hidden)
                break
        if placed is None:
            continue
        ox, oy, x0, y0, x1, y1, m, hidden = placed
        region = img[y0:y1, x0:x1]
        sprite = degrade_sprite(rng, sprite, region.reshape(-1, 3).mean(0))
        a = sprite.alpha[y0 - oy:y1 - oy, x0 - ox:x1 - ox, None]
        region += (sprite.rgb[y0 - oy:y1 - oy, x0 - ox:x1 - ox] - region) * a
        for j in np.flatnonzero(hidden):
            visible[j] -= int(hidden[j])
        labels[y0:y1, x0:x1][m] = len(visible)
        visible.append(int(m.sum()))
        in_image.append(int(m.sum()))
        # COCO boxes cover the object's full extent (occluded parts included), clipped to the
        # image; taken before the blur, which changes how the object looks, not where it is.
        ys, xs = np.nonzero(solid)
        bx0, by0 = max(xs.min() + ox, 0), max(ys.min() + oy, 0)
        bx1, by1 = min(xs.max() + 1 + ox, w), min(ys.max() + 1 + oy, h)
        boxes.append((cls + 1, [float(bx0), float(by0), float(bx1 - bx0), float(by1 - by0)]))
    return [b for b, v, t in zip(boxes, visible, in_image) if v >= _MIN_VISIBLE * t and b[1][2] > 0 and b[1][3] > 0]


def _foreground_clutter(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Occasionally draw thin lines over everything (wires, twigs): occluders with no label."""
    if rng.random() >= 0.3:
        return img
    h, w = img.shape[:2]
    pil = Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(pil, "RGBA")
    for _ in range(int(rng.integers(1, 4))):
        pts = [(rng.uniform(0, w), rng.uniform(0, h)) for _ in range(2)]
        draw.line(pts, fill=random_rgba(rng, 0.6), width=int(rng.integers(1, 3)))
    return np.asarray(pil, np.float32)


def make_image(task: tuple[str, str, int, int]) -> tuple[str, int, int, list[tuple[int, list[float]]]]:
    """Render and write image `index` of `split`; return (file name, width, height, boxes).

    Runs in worker processes: everything random comes from a generator seeded by
    (seed, split, index), so the result does not depend on which process draws it or when.
    """
    image_dir, split, index, seed = task
    rng = np.random.default_rng([seed, SPLITS[split], index])
    w, h = (int(v) for v in rng.integers(_IMG_SIZE_RANGE[0], _IMG_SIZE_RANGE[1] + 1, 2))
    img = draw_background(rng, w, h)
    boxes = _place_objects(rng, img)
    img = _foreground_clutter(rng, img)
    out = degrade_image(rng, img)
    name = f"{index:012d}.jpg"
    out.save(Path(image_dir) / name, "JPEG", quality=_JPEG_QUALITY)
    return name, w, h, boxes
