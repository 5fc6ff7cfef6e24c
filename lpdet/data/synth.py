"""The embedded default dataset: a synthetic, COCO-format detection dataset.

`generate_synthetic_coco(out_dir, n_train, n_val, seed)` writes JPEG images, COCO
``instances_{train,val}.json`` files and a dataset YAML, so every lpdet command can run
without downloading COCO. It is meant as a fair stand-in, not a toy:

* ten classes, each with a distinctive silhouette, a class-typical (but overlapping,
  jittered) hue family and a preferred (not fixed) texture, so a detector has to combine
  shape, colour and texture cues; shapes with a direction (triangle, arrow, crescent) turn
  at most 30-45° either way, as COCO's objects are mostly upright;
* object sizes follow COCO's area buckets by bbox area (about 40% small < 32², 35% medium,
  25% large > 96²); small objects (14-32 px a side) are sometimes low-contrast or blurred;
* cluttered backgrounds (gradients, low-frequency noise, lines, arcs, textured patches and
  irregular "distractor" shapes that belong to no class), occlusion between objects,
  truncation at the image border, sensor noise, blur, colour casts and JPEG artefacts.

Every image is drawn from its own generator seeded by ``(seed, split, index)``, so output
is byte-identical for a seed whatever the number of worker processes or their order.
"""

from __future__ import annotations

import colorsys
import io
import json
import math
import multiprocessing
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFilter

from lpdet.errors import LpdetError
from lpdet.serialize import atomic_write_text

SYNTH_CLASSES: tuple[str, ...] = (
    "disc", "square", "triangle", "star", "cross",
    "ring", "hexagon", "crescent", "heart", "arrow",
)

_SPLITS = {"train": 0, "val": 1}  # the split's number is part of each image's seed
_IMG_SIZE_RANGE = (256, 384)      # width and height are drawn independently: varied aspect ratios
_JPEG_QUALITY = 90
_MIN_VISIBLE = 0.5                # drop/avoid annotations more than half occluded
_CLUTTER_SAT = 0.6                # background clutter is duller than objects (saturation 0.55-1)
_ALPHA_SOLID = 0.5                # alpha at which a pixel counts as "object" (label mask, bbox)
_TEXTURES = ("solid", "stripes", "checker", "dots", "gradient", "noise")

# Bucket weights are a little above the target 40/35/25 for large objects because large
# objects are the ones most often rejected by the occlusion check or cut by the border.
_BUCKETS = (  # (probability, smallest side, largest side) of sqrt(bbox area) in pixels
    (0.385, 14.0, 31.5),
    (0.345, 32.5, 95.5),
    (0.270, 96.5, 230.0),
)


@dataclass(frozen=True)
class _ClassStyle:
    """How one class looks: hue family (degrees), preferred texture, rotation range."""

    hue: float
    texture: str
    max_rotation: float  # degrees either side; 0 for shapes that look the same rotated


# Hue centres are ~36 degrees apart and jittered by up to +-15 (plus an occasional random
# hue), so neighbouring classes overlap in colour and shape stays necessary.
_STYLES: dict[str, _ClassStyle] = {
    "disc": _ClassStyle(0, "solid", 0),
    "heart": _ClassStyle(340, "noise", 25),
    "star": _ClassStyle(28, "solid", 180),
    "triangle": _ClassStyle(55, "gradient", 30),
    "arrow": _ClassStyle(95, "stripes", 45),
    "cross": _ClassStyle(135, "stripes", 45),
    "hexagon": _ClassStyle(180, "dots", 30),
    "square": _ClassStyle(220, "checker", 45),
    "ring": _ClassStyle(265, "solid", 0),
    "crescent": _ClassStyle(305, "gradient", 45),
}
_HUE_JITTER = 12.0
_RANDOM_HUE_P = 0.04
_PREFERRED_TEXTURE_P = 0.8


# ----------------------------------------------------------------------------- shapes


