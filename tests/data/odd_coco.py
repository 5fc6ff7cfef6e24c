"""A small COCO dataset the project did not generate: the odd cases real datasets have.

`write_odd_coco(dir)` writes ``dir/instances.json`` and ``dir/images/`` with:

- gapped category ids 1, 3, 7, 90 (listed out of order) -> labels 1, 2, 3, 4;
- crowd annotations, images without annotations, varied image sizes;
- images in modes L, RGBA, CMYK (JPEG), P (PNG palette), I;16 (16-bit PNG);
- a JPEG stored 300 wide x 200 high with EXIF orientation 6, i.e. displayed 200 x 300, whose
  box refers to the displayed (corrected) image; a red square is drawn exactly inside it;
- with ``bad=True`` also: a degenerate box (w=0), a box without ``bbox``, a box partly outside
  (clipped, kept), a box fully outside (dropped), an unknown category, an unknown image id.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = [  # out of order on purpose
    {"id": 90, "name": "toothbrush"},
    {"id": 1, "name": "person"},
    {"id": 7, "name": "train"},
    {"id": 3, "name": "car"},
]
CATEGORY_IDS = [1, 3, 7, 90]
CLASS_NAMES = ["person", "car", "train", "toothbrush"]

# expected skip counts for bad=True (crowd annotations are present in both variants)
N_CROWD = 2
BAD_SKIPS = {"degenerate": 2, "outside": 1, "unknown category": 1, "unknown image": 1}

EXIF_IMAGE_ID = 6
EXIF_BOX_XYWH = [40.0, 180.0, 60.0, 80.0]  # in the displayed 200 x 300 (w x h) image


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _exif_image(path: Path) -> None:
    """Displayed: 200 wide x 300 high, grey with a red square in EXIF_BOX. Stored rotated."""
    disp = np.full((300, 200, 3), 128, np.uint8)
    x, y, w, h = (int(v) for v in EXIF_BOX_XYWH)
    disp[y:y + h, x:x + w] = (255, 0, 0)
    shown = Image.fromarray(disp)
    # orientation 6 = "rotate 90 CW to display"; exif_transpose applies ROTATE_270 to the
    # stored pixels, so store the displayed image rotated by 90 (counter-clockwise).
    stored = shown.transpose(Image.Transpose.ROTATE_90)
    assert stored.size == (300, 200)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, quality=95, exif=exif.tobytes())


def write_odd_coco(dir: Path, *, bad: bool = False) -> tuple[Path, Path]:
    dir = Path(dir)
    images_dir = dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)

    images = []

    def add(image_id: int, name: str, img: Image.Image, display_wh: tuple[int, int] | None = None, **save):
        img.save(images_dir / name, **save)
        w, h = display_wh or img.size
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})

    add(1, "rgb.jpg", Image.fromarray(_noise(240, 320, 1)), quality=90)
    add(2, "gray.png", Image.fromarray(_noise(100, 150, 2)).convert("L"))
    add(3, "rgba.png", Image.fromarray(_noise(120, 90, 3)).convert("RGBA"))
    add(4, "cmyk.jpg", Image.fromarray(_noise(80, 200, 4)).convert("CMYK"), quality=90)
    pal = Image.fromarray(_noise(64, 64, 5)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    add(5, "palette.png", pal)
    _exif_image(images_dir / "exif6.jpg")
    images.append({"id": EXIF_IMAGE_ID, "file_name": "exif6.jpg", "width": 200, "height": 300})
    sixteen = np.linspace(0, 65535, 50 * 70).astype(np.uint16).reshape(50, 70)
    add(7, "gray16.png", Image.fromarray(sixteen))
    add(8, "empty.jpg", Image.fromarray(_noise(90, 60, 8)), quality=90)  # no annotations
    add(9, "empty2.png", Image.fromarray(_noise(33, 47, 9)))  # no annotations either

    anns = []

    def ann(image_id, category_id, bbox, **extra):
        a = {"id": len(anns) + 1, "image_id": image_id, "category_id": category_id, "iscrowd": 0}
        if bbox is not None:
            a["bbox"] = bbox
            a["area"] = float(bbox[2] * bbox[3]) if all(isinstance(v, (int, float)) for v in bbox) else 0.0
        a.update(extra)
        anns.append(a)

    ann(1, 1, [10, 20, 100, 50])
    ann(1, 90, [150, 30, 60, 60])
    ann(1, 3, [0, 0, 320, 240], iscrowd=1)  # crowd
    ann(2, 7, [5, 5, 40, 30])
    ann(3, 3, [10, 10, 50, 60])
    ann(3, 1, [20, 30, 40, 40], iscrowd=1)  # crowd
    ann(4, 90, [100, 10, 80, 60])
    ann(5, 1, [1, 1, 30, 30])
    ann(EXIF_IMAGE_ID, 7, list(EXIF_BOX_XYWH))
    ann(7, 3, [10, 10, 20, 20])
    if bad:
        ann(1, 1, [10, 10, 0, 20])  # degenerate: w = 0
        ann(2, 1, None)  # degenerate: no bbox
        ann(2, 3, [140, 90, 30, 30])  # partly outside 150 x 100: clipped to [140, 90, 150, 100]
        ann(2, 3, [200, 10, 20, 20])  # fully outside: dropped
        ann(3, 5, [5, 5, 10, 10])  # unknown category 5
        ann(999, 1, [5, 5, 10, 10])  # unknown image 999

    data = {"info": {"description": "odd"}, "images": images, "annotations": anns, "categories": CATEGORIES}
    path = dir / "instances.json"
    path.write_text(json.dumps(data))
    return path, images_dir
