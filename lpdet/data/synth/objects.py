"""Objects: each class's outline, rendered as an anti-aliased, textured sprite of a sampled size."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from lpdet.data.synth.style import STYLES, draw_texture, object_colours, pick_texture

# Bucket weights are a little above the target 40/35/25 for large objects because large
# objects are the ones most often rejected by the occlusion check or cut by the border.
_BUCKETS = (  # (probability, smallest side, largest side) of sqrt(bbox area) in pixels
    (0.385, 14.0, 31.5),
    (0.345, 32.5, 95.5),
    (0.270, 96.5, 230.0),
)



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



@dataclass
class Sprite:
    """A rendered object: colour (h, w, 3) and alpha (h, w) in [0, 1]."""

    rgb: np.ndarray
    alpha: np.ndarray


def sample_side(rng: np.random.Generator, max_side: float) -> float:
    """sqrt(bbox area) in pixels, from the COCO-bucket mixture."""
    probs = [b[0] for b in _BUCKETS]
    _, lo, hi = _BUCKETS[int(rng.choice(len(_BUCKETS), p=probs))]
    hi = min(hi, max_side)
    return float(rng.uniform(min(lo, hi), hi))


def render_sprite(rng: np.random.Generator, name: str, side: float, img_w: int, img_h: int) -> Sprite:
    """Draw one object of class `name` whose bbox area is about `side`²."""
    style = STYLES[name]
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
    c1, c2 = object_colours(rng, style)
    rgb = draw_texture(rng, pick_texture(rng, style), w, h, c1, c2)
    if rng.random() < 0.35:  # an outline, dark or light, one pixel inside the edge
        band = alpha - np.asarray(mask.filter(ImageFilter.MinFilter(3)), np.float32) / 255
        edge = c1 * rng.uniform(0.1, 0.4) if rng.random() < 0.7 else np.full(3, 235, np.float32)
        rgb = rgb + (edge - rgb) * band[..., None]
    return Sprite(rgb, alpha)


def degrade_sprite(rng: np.random.Generator, sprite: Sprite, bg_mean: np.ndarray) -> Sprite:
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
    return Sprite(rgb, alpha)