def _circle(r: float = 1.0, cx: float = 0.0, cy: float = 0.0, n: int = 48) -> np.ndarray:
    """A circle as an `n`-gon (N, 2)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _regular(n: int, r: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    """A regular n-gon with a vertex pointing up (image y grows downwards)."""
    t = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _crescent() -> np.ndarray:
    """A crescent as one hole-free polygon: the outer arc, then the inner arc back."""
    d, ri = 0.45, 0.8  # inner (cut-away) disc: centre offset to the right, radius
    x = (d * d + 1 - ri * ri) / (2 * d)  # the two circles intersect at (x, +-y)
    y = math.sqrt(1 - x * x)
    phi, psi = math.atan2(y, x), math.atan2(y, x - d)
    outer = np.linspace(phi, 2 * np.pi - phi, 40)
    inner = np.linspace(2 * np.pi - psi, psi, 30)
    return np.concatenate([
        np.stack([np.cos(outer), np.sin(outer)], axis=1),
        np.stack([d + ri * np.cos(inner), ri * np.sin(inner)], axis=1),
    ])


def _heart() -> np.ndarray:
    """The classic parametric heart, point down."""
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], axis=1) / 17.0


@lru_cache(maxsize=None)
def _shape(name: str) -> tuple[tuple[np.ndarray, int], ...]:
    """Unit-size outline of class `name`: polygons with fill 255 (solid) or 0 (hole).

    Points are centred on their bounding box so that scaling and rotation keep the object
    where it is placed.
    """
    w = 0.34  # half-width of a cross arm
    polys: list[tuple[np.ndarray, int]] = {
        "disc": [(_circle(), 255)],
        "square": [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float), 255)],
        "triangle": [(_regular(3), 255)],
        "star": [(np.stack([_regular(5), _regular(5, 0.42, -np.pi / 2 + np.pi / 5)], 1).reshape(-1, 2), 255)],
        "cross": [(np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1],
                             [-w, w], [-1, w], [-1, -w], [-w, -w]], float), 255)],
        "ring": [(_circle(), 255), (_circle(0.55), 0)],
        "hexagon": [(_regular(6, phase=0.0), 255)],
        "crescent": [(_crescent(), 255)],
        "heart": [(_heart(), 255)],
        "arrow": [(np.array([[-1, -0.2], [0.15, -0.2], [0.15, -0.55], [1, 0], [0.15, 0.55],
                             [0.15, 0.2], [-1, 0.2]], float), 255)],
    }[name]
    outer = polys[0][0]
    centre = (outer.min(0) + outer.max(0)) / 2
    return tuple((p - centre, fill) for p, fill in polys)


# ----------------------------------------------------------------------------- colour and texture


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    """HSV (hue in degrees, s and v in [0, 1]) to an RGB float32 triple in [0, 255]."""
    return np.array(colorsys.hsv_to_rgb((h_deg % 360) / 360, s, v), np.float32) * 255


def _random_colour(rng: np.random.Generator, sat_max: float = 1.0) -> np.ndarray:
    """Any colour, saturation capped by `sat_max` (backgrounds are mostly duller)."""
    return _hsv(rng.uniform(0, 360), rng.uniform(0, sat_max), rng.uniform(0.15, 1.0))


def _object_colours(rng: np.random.Generator, style: _ClassStyle) -> tuple[np.ndarray, np.ndarray]:
    """Main colour from the class hue family, and a secondary colour for the texture."""
    hue = rng.uniform(0, 360) if rng.random() < _RANDOM_HUE_P else style.hue + rng.uniform(-_HUE_JITTER, _HUE_JITTER)
    s, v = rng.uniform(0.55, 1.0), rng.uniform(0.5, 1.0)
    c1 = _hsv(hue, s, v)
    r = rng.random()
    if r < 0.45:    # darker shade of the same hue
        c2 = _hsv(hue, s, v * rng.uniform(0.25, 0.6))
    elif r < 0.7:   # pale tint
        c2 = _hsv(hue, s * rng.uniform(0.0, 0.4), min(1.0, v + 0.3))
    else:           # a contrasting colour
        c2 = _hsv(hue + rng.uniform(90, 270), rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0))
    return c1, c2


def _lowfreq(rng: np.random.Generator, w: int, h: int, cells: int, channels: int = 1) -> np.ndarray:
    """Smooth noise in [0, 1] of shape (h, w, channels): a small random grid upsampled."""
    gw, gh = max(2, round(cells * w / max(w, h))), max(2, round(cells * h / max(w, h)))
    grid = (rng.random((gh, gw, channels)) * 255).astype(np.uint8)
    mode = "L" if channels == 1 else "RGB"
    img = Image.fromarray(grid[..., 0] if channels == 1 else grid, mode).resize((w, h), Image.BICUBIC)
    return (np.asarray(img, np.float32) / 255).reshape(h, w, channels)


def _texture(rng: np.random.Generator, kind: str, w: int, h: int, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """An (h, w, 3) float32 texture of `kind` in colours `c1` (dominant) and `c2`."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    u = xx * math.cos(theta) + yy * math.sin(theta)  # coordinates rotated with the pattern
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    period = rng.uniform(max(3.0, max(w, h) / 9), max(4.0, max(w, h) / 3.5))
    if kind == "solid":  # a soft shading gradient, like light falling on the object
        m = (u - u.min()) / max(1.0, np.ptp(u)) * rng.uniform(0.0, 0.25)
    elif kind == "stripes":
        m = 0.5 + 0.5 * np.tanh(3 * np.sin(2 * np.pi * u / period))
    elif kind == "checker":
        m = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    elif kind == "dots":
        m = (np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period) > 0.45).astype(np.float32)
    elif kind == "gradient":
        m = (u - u.min()) / max(1.0, np.ptp(u))
    else:  # "noise"
        m = _lowfreq(rng, w, h, int(rng.integers(3, 8)))[..., 0]
    if kind in ("stripes", "checker", "dots"):
        m = m * rng.uniform(0.45, 0.75)  # keep the class colour dominant
    return c1 + (c2 - c1) * m[..., None]


