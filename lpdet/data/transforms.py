"""Box-aware SSD augmentation and the eval resize (torchvision.transforms.v2).

Both pipelines are callables ``(image, boxes, labels) -> (image, boxes, labels)``:

- in: ``image`` a PIL image (any size, RGB) or a uint8 ``[3, H, W]`` tensor, ``boxes`` a float
  ``[N, 4]`` tensor of ``xyxy`` pixels in that image, ``labels`` an int64 ``[N]`` tensor;
- out: ``image`` float32 ``[3, R, R]`` RGB in ``[0, 1]`` (resized to ``R x R``, no letterbox),
  ``boxes`` float32 ``[N', 4]`` ``xyxy`` pixels in the ``R x R`` image, ``labels`` int64 ``[N']``.

The train pipeline follows the SSD paper / torchvision's SSD reference: photometric distortion,
zoom-out (expand onto a mean-coloured canvas), IoU-constrained random crop, horizontal flip,
resize, then removal of boxes that became too small. All randomness comes from torch's global
RNG, so `CocoDetection` can make it reproducible per (seed, epoch, index) with
``torch.manual_seed``. Everything up to the final conversion runs on uint8 tensors (the cheap
path in torchvision); the float conversion happens once, on the small ``R x R`` image.
"""

from __future__ import annotations

from collections.abc import Callable

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["train_transforms", "eval_transforms", "ZOOM_OUT_FILL"]

# ImageNet mean as uint8 RGB: the canvas colour for zoom-out (what the model's normalisation
# maps to ~0), as in the SSD reference implementations.
ZOOM_OUT_FILL = (124, 116, 104)


def _to_uint8_image(image) -> tv_tensors.Image:
    if isinstance(image, PIL.Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        return tv_tensors.Image(F.pil_to_tensor(image))
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            image = F.to_dtype(image, torch.uint8, scale=True)
        return tv_tensors.Image(image)
    raise TypeError(f"expected a PIL image or a uint8 tensor, got {type(image).__name__}")


class _Pipeline:
    """The shared wrapper: PIL -> uint8 tv_tensors, the steps, resize, sanitize, float."""

    def __init__(self, resolution: int, *, train: bool):
        resolution = int(resolution)
        if resolution <= 0:
            raise ValueError(f"resolution must be positive, got {resolution}")
        self.resolution = resolution
        self.train = train
        if train:
            self.photometric = v2.RandomPhotometricDistort(p=0.5)
            self.zoom_out = v2.RandomZoomOut(fill=list(ZOOM_OUT_FILL), side_range=(1.0, 4.0), p=0.5)
            self.iou_crop = v2.RandomIoUCrop()
            self.flip = v2.RandomHorizontalFlip(p=0.5)
        self.resize = v2.Resize((resolution, resolution), antialias=True)
        # labels_getter: the sample is a dict with a "labels" entry (the default heuristic).
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=1)

    def __repr__(self) -> str:
        kind = "train" if self.train else "eval"
        return f"{kind}_transforms({self.resolution})"

    def __call__(self, image, boxes: torch.Tensor, labels: torch.Tensor):
        img = _to_uint8_image(image)
        h, w = img.shape[-2:]
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
        sample = {
            "image": img,
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            "labels": labels,
        }
        if self.train:
            sample["image"] = self.photometric(sample["image"])
            sample = self.zoom_out(sample)
            # RandomIoUCrop needs at least one box (with none it can only loop until it draws
            # the "keep as is" option), so images without boxes are not cropped.
            if sample["boxes"].shape[0] > 0:
                sample = self.iou_crop(sample)
                sample = self.sanitize(sample)  # drop the boxes the crop marked invalid
            sample = self.flip(sample)
        sample = self.resize(sample)
        sample = self.sanitize(sample)
        r = self.resolution
        out_boxes = sample["boxes"].as_subclass(torch.Tensor).to(torch.float32)
        out_boxes = out_boxes.clamp_(0.0, float(r))
        out_img = F.to_dtype(sample["image"].as_subclass(torch.Tensor), torch.float32, scale=True)
        return out_img.contiguous(), out_boxes, sample["labels"]


def train_transforms(resolution: int) -> Callable:
    """SSD augmentation ending in an ``R x R`` float image; see the module docstring."""
    return _Pipeline(resolution, train=True)


def eval_transforms(resolution: int) -> Callable:
    """Resize to ``R x R`` (no letterbox) and convert to float ``[0, 1]``; boxes follow."""
    return _Pipeline(resolution, train=False)
