"""Classification data: the ImageFolder layout behind a dataset YAML, and ``synth-cls``.

Dataset YAML (paths relative to the YAML's folder)::

    task: classification
    name: mydata        # optional
    train: train        # optional (evaluation-only datasets have just val:); holds train/CLASS/*.jpg
    val: val            # val/CLASS/*.jpg, the same class folders as train

Class names are the train folder's sub-folder names, sorted (label ``i`` is ``class_names[i]``).
``synth-cls`` is generated on first use (`lpdet.data.synth.generate_synthetic_classification`:
one object of the synthetic detection classes per image) and cached like ``synth``.
Augmentation reuses the detection pipeline with no boxes (`lpdet.data.transforms`), seeded per
(seed, epoch, index) as `CocoDetection` is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from lpdet.data.coco import item_seed, seeded_call
from lpdet.data.images import load_rgb_image
from lpdet.data.spec import cached_dataset_yaml
from lpdet.errors import LpdetError
from lpdet.serialize import load_mapping

log = logging.getLogger("lpdet.data")

SYNTH_CLS = "synth-cls"
SYNTH_CLS_VERSION = "v1"  # bump when the generator's output changes
SYNTH_CLS_TRAIN, SYNTH_CLS_VAL, SYNTH_CLS_SEED = 5000, 1000, 0
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_KEYS = ("task", "name", "train", "val")
_HELP = "write e.g. 'task: classification', 'train: train', 'val: val' (folders of CLASS/ sub-folders)"


@dataclass
class ClassificationSpec:
    name: str
    val: Path
    train: Path | None = None


def is_classification_data(data: str) -> bool:
    """Whether `--data` names a classification dataset: ``synth-cls`` or a YAML with ``task: classification``."""
    if str(data) == SYNTH_CLS:
        return True
    path = Path(data).expanduser()
    path = path / "data.yaml" if path.is_dir() else path
    if not path.is_file():
        return False
    try:
        return load_mapping(path).get("task") == "classification"
    except LpdetError:
        return False


def resolve_classification_data(data: str, *, cache_dir: Path | None = None, synth_train: int = SYNTH_CLS_TRAIN,
                                synth_val: int = SYNTH_CLS_VAL, synth_seed: int = SYNTH_CLS_SEED) -> ClassificationSpec:
    """``--data`` -> `ClassificationSpec`: ``synth-cls`` (generated/cached) or a dataset YAML (or its folder)."""
    if str(data) == SYNTH_CLS:
        def generate(tmp: Path) -> Path:
            from lpdet.data.synth import generate_synthetic_classification  # lazy: heavy

            return generate_synthetic_classification(tmp, synth_train, synth_val, synth_seed, progress=True)

        name = f"synth-cls-{SYNTH_CLS_VERSION}-train{synth_train}-val{synth_val}-seed{synth_seed}"
        spec = load_classification_yaml(cached_dataset_yaml(cache_dir, name, generate))
        spec.name = SYNTH_CLS
        return spec
    path = Path(data).expanduser()
    path = path / "data.yaml" if path.is_dir() else path
    if not path.is_file():
        raise LpdetError(f"--data {data}: no such file; pass a classification dataset YAML or '{SYNTH_CLS}'")
    return load_classification_yaml(path)


def load_classification_yaml(path: Path) -> ClassificationSpec:
    """Read and check a classification dataset YAML; its folders exist."""
    path = Path(path).expanduser()
    data = load_mapping(path)
    if data.get("task") != "classification":
        raise LpdetError(f"{path}: not a classification dataset (no 'task: classification'); {_HELP}")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise LpdetError(f"{path}: unknown key(s) {unknown}; {_HELP}")
    if "val" not in data:
        raise LpdetError(f"{path}: 'val' is missing; {_HELP}")
    folders = {}
    for key in ("train", "val"):
        if key not in data:
            continue
        if not isinstance(data[key], str) or not data[key]:
            raise LpdetError(f"{path}: '{key}' must be a folder path, got {data[key]!r}; {_HELP}")
        folder = Path(data[key]).expanduser()
        folder = folder if folder.is_absolute() else path.parent / folder
        if not folder.is_dir():
            raise LpdetError(f"{path}: '{key}' folder {folder} not found; fix the path (relative paths are "
                             f"relative to {path.parent})")
        folders[key] = folder
    return ClassificationSpec(name=str(data.get("name") or path.stem), val=folders["val"], train=folders.get("train"))


def scan_image_folder(root: Path, class_names: list[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, (image path, label) items) of ``root/CLASS/*``. With `class_names` (the train
    split's), `root` must hold exactly those classes. Every class needs at least one image."""
    found = sorted(p.name for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise LpdetError(f"{root}: no class folders; put each class's images in {root}/CLASS_NAME/")
    if class_names is not None and found != list(class_names):
        missing, extra = sorted(set(class_names) - set(found)), sorted(set(found) - set(class_names))
        raise LpdetError(f"{root}: its class folders differ from the train split's (missing {missing}, extra "
                         f"{extra}); both splits need the same class folders")
    items = []
    for label, name in enumerate(found):
        images = sorted(p for p in (Path(root) / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise LpdetError(f"{root / name}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                             f"add images or remove the folder")
        items += [(p, label) for p in images]
    return found, items


class ImageFolderDataset(torch.utils.data.Dataset):
    """``root/CLASS/*`` images as ``(image float [3, R, R] in [0, 1], label)``; ``None`` for an
    unreadable image (logged, counted in `skipped`, dropped by the loader's collate)."""

    def __init__(self, root: Path, transform, class_names: list[str] | None = None, seed: int = 0):
        self.root = Path(root)
        self.class_names, self.items = scan_image_folder(self.root, class_names)
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.skipped = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def category_ids(self) -> list[int]:
        """The labels ``0..K-1`` (what a checkpoint records where a detector records COCO category ids)."""
        return list(range(self.num_classes))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[int(i)]
        try:
            img = load_rgb_image(path)
        except Exception as e:  # PIL raises many types for corrupt/truncated data
            log.warning("%s: skipped (cannot read image: %s)", path, (str(e).splitlines() or [type(e).__name__])[0])
            self.skipped += 1
            return None
        no_boxes, no_labels = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
        image, _, _ = seeded_call(item_seed(self.seed, self.epoch, int(i)), self.transform, img, no_boxes, no_labels)
        return image, label
