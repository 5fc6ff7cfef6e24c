"""`CocoDetection`: a COCO annotation file + image folder as a detection dataset.

- Labels: ``1..K`` are the categories sorted by COCO id (``category_ids[label - 1]``); 0 is
  background and never appears in targets.
- Items: ``(image float32 [3, H, W] in [0, 1] RGB, target)`` with ``target = dict(boxes=float32
  [N, 4] xyxy pixels of the returned image, labels=int64 [N], image_id=int, orig_size=(h, w))``;
  ``None`` (with a warning) when the image file is missing, corrupt or truncated.
- The file is read and validated once, in one pass over the annotations. Annotations that cannot
  be trained on are dropped from the targets and counted in `skipped` (one summary warning);
  `coco` is the untouched ground truth for evaluation (see `CocoDetection.__init__`).
- Augmentation randomness is a function of (seed, epoch, index) only, so results do not depend
  on the number of DataLoader workers or on where a run was resumed.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from lpdet.data.images import load_rgb_image
from lpdet.errors import LpdetError
from lpdet.serialize import is_number

__all__ = ["CocoDetection", "item_seed", "seeded_call", "clip_to_image", "DEGENERATE", "OUTSIDE", "UNKNOWN_CATEGORY"]

log = logging.getLogger("lpdet.data")

# Skip reasons (keys of `CocoDetection.skipped`).
CROWD = "crowd"
DEGENERATE = "degenerate"
OUTSIDE = "outside"
UNKNOWN_CATEGORY = "unknown category"
UNKNOWN_IMAGE = "unknown image"


def seeded_call(seed: int, fn, *args):
    """``fn(*args)`` with the torch, Python and numpy RNGs seeded by `seed`, restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        py_state, np_state = random.getstate(), np.random.get_state()
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed & 0xFFFFFFFF)
        try:
            return fn(*args)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A stable 63-bit seed for one (seed, epoch, index); independent of PYTHONHASHSEED."""
    digest = hashlib.blake2b(f"lpdet:{int(seed)}:{int(epoch)}:{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class _AnnotationScan:
    """What the pass over the annotations found besides the training targets and the skips."""

    unusable: list[int] = field(default_factory=list)  # indexes without a usable bbox: left out of evaluation
    filled: int = 0  # usable annotations lacking 'area'/'iscrowd' (evaluation fills in the defaults)
    duplicates: dict[int, int | str] = field(default_factory=dict)  # index -> an annotation id seen before it


def _has_usable_bbox(a: dict) -> bool:
    bbox = a.get("bbox")
    return isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(is_number(v) for v in bbox)


def _training_target(a: dict, ok_box: bool, cat_to_label: dict[int, int], index_of: dict[int, int],
                     sizes: dict[int, tuple[float, float] | None]) -> tuple[int, tuple, int] | str:
    """(image index, xyxy box clipped to the image, label) of annotation `a`, or why it is skipped."""
    if a.get("iscrowd", 0):
        return CROWD
    label = cat_to_label.get(a["category_id"]) if _is_int(a["category_id"]) else None
    if label is None:
        return UNKNOWN_CATEGORY
    idx = index_of.get(a["image_id"]) if _is_int(a["image_id"]) else None
    if idx is None:
        return UNKNOWN_IMAGE
    if not ok_box:
        return DEGENERATE
    box = clip_to_image(*(float(v) for v in a["bbox"]), sizes[a["image_id"]])
    return box if isinstance(box, str) else (idx, box, label)


def clip_to_image(x: float, y: float, w: float, h: float, size: tuple[float, float] | None) -> tuple | str:
    """COCO box ``x, y, w, h`` as ``xyxy`` clipped to image `size` ``(w, h)`` (not clipped when None),
    or why it cannot be trained on: `DEGENERATE` (no area) or `OUTSIDE` (no area left in the image).
    The one rule for boxes: the loader and the dataset converters (`lpdet.data.convert`) share it."""
    if w <= 0 or h <= 0:
        return DEGENERATE
    x1, y1, x2, y2 = x, y, x + w, y + h
    if size is not None:
        iw, ih = size
        if x1 < 0 or y1 < 0 or x2 > iw or y2 > ih:
            x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, iw), min(y2, ih)
            if x2 - x1 < 1e-3 or y2 - y1 < 1e-3:
                return OUTSIDE
    return x1, y1, x2, y2


class CocoDetection(Dataset):
    """A COCO-format detection dataset; see the module docstring for the item format.

    ``coco`` is a pycocotools `COCO` over the file's content as is (crowd, degenerate and
    unknown-category annotations included), so `COCOeval` on it gives the same numbers as
    pycocotools run on the file; the only additions are defaults pycocotools' evaluation needs
    and would otherwise crash without (``iscrowd=0``, ``area=w*h`` when absent), and annotations
    without a usable ``bbox`` are removed from it (pycocotools cannot evaluate them).
    """

    def __init__(self, annotations: Path, images: Path, transform: Callable | None = None, seed: int = 0):
        self.annotations = Path(annotations)
        self.images = Path(images)
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.skipped: collections.Counter = collections.Counter()

        if not self.images.is_dir():
            raise LpdetError(f"{self.images}: images folder not found (for {self.annotations}); fix the images path")
        data = self._read_json(self.annotations)
        self._parse(data)

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _read_json(path: Path) -> dict:
        if not path.is_file():
            raise LpdetError(f"{path}: annotation file not found; fix the annotations path")
        try:
            with open(path, "rb") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LpdetError(f"{path}: not valid JSON ({e}); fix or regenerate the annotation file") from None
        except OSError as e:
            raise LpdetError(f"{path}: cannot read the annotation file ({e.strerror or e}); check its permissions") from None
        if not isinstance(data, dict):
            raise LpdetError(f"{path}: expected a COCO JSON object at the top level, got {type(data).__name__}; "
                             "use a COCO detection file (images, annotations, categories)")
        missing = [k for k in ("images", "annotations", "categories") if k not in data]
        if missing:
            raise LpdetError(f"{path}: missing top-level key(s) {missing}; a COCO detection file needs "
                             "'images', 'annotations' and 'categories' (lists)")
        for k in ("images", "annotations", "categories"):
            if not isinstance(data[k], list):
                raise LpdetError(f"{path}: '{k}' must be a list, got {type(data[k]).__name__}; fix the file")
        return data

    def _bad(self, where: str, what: str) -> LpdetError:
        return LpdetError(f"{self.annotations}: {where}: {what}; fix the annotation file")

    def _parse(self, data: dict) -> None:
        """Validate and index `data` in named steps: categories, images, annotations (the
        training targets), the evaluation ground truth, and one summary of what was skipped."""
        cat_to_label = self._parse_categories(data["categories"])
        sizes, index_of = self._parse_images(data["images"])
        scan = self._parse_annotations(data["annotations"], cat_to_label, index_of, sizes)
        self.coco: COCO = self._evaluation_ground_truth(data, scan)
        self._log_skips(scan)

    def _parse_categories(self, categories: list) -> dict[int, int]:
        """Set `category_ids`, `class_names`, `num_classes`; return COCO category id -> label."""
        cat_names: dict[int, str] = {}
        for i, c in enumerate(categories):
            if not isinstance(c, dict) or not _is_int(c.get("id")):
                raise self._bad(f"categories[{i}]", "needs an integer 'id'")
            if c["id"] in cat_names:
                raise self._bad(f"categories[{i}]", f"duplicate category id {c['id']}")
            cat_names[c["id"]] = str(c.get("name", f"class{c['id']}"))
        if not cat_names:
            raise self._bad("categories", "the list is empty; list the object classes")
        self.category_ids: list[int] = sorted(cat_names)
        self.class_names: list[str] = [cat_names[c] for c in self.category_ids]
        self.num_classes: int = len(self.category_ids)
        return {c: i + 1 for i, c in enumerate(self.category_ids)}

    def _parse_images(self, images: list) -> tuple[dict[int, tuple[float, float] | None], dict[int, int]]:
        """Set `image_ids` and the file names; return image id -> (w, h) or None, image id -> index."""
        image_ids: list[int] = []
        file_names: list[str] = []
        sizes: dict[int, tuple[float, float] | None] = {}
        for i, im in enumerate(images):
            if not isinstance(im, dict) or not _is_int(im.get("id")):
                raise self._bad(f"images[{i}]", "needs an integer 'id'")
            if not isinstance(im.get("file_name"), str) or not im["file_name"]:
                raise self._bad(f"images[{i}] (id {im['id']})", "needs a 'file_name' string")
            if im["id"] in sizes:
                raise self._bad(f"images[{i}]", f"duplicate image id {im['id']}")
            w, h = im.get("width"), im.get("height")
            sizes[im["id"]] = (float(w), float(h)) if is_number(w) and is_number(h) and w > 0 and h > 0 else None
            image_ids.append(im["id"])
            file_names.append(im["file_name"])
        self.image_ids: list[int] = image_ids
        self._file_names = file_names
        return sizes, {img_id: i for i, img_id in enumerate(image_ids)}

    def _parse_annotations(self, anns: list, cat_to_label: dict[int, int], index_of: dict[int, int],
                           sizes: dict[int, tuple[float, float] | None]) -> _AnnotationScan:
        """One pass: check each annotation, count the skipped ones in `skipped`, and keep the
        training targets in flat arrays grouped by image (cheap to fork into workers)."""
        keep_img = np.empty(len(anns), dtype=np.int64)
        keep_box = np.empty((len(anns), 4), dtype=np.float32)
        keep_lab = np.empty(len(anns), dtype=np.int64)
        n_keep = 0
        scan = _AnnotationScan()
        ann_ids = set()
        for i, a in enumerate(anns):
            self._check_annotation(i, a)
            if a["id"] in ann_ids:
                scan.duplicates[i] = a["id"]
            ann_ids.add(a["id"])
            ok_box = _has_usable_bbox(a)
            if not ok_box:
                scan.unusable.append(i)
            elif "area" not in a or "iscrowd" not in a:
                scan.filled += 1
            target = _training_target(a, ok_box, cat_to_label, index_of, sizes)
            if isinstance(target, str):
                self.skipped[target] += 1
                continue
            keep_img[n_keep], keep_box[n_keep], keep_lab[n_keep] = target
            n_keep += 1

        # group the kept annotations by image (stable: file order within an image)
        order = np.argsort(keep_img[:n_keep], kind="stable")
        self._boxes = keep_box[:n_keep][order]
        self._labels = keep_lab[:n_keep][order]
        counts = np.bincount(keep_img[:n_keep], minlength=len(index_of))
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return scan

    def _check_annotation(self, i: int, a) -> None:
        """The structure every annotation needs (an error, not a skip, when it is missing)."""
        if not isinstance(a, dict):
            raise self._bad(f"annotations[{i}]", f"expected an object, got {type(a).__name__}")
        for key in ("id", "image_id", "category_id"):
            if key not in a:
                raise self._bad(f"annotations[{i}]", f"missing '{key}'")
        if not isinstance(a["id"], (int, str)):
            raise self._bad(f"annotations[{i}]", f"'id' must be an integer, got {a['id']!r}")

    def _evaluation_ground_truth(self, data: dict, scan: _AnnotationScan) -> COCO:
        """A pycocotools `COCO` indexed from the dict already parsed (see the class docstring)."""
        if scan.unusable or scan.filled or scan.duplicates:
            drop, renumber = set(scan.unusable), set(scan.duplicates)
            # pycocotools indexes annotations by id: a repeated id would hide one object and count
            # another twice, so the copy evaluated on gives the repeats new, unused ids
            next_id = 1 + max((a["id"] for a in data["annotations"] if _is_int(a["id"])), default=0)
            gt_anns = []
            for i, a in enumerate(data["annotations"]):
                if i in drop:
                    continue
                if i in renumber:
                    a, next_id = dict(a, id=next_id), next_id + 1
                if "area" not in a or "iscrowd" not in a:
                    a = dict(a)
                    a.setdefault("iscrowd", 0)
                    a.setdefault("area", float(a["bbox"][2]) * float(a["bbox"][3]))
                gt_anns.append(a)
            data = dict(data, annotations=gt_anns)
        coco = COCO()
        coco.dataset = data
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                coco.createIndex()
        except (KeyError, TypeError) as e:
            raise LpdetError(f"{self.annotations}: pycocotools cannot index this file ({type(e).__name__}: {e}); "
                             "fix the annotation file") from None
        return coco

    def _log_skips(self, scan: _AnnotationScan) -> None:
        """One message per kind of problem found while parsing (counts, not one line per annotation)."""
        skipped = self.skipped
        problems = {k: v for k, v in skipped.items() if k != CROWD}
        if skipped:
            summary = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))
            msg = "%s: %d annotation(s) not used for training (%s)"
            if problems:
                log.warning(msg + "; check the file", self.annotations, sum(skipped.values()), summary)
            else:  # crowd regions are normal COCO content, not a problem with the file
                log.info(msg, self.annotations, sum(skipped.values()), summary)
        if scan.unusable:
            log.warning("%s: %d annotation(s) without a usable 'bbox' left out of evaluation too",
                        self.annotations, len(scan.unusable))
        if scan.duplicates:
            repeated = sorted(set(scan.duplicates.values()), key=str)
            log.warning("%s: annotation id(s) %s used more than once (%d repeats); evaluating on a copy that gives "
                        "the repeats new ids (the file is unchanged); renumber its annotations", self.annotations,
                        ", ".join(map(str, repeated[:10])) + (", ..." if len(repeated) > 10 else ""),
                        len(scan.duplicates))
        if scan.filled:
            log.info("%s: %d annotation(s) lack 'area'/'iscrowd'; using area=w*h, iscrowd=0", self.annotations,
                     scan.filled)

    # ------------------------------------------------------------------ mapping
    def label_to_category_id(self, label: int) -> int:
        """The COCO category id of a model label (``1..K``)."""
        label = int(label)
        if not 1 <= label <= self.num_classes:
            raise ValueError(f"label {label} out of range 1..{self.num_classes} (0 is background)")
        return self.category_ids[label - 1]

    def category_id_to_label(self, category_id: int) -> int:
        """The model label (``1..K``) of a COCO category id."""
        try:
            return self.category_ids.index(int(category_id)) + 1
        except ValueError:
            raise ValueError(f"unknown category id {category_id}") from None

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation randomness of `epoch` (call before creating the DataLoader)."""
        self.epoch = int(epoch)

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, i: int) -> Path:
        return self.images / self._file_names[i]

    def annotations_of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Training boxes (xyxy pixels of the original image) and labels of item `i`."""
        s, e = self._offsets[i], self._offsets[i + 1]
        return self._boxes[s:e], self._labels[s:e]

    def __getitem__(self, i: int):
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        path = self.image_path(i)
        try:
            img = load_rgb_image(path)
        except FileNotFoundError:
            log.warning("%s: skipped (image file not found)", path)
            return None
        except Exception as e:  # PIL raises many types for corrupt/truncated data
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.warning("%s: skipped (cannot read image: %s)", path, reason)
            return None
        w, h = img.size
        boxes_np, labels_np = self.annotations_of(i)
        boxes = torch.from_numpy(boxes_np.copy())
        labels = torch.from_numpy(labels_np.copy())
        if boxes.shape[0]:
            # the file's width/height may disagree with the actual image: clip to the real one
            boxes[:, 0::2].clamp_(0, w)
            boxes[:, 1::2].clamp_(0, h)
            ok = (boxes[:, 2] - boxes[:, 0] > 1e-3) & (boxes[:, 3] - boxes[:, 1] > 1e-3)
            if not bool(ok.all()):
                boxes, labels = boxes[ok], labels[ok]

        if self.transform is None:
            image = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div_(255.0)
        else:
            image, boxes, labels = seeded_call(item_seed(self.seed, self.epoch, i), self.transform, img, boxes, labels)
        target = {
            "boxes": boxes.to(torch.float32).reshape(-1, 4),
            "labels": labels.to(torch.int64).reshape(-1),
            "image_id": int(self.image_ids[i]),
            "orig_size": (h, w),
        }
        return image, target

    def __repr__(self) -> str:
        return (f"CocoDetection({str(self.annotations)!r}, images={len(self)}, classes={self.num_classes}, "
                f"transform={self.transform!r})")
