"""One synthetic classification image: the detection generator's background, one object of the
image's class (same outlines, colours, textures and degradations as `scene`), the same camera."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lpdet.data.synth.background import draw_background
from lpdet.data.synth.camera import degrade_image
from lpdet.data.synth.objects import degrade_sprite, render_sprite
from lpdet.data.synth.scene import SPLITS
from lpdet.data.synth.style import SYNTH_CLASSES

CLASS_IMAGE_SIZE = 128  # square: classifiers train at 32-128 pixels; larger would only be resized down
_JPEG_QUALITY = 90
_SIDE_RANGE = (0.3, 0.75)  # the object's sqrt(bbox area) as a fraction of the image side
_STREAM = 7  # a third seed component, so no image shares its random stream with a detection image


def class_of(index: int) -> int:
    """The class of image `index` (1-based): round robin, so every class has the same count."""
    return (index - 1) % len(SYNTH_CLASSES)


def make_class_image(task: tuple[str, str, int, int]) -> str:
    """Render and write image `index` of `split` into ``image_dir/CLASS/``; return its relative path.

    Everything random comes from a generator seeded by (seed, split, index): the output does
    not depend on the worker process or the order."""
    image_dir, split, index, seed = task
    rng = np.random.default_rng([seed, SPLITS[split], index, _STREAM])
    size = CLASS_IMAGE_SIZE
    img = draw_background(rng, size, size)
    name = SYNTH_CLASSES[class_of(index)]
    sprite = render_sprite(rng, name, rng.uniform(*_SIDE_RANGE) * size, size, size)
    sh, sw = sprite.alpha.shape
    ox, oy = int(rng.integers(0, size - sw + 1)), int(rng.integers(0, size - sh + 1))
    region = img[oy:oy + sh, ox:ox + sw]
    sprite = degrade_sprite(rng, sprite, region.reshape(-1, 3).mean(0))
    region += (sprite.rgb - region) * sprite.alpha[..., None]
    relative = Path(name) / f"{index:08d}.jpg"
    (Path(image_dir) / name).mkdir(parents=True, exist_ok=True)
    degrade_image(rng, img).save(Path(image_dir) / relative, "JPEG", quality=_JPEG_QUALITY)
    return str(relative)
