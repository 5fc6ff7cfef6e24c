"""Cluttered backgrounds: gradients, colour noise, patches, blobs, lines and arcs, none class-shaped."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from lpdet.data.synth.style import TEXTURES, draw_texture, lowfreq_noise, random_colour, random_rgba

_CLUTTER_SAT = 0.6                # background clutter is duller than objects (saturation 0.55-1)


def _irregular_polygon(rng: np.random.Generator, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """A random blob polygon: uneven radii at jittered angles, so it matches no class.

    Angles are spread round the centre (not clustered) so blobs don't look like triangles.
    """
    n = int(rng.integers(6, 12))
    step = 2 * np.pi / n
    t = rng.uniform(0, 2 * np.pi) + np.arange(n) * step + rng.uniform(-0.35, 0.35, n) * step
    rr = r * rng.uniform(0.35, 1.0, n)
    return [(cx + a * math.cos(b), cy + a * math.sin(b)) for a, b in zip(rr, t)]


def draw_background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A varied, cluttered (h, w, 3) float32 background with nothing class-shaped in it."""
    # The smooth base (gradient, colour noise, horizon) is built at 1/4 size and upsampled:
    # it has no fine detail to lose, and this is the most expensive step otherwise.
    lw, lh = -(-w // 4), -(-h // 4)
    yy, xx = np.mgrid[0:lh, 0:lw].astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    t = xx * math.cos(theta) + yy * math.sin(theta)
    t = (t - t.min()) / max(1.0, np.ptp(t))
    ca, cb = random_colour(rng, 0.6), random_colour(rng, 0.6)
    base = ca + (cb - ca) * t[..., None]
    noise = lowfreq_noise(rng, lw, lh, int(rng.integers(2, 9)), 3) * 255
    base = base + (noise - base) * rng.uniform(0.2, 0.7)
    if rng.random() < 0.35:  # a "horizon": a second region with its own tone, like floor vs wall
        y0 = rng.uniform(0.3, 0.8) * lh + (xx - lw / 2) * rng.uniform(-0.3, 0.3)
        below = (yy > y0)[..., None]
        base = np.where(below, base * rng.uniform(0.5, 1.1) + random_colour(rng, 0.5) * 0.3, base)
    img = Image.fromarray(base.clip(0, 255).astype(np.uint8), "RGB").resize((w, h), Image.BILINEAR)
    if rng.random() < 0.5:  # fine grain, like fabric or foliage
        grain = (lowfreq_noise(rng, w, h, int(rng.integers(20, 60))) - 0.5) * rng.uniform(10, 45)
        img = Image.fromarray((np.asarray(img, np.float32) + grain).clip(0, 255).astype(np.uint8), "RGB")

    draw = ImageDraw.Draw(img, "RGBA")  # RGBA mode: translucent fills blend onto the image
    s = max(w, h)
    for _ in range(int(rng.integers(0, 2))):  # textured patches with blob outlines
        _textured_patch(rng, img, w, h)
    for _ in range(int(rng.integers(0, 4))):  # distractor blobs of all sizes, small ones too
        r = s * math.exp(rng.uniform(math.log(0.01), math.log(0.2)))
        draw.polygon(_irregular_polygon(rng, rng.uniform(0, w), rng.uniform(0, h), r), fill=random_rgba(rng, _CLUTTER_SAT))
    for _ in range(int(rng.integers(0, 3))):  # elongated ellipses (aspect >= 2.2: never a disc)
        a = s * rng.uniform(0.01, 0.15)
        b = a * rng.uniform(2.2, 5)
        rx, ry = (a, b) if rng.random() < 0.5 else (b, a)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=random_rgba(rng, _CLUTTER_SAT))
    for _ in range(int(rng.integers(0, 3))):  # elongated bars (never a square)
        a = s * rng.uniform(0.005, 0.04)
        b = a * rng.uniform(3, 10)
        cx, cy, th = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, np.pi)
        c, sn = math.cos(th), math.sin(th)
        pts = [(cx + dx * b * c - dy * a * sn, cy + dx * b * sn + dy * a * c) for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
        draw.polygon(pts, fill=random_rgba(rng, _CLUTTER_SAT))
    for _ in range(int(rng.integers(1, 8))):  # lines, like edges, cables and branches
        pts = [(rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h) for _ in range(2)]
        draw.line(pts, fill=random_rgba(rng, _CLUTTER_SAT), width=int(rng.integers(1, 5)))
    for _ in range(int(rng.integers(0, 3))):  # open arcs (less than 3/4 of a circle: never a ring)
        r = s * rng.uniform(0.02, 0.25)
        cx, cy, a0 = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, 360)
        draw.arc([cx - r, cy - r, cx + r, cy + r], a0, a0 + rng.uniform(40, 260), fill=random_rgba(rng, _CLUTTER_SAT), width=int(rng.integers(1, 4)))
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
    tex = draw_texture(rng, str(rng.choice(TEXTURES[1:])), x1 - x0, y1 - y0, random_colour(rng, 0.7), random_colour(rng, 0.7))
    img.paste(Image.fromarray(tex.clip(0, 255).astype(np.uint8), "RGB"), (x0, y0), mask)