def _pick_texture(rng: np.random.Generator, style: _ClassStyle) -> str:
    """The class's preferred texture most of the time, any texture otherwise."""
    return style.texture if rng.random() < _PREFERRED_TEXTURE_P else str(rng.choice(_TEXTURES))


# ----------------------------------------------------------------------------- objects


@dataclass
class _Sprite:
    """A rendered object: colour (h, w, 3) and alpha (h, w) in [0, 1]."""

    rgb: np.ndarray
    alpha: np.ndarray


def _sample_side(rng: np.random.Generator, max_side: float) -> float:
    """sqrt(bbox area) in pixels, from the COCO-bucket mixture."""
    probs = [b[0] for b in _BUCKETS]
    _, lo, hi = _BUCKETS[int(rng.choice(len(_BUCKETS), p=probs))]
    hi = min(hi, max_side)
    return float(rng.uniform(min(lo, hi), hi))


def _render_sprite(rng: np.random.Generator, name: str, side: float, img_w: int, img_h: int) -> _Sprite:
    """Draw one object of class `name` whose bbox area is about `side`²."""
    style = _STYLES[name]
    stretch = math.exp(rng.uniform(-0.2, 0.2))  # aspect 0.67..1.5: distractors are more elongated
    angle = math.radians(rng.uniform(-style.max_rotation, style.max_rotation))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    polys = [((p * [stretch, 1 / stretch]) @ rot.T, fill) for p, fill in _shape(name)]
    lo, hi = polys[0][0].min(0), polys[0][0].max(0)
    bw, bh = hi - lo
    # Scale so the bbox area matches the target, without exceeding ~90% of the image.
    scale = min(side / math.sqrt(bw * bh), 0.9 * img_w / bw, 0.9 * img_h / bh)
    w, h = int(math.ceil(bw * scale)) + 3, int(math.ceil(bh * scale)) + 3
    # Supersample and box-filter down: anti-aliased edges, with sub-pixel placement.
    ss = 4 if max(w, h) < 64 else 2
    off = np.array([w, h]) / 2 + rng.uniform(-0.5, 0.5, 2)
    mask = Image.new("L", (w * ss, h * ss), 0)
    draw = ImageDraw.Draw(mask)
    for p, fill in polys:
        draw.polygon([tuple(q) for q in (p * scale + off) * ss], fill=fill)
    mask = mask.resize((w, h), Image.BOX)
    alpha = np.asarray(mask, np.float32) / 255
    c1, c2 = _object_colours(rng, style)
    rgb = _texture(rng, _pick_texture(rng, style), w, h, c1, c2)
    if rng.random() < 0.35:  # an outline, dark or light, one pixel inside the edge
        band = alpha - np.asarray(mask.filter(ImageFilter.MinFilter(3)), np.float32) / 255
        edge = c1 * rng.uniform(0.1, 0.4) if rng.random() < 0.7 else np.full(3, 235, np.float32)
        rgb = rgb + (edge - rgb) * band[..., None]
    return _Sprite(rgb, alpha)


