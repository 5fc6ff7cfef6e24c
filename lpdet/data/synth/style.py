"""How the synthetic classes look: names, hue families, textures and random colours."""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

SYNTH_CLASSES: tuple[str, ...] = (
    "disc", "square", "triangle", "star", "cross",
    "ring", "hexagon", "crescent", "heart", "arrow",
)

TEXTURES = ("solid", "stripes", "checker", "dots", "gradient", "noise")


@dataclass(frozen=True)
class ClassStyle:
    """How one class looks: hue family (degrees), preferred texture, rotation range."""

    hue: float
    texture: str
    max_rotation: float  # degrees either side; 0 for shapes that look the same rotated


# Hue centres are ~36 degrees apart and jittered by up to +-12 (plus an occasional random
# hue), so neighbouring classes overlap in colour and shape stays necessary.
STYLES: dict[str, ClassStyle] = {
    "disc": ClassStyle(0, "solid", 0),
    "heart": ClassStyle(340, "noise", 25),
    "star": ClassStyle(28, "solid", 180),
    "triangle": ClassStyle(55, "gradient", 30),
    "arrow": ClassStyle(95, "stripes", 45),
    "cross": ClassStyle(135, "stripes", 45),
    "hexagon": ClassStyle(180, "dots", 30),
    "square": ClassStyle(220, "checker", 45),
    "ring": ClassStyle(265, "solid", 0),
    "crescent": ClassStyle(305, "gradient", 45),
}
_HUE_JITTER = 12.0
_RANDOM_HUE_P = 0.04
_PREFERRED_TEXTURE_P = 0.8


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    """HSV (hue in degrees, s and v in [0, 1]) to an RGB float32 triple in [0, 255]."""
    return np.array(colorsys.hsv_to_rgb((h_deg % 360) / 360, s, v), np.float32) * 255


def random_colour(rng: np.random.Generator, sat_max: float = 1.0) -> np.ndarray:
    """Any colour, saturation capped by `sat_max` (backgrounds are mostly duller)."""
    return _hsv(rng.uniform(0, 360), rng.uniform(0, sat_max), rng.uniform(0.15, 1.0))


def object_colours(rng: np.random.Generator, style: ClassStyle) -> tuple[np.ndarray, np.ndarray]:
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


def lowfreq_noise(rng: np.random.Generator, w: int, h: int, cells: int, channels: int = 1) -> np.ndarray:
    """Smooth noise in [0, 1] of shape (h, w, channels): a small random grid upsampled."""
    gw, gh = max(2, round(cells * w / max(w, h))), max(2, round(cells * h / max(w, h)))
    grid = (rng.random((gh, gw, channels)) * 255).astype(np.uint8)
    mode = "L" if channels == 1 else "RGB"
    img = Image.fromarray(grid[..., 0] if channels == 1 else grid, mode).resize((w, h), Image.BICUBIC)
    return (np.asarray(img, np.float32) / 255).reshape(h, w, channels)


def draw_texture(rng: np.random.Generator, kind: str, w: int, h: int, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
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
        m = lowfreq_noise(rng, w, h, int(rng.integers(3, 8)))[..., 0]
    if kind in ("stripes", "checker", "dots"):
        m = m * rng.uniform(0.45, 0.75)  # keep the class colour dominant
    return c1 + (c2 - c1) * m[..., None]


def pick_texture(rng: np.random.Generator, style: ClassStyle) -> str:
    """The class's preferred texture most of the time, any texture otherwise."""
    return style.texture if rng.random() < _PREFERRED_TEXTURE_P else str(rng.choice(TEXTURES))


def random_rgba(rng: np.random.Generator, sat_max: float, alpha: tuple[int, int] = (120, 256)) -> tuple[int, ...]:
    """A random colour with random opacity, as PIL wants it."""
    return (*random_colour(rng, sat_max).astype(int).tolist(), int(rng.integers(*alpha)))
