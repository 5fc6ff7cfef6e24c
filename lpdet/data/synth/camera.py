"""Camera-like degradations of a finished scene: exposure, colour cast, sensor noise, blur, JPEG."""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter


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


def degrade_image(rng: np.random.Generator, img: np.ndarray) -> Image.Image:
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