def _degrade_sprite(rng: np.random.Generator, sprite: _Sprite, bg_mean: np.ndarray) -> _Sprite:
    """Make small objects hard: sometimes washed out towards the background, sometimes blurred."""
    rgb, alpha = sprite.rgb, sprite.alpha
    small = alpha.shape[0] * alpha.shape[1] < 34 * 34
    if small and rng.random() < 0.25:
        rgb = rgb + (bg_mean - rgb) * rng.uniform(0.25, 0.5)
    if rng.random() < (0.3 if small else 0.08):
        radius = rng.uniform(0.5, 1.2)
        rgba = np.dstack([rgb, alpha * 255]).clip(0, 255).astype(np.uint8)
        rgba = np.asarray(Image.fromarray(rgba, "RGBA").filter(ImageFilter.GaussianBlur(radius)), np.float32)
        rgb, alpha = rgba[..., :3], rgba[..., 3] / 255
    return _Sprite(rgb, alpha)


# ----------------------------------------------------------------------------- background


def _irregular_polygon(rng: np.random.Generator, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """A random blob polygon: uneven radii at jittered angles, so it matches no class.

    Angles are spread round the centre (not clustered) so blobs don't look like triangles.
    """
    n = int(rng.integers(6, 12))
    step = 2 * np.pi / n
    t = rng.uniform(0, 2 * np.pi) + np.arange(n) * step + rng.uniform(-0.35, 0.35, n) * step
    rr = r * rng.uniform(0.35, 1.0, n)
    return [(cx + a * math.cos(b), cy + a * math.sin(b)) for a, b in zip(rr, t)]


def _rgba(rng: np.random.Generator, sat_max: float, alpha: tuple[int, int] = (120, 256)) -> tuple[int, ...]:
    """A random colour with random opacity, as PIL wants it."""
    return (*_random_colour(rng, sat_max).astype(int).tolist(), int(rng.integers(*alpha)))


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A varied, cluttered (h, w, 3) float32 background with nothing class-shaped in it."""
    # The smooth base (gradient, colour noise, horizon) is built at 1/4 size and upsampled:
    # it has no fine detail to lose, and this is the most expensive step otherwise.
    lw, lh = -(-w // 4), -(-h // 4)
    yy, xx = np.mgrid[0:lh, 0:lw].astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    t = xx * math.cos(theta) + yy * math.sin(theta)
    t = (t - t.min()) / max(1.0, np.ptp(t))
    ca, cb = _random_colour(rng, 0.6), _random_colour(rng, 0.6)
    base = ca + (cb - ca) * t[..., None]
    noise = _lowfreq(rng, lw, lh, int(rng.integers(2, 9)), 3) * 255
    base = base + (noise - base) * rng.uniform(0.2, 0.7)
    if rng.random() < 0.35:  # a "horizon": a second region with its own tone, like floor vs wall
        y0 = rng.uniform(0.3, 0.8) * lh + (xx - lw / 2) * rng.uniform(-0.3, 0.3)
        below = (yy > y0)[..., None]
        base = np.where(below, base * rng.uniform(0.5, 1.1) + _random_colour(rng, 0.5) * 0.3, base)
    img = Image.fromarray(base.clip(0, 255).astype(np.uint8), "RGB").resize((w, h), Image.BILINEAR)
    if rng.random() < 0.5:  # fine grain, like fabric or foliage
        grain = (_lowfreq(rng, w, h, int(rng.integers(20, 60))) - 0.5) * rng.uniform(10, 45)
        img = Image.fromarray((np.asarray(img, np.float32) + grain).clip(0, 255).astype(np.uint8), "RGB")

    draw = ImageDraw.Draw(img, "RGBA")  # RGBA mode: translucent fills blend onto the image
    s = max(w, h)
    for _ in range(int(rng.integers(0, 2))):  # textured patches with blob outlines
        _textured_patch(rng, img, w, h)
    for _ in range(int(rng.integers(0, 4))):  # distractor blobs of all sizes, small ones too
        r = s * math.exp(rng.uniform(math.log(0.01), math.log(0.2)))
        draw.polygon(_irregular_polygon(rng, rng.uniform(0, w), rng.uniform(0, h), r), fill=_rgba(rng, _CLUTTER_SAT))
    for _ in range(int(rng.integers(0, 3))):  # elongated ellipses (aspect >= 2.2: never a disc)
        a = s * rng.uniform(0.01, 0.15)
        b = a * rng.uniform(2.2, 5)
        rx, ry = (a, b) if rng.random() < 0.5 else (b, a)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=_rgba(rng, _CLUTTER_SAT))
    for _ in range(int(rng.integers(0, 3))):  # elongated bars (never a square)
        a = s * rng.uniform(0.005, 0.04)
        b = a * rng.uniform(3, 10)
        cx, cy, th = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, np.pi)
        c, sn = math.cos(th), math.sin(th)
        pts = [(cx + dx * b * c - dy * a * sn, cy + dx * b * sn + dy * a * c) for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
        draw.polygon(pts, fill=_rgba(rng, _CLUTTER_SAT))
    for _ in range(int(rng.integers(1, 8))):  # lines, like edges, cables and branches
        pts = [(rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h) for _ in range(2)]
        draw.line(pts, fill=_rgba(rng, _CLUTTER_SAT), width=int(rng.integers(1, 5)))
    for _ in range(int(rng.integers(0, 3))):  # open arcs (less than 3/4 of a circle: never a ring)
        r = s * rng.uniform(0.02, 0.25)
        cx, cy, a0 = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, 360)
        draw.arc([cx - r, cy - r, cx + r, cy + r], a0, a0 + rng.uniform(40, 260), fill=_rgba(rng, _CLUTTER_SAT), width=int(rng.integers(1, 4)))
    return np.asarray(img, np.float32)


def _textured_patch(rng: np.random.Generator, img: Image.Image, w: int, h: int) -> None:
    """Paste an irregular blob filled with a random texture (not class-shaped) into `img`."""
    r = max(w, h) * rng.uniform(0.05, 0.3)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    x0, y0 = int(max(0, cx - r)), int(max(0, cy - r))
    x1, y1 = int(min(w, cx + r)) + 1, int(min(h, cy + r)) + 1
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(mask).polygon(_irregular_polygon(rng, cx - x0, cy - y0, r), fill=int(rng.integers(120, 256)))
    tex = _texture(rng, str(rng.choice(_TEXTURES[1:])), x1 - x0, y1 - y0, _random_colour(rng, 0.7), _random_colour(rng, 0.7))
    img.paste(Image.fromarray(tex.clip(0, 255).astype(np.uint8), "RGB"), (x0, y0), mask)


# ----------------------------------------------------------------------------- scene


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
        sprite = _render_sprite(rng, SYNTH_CLASSES[cls], _sample_side(rng, 0.85 * min(w, h)), w, h)
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
        sprite = _degrade_sprite(rng, sprite, region.reshape(-1, 3).mean(0))
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
        draw.line(pts, fill=_rgba(rng, 0.6), width=int(rng.integers(1, 3)))
    return np.asarray(pil, np.float32)


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """A fixed field of unit Gaussian noise (same in every process: it has its own seed)."""
    return np.random.default_rng(0x5EED).standard_normal((640, 640, 3), dtype=np.float32)


def _sensor_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Unit Gaussian noise of shape (h, w, 3): a random crop of the bank, maybe flipped.

    Cropping is several times cheaper than drawing fresh normals for every pixel, and
    per-pixel noise needs no more variety than random offsets and flips give it.
    """
    bank = _noise_bank()
    y, x = (int(v) for v in rng.integers(0, bank.shape[0] - max(h, w) + 1, 2))
    crop = bank[y:y + h, x:x + w]
    return crop[::-1] if rng.random() < 0.5 else crop


def _degrade_image(rng: np.random.Generator, img: np.ndarray) -> Image.Image:
    """Camera-like degradations: exposure/contrast, colour cast, sensor noise, blur, JPEG."""
    # Contrast, brightness and white balance are one affine map per channel, applied as a
    # lookup table (numpy is slow at per-channel broadcasting over a trailing axis of 3).
    mean = float(img.mean())
    contrast, brightness = rng.uniform(0.75, 1.2), rng.uniform(-20, 20)
    gain = contrast * rng.uniform(0.92, 1.08, 3)  # white-balance error
    offset = (mean * (1 - contrast) + brightness) * gain / contrast
    lut = (np.arange(256)[None] * gain[:, None] + offset[:, None]).round().clip(0, 255).astype(int)
    out = Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB").point(lut.ravel().tolist())
    r = rng.random()
    sigma = rng.uniform(0, 4) if r < 0.5 else rng.uniform(4, 9) if r < 0.85 else rng.uniform(9, 14)
    img = np.asarray(out, np.float32) + _sensor_noise(rng, *img.shape[:2]) * np.float32(sigma)
    out = Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.25:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    if rng.random() < 0.15:  # an earlier, harsher compression (re-shared photos)
        buf = io.BytesIO()
        out.save(buf, "JPEG", quality=int(rng.integers(20, 60)))
        out = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return out


def _make_image(task: tuple[str, str, int, int]) -> tuple[str, int, int, list[tuple[int, list[float]]]]:
    """Render and write image `index` of `split`; return (file name, width, height, boxes).

    Runs in worker processes: everything random comes from a generator seeded by
    (seed, split, index), so the result does not depend on which process draws it or when.
    """
    image_dir, split, index, seed = task
    rng = np.random.default_rng([seed, _SPLITS[split], index])
    w, h = (int(v) for v in rng.integers(_IMG_SIZE_RANGE[0], _IMG_SIZE_RANGE[1] + 1, 2))
    img = _background(rng, w, h)
    boxes = _place_objects(rng, img)
    img = _foreground_clutter(rng, img)
    out = _degrade_image(rng, img)
    name = f"{index:012d}.jpg"
    out.save(Path(image_dir) / name, "JPEG", quality=_JPEG_QUALITY)
    return name, w, h, boxes


# ----------------------------------------------------------------------------- writing


def _coco_json(split: str, seed: int, results: list[tuple[str, int, int, list]]) -> str:
    """The COCO instances file for one split (no timestamps: output is reproducible)."""
    images, annotations = [], []
    for image_id, (name, w, h, boxes) in enumerate(results, start=1):
        images.append({"id": image_id, "file_name": name, "width": w, "height": h, "license": 1})
        for cat, (x, y, bw, bh) in boxes:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0, "segmentation": [],
            })
    data = {
        "info": {"description": f"lpdet synthetic COCO-style dataset ({split}, seed {seed})",
                 "version": "1.0", "contributor": "lpdet", "url": ""},
        "licenses": [{"id": 1, "name": "CC0-1.0 (synthetic images generated by lpdet)", "url": ""}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SYNTH_CLASSES)],
    }
    return json.dumps(data, separators=(",", ":")) + "\n"


