"""Image files as the detector sees them: 8-bit RGB, EXIF orientation applied."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import PIL.Image
from PIL import ImageOps

__all__ = ["load_rgb_image"]

log = logging.getLogger("lpdet.data")


def _to_8bit_gray(img: PIL.Image.Image) -> PIL.Image.Image:
    """Mode I;16*/I/F (16-/32-bit or float grayscale) -> L, scaling the range to 0..255."""
    a = np.asarray(img)
    if img.mode.startswith("I;16"):
        a = a.astype(np.float32) / 257.0
    elif img.mode == "I":
        a = a.astype(np.float32)
        if a.size and a.max() > 255:  # 16-bit data stored as 32-bit (older Pillow PNG reads)
            a = a / 257.0
    else:  # "F"
        a = a.astype(np.float32)
        if a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0
    a = np.nan_to_num(a, nan=0.0)
    return PIL.Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), mode="L")


def load_rgb_image(path: Path) -> PIL.Image.Image:
    """Open an image as 8-bit RGB, EXIF orientation applied. Raises on missing/corrupt files.

    COCO annotations refer to the image as displayed, i.e. after the EXIF orientation.
    """
    with PIL.Image.open(path) as f:
        f.load()  # decodes everything now: a truncated or corrupt file raises here
        img = f
        try:
            img = ImageOps.exif_transpose(f) or f
        except Exception as e:  # a malformed EXIF block: keep the pixels as stored
            log.debug("%s: ignoring unreadable EXIF (%s)", path, e)
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            img = _to_8bit_gray(img)
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")  # what PIL asks for; the alpha is then dropped
        if img.mode != "RGB":
            img = img.convert("RGB")
        if img is f:
            img = f.copy()  # detach from the file handle closed by `with`
    return img
