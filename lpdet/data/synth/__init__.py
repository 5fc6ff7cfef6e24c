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

Modules, one job each: `style` (classes, colours, textures), `objects` (class outlines
rendered as sprites), `background` (clutter with nothing class-shaped in it), `camera`
(exposure, noise, blur, JPEG), `scene` (one image: background, placed objects, boxes), `single`
(one classification image: one object; `--data synth-cls`) and `writer` (all images, in worker
processes, and the COCO files / ImageFolder layout and dataset YAML).
"""

from lpdet.data.synth.style import SYNTH_CLASSES
from lpdet.data.synth.writer import generate_synthetic_classification, generate_synthetic_coco

__all__ = ["SYNTH_CLASSES", "generate_synthetic_classification", "generate_synthetic_coco"]