def _check_count(name: str, value: object, minimum: int) -> int:
    """`value` as an int >= `minimum`, or an LpdetError naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise LpdetError(f"synthetic data: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _default_workers(n_images: int) -> int:
    """Worker processes: one per available core, none for tiny jobs (process start-up dominates)."""
    if n_images < 64:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _pool_context() -> multiprocessing.context.BaseContext:
    """"fork" where available: unlike "spawn" it does not re-import the caller's main script,
    so calling the generator from a script without an ``if __name__ == "__main__"`` guard
    works (the workers only use numpy and PIL, as torch's own DataLoader workers do)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def generate_synthetic_coco(
    out_dir: Path, n_train: int, n_val: int, seed: int = 0, progress: bool = True, *, workers: int | None = None
) -> Path:
    """Write a COCO-format detection dataset; return the path of its dataset YAML.

    Layout: ``images/{train,val}/NNNNNNNNNNNN.jpg``, ``annotations/instances_{train,val}.json``
    and ``data.yaml``. The annotation files and the YAML are written last (atomically), and
    stale ones are removed first, so an interrupted run never leaves a dataset that looks
    complete. `workers` defaults to one process per core; the output does not depend on it.
    """
    n_train = _check_count("--train (n_train)", n_train, 0)
    n_val = _check_count("--val (n_val)", n_val, 1)
    seed = _check_count("--seed", seed, 0)
    if workers is not None:
        workers = _check_count("workers", workers, 1)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise LpdetError(f"{out_dir}: exists and is not a directory; choose another output directory")
    yaml_path = out_dir / "data.yaml"
    ann_paths = {s: out_dir / "annotations" / f"instances_{s}.json" for s in _SPLITS}
    for stale in (yaml_path, *ann_paths.values()):
        stale.unlink(missing_ok=True)
    counts = {"train": n_train, "val": n_val}
    tasks = []
    for split, n in counts.items():
        image_dir = out_dir / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        tasks += [(str(image_dir), split, i, seed) for i in range(1, n + 1)]

    from lpdet.progress import progress_bar

    workers = workers or _default_workers(len(tasks))
    bar = progress_bar(total=len(tasks), enabled=progress, desc="synth", unit="img")
    results = []
    try:
        if workers == 1:
            for t in tasks:
                results.append(_make_image(t))
                bar.update()
        else:
            with _pool_context().Pool(workers) as pool:
                for r in pool.imap(_make_image, tasks, chunksize=8):  # imap keeps task order
                    results.append(r)
                    bar.update()
    finally:
        bar.close()

    for split in _SPLITS:
        split_results = [r for t, r in zip(tasks, results) if t[1] == split]
        atomic_write_text(ann_paths[split], _coco_json(split, seed, split_results))
    spec = {"name": "synth"} | {
        s: {"annotations": f"annotations/instances_{s}.json", "images": f"images/{s}"} for s in _SPLITS
    }
    atomic_write_text(yaml_path, yaml.safe_dump(spec, sort_keys=False))
    return yaml_path
