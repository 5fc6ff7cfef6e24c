"""Box-aware SSD augmentation and the eval resize (torchvision.transforms.v2).

Both pipelines are callables ``(image, boxes, labels) -> (image, boxes, labels)``:

- in: ``image`` a PIL image (any size, RGB) or a uint8 ``[3, H, W]`` tensor, ``boxes`` a float
  ``[N, 4]`` tensor of ``xyxy`` pixels in that image, ``labels`` an int64 ``[N]`` tensor;
- out: ``image`` float32 ``[3, R, R]`` RGB in ``[0, 1]`` (resized to ``R x R``, no letterbox),
  ``boxes`` float32 ``[N', 4]`` ``xyxy`` pixels in the ``R x R`` image, ``labels`` int64 ``[N']``.

The train pipeline follows the SSD paper / torchvision's SSD reference: zoom-out (expand onto a
mean-coloured canvas), IoU-constrained random crop, horizontal flip, resize, removal of boxes
that became too small, and photometric distortion. All randomness comes from torch's global
RNG, so `CocoDetection` can make it reproducible per (seed, epoch, index) with
``torch.manual_seed``.

Speed (the data pipeline feeds CPU training): everything runs on uint8 tensors and the float
conversion happens once, on the ``R x R`` image. The photometric distortion (per-pixel colour
operations, whose hue step dominates the cost) runs after the resize, so its cost does not
grow with the input size; per-pixel operations commute with crop/flip/resize up to rounding,
the only visible difference from distorting first is that the zoom-out canvas is distorted too.
The hue step uses an exact uint8 HSV hue shift (matches torchvision's `adjust_hue` to +-1 grey
level) that is ~3x faster than torchvision's generic float kernel. The IoU crop samples its 40 trials per IoU option in one vectorised step instead of
torchvision's per-trial Python loop (same distribution of crops, different RNG consumption).
"""

from __future__ import annotations

from collections.abc import Callable

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from lpdet.errors import LpdetError

__all__ = ["train_transforms", "eval_transforms", "adjust_hue_uint8", "ZOOM_OUT_FILL"]

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


def adjust_hue_uint8(img: torch.Tensor, hue_factor: float) -> torch.Tensor:
    """HSV hue rotation of a uint8 ``[3, H, W]`` RGB image by ``hue_factor`` turns (-0.5..0.5).

    Same result as ``torchvision...functional.adjust_hue`` up to +-1 from rounding; written with
    branch-free elementwise arithmetic (hue sector from the arg-max channel, then the compact
    HSV->RGB formula ``V - C * clamp(min(k, 4 - k), 0, 1)``, ``k = (n + H) mod 6``).
    """
    if hue_factor == 0:
        return img
    shape = img.shape
    x = img.reshape(3, -1).to(torch.float32)
    r, g, b = x[0], x[1], x[2]
    mx = x.amax(0)
    c = mx - x.amin(0)  # chroma; 0 for greys, whose hue is irrelevant (w * c == 0)
    inv = 1.0 / c.clamp(min=1e-6)
    is_r = (mx == r).to(torch.float32)
    is_g = (mx == g).to(torch.float32) * (1.0 - is_r)
    is_b = 1.0 - is_r - is_g
    h = (is_r * (g - b) + is_g * (b - r) + is_b * (r - g)) * inv + 2.0 * is_g + 4.0 * is_b
    h += 6.0 * float(hue_factor)
    k = torch.tensor([[5.0], [3.0], [1.0]]) + h  # [3, HW]: R, G, B
    k -= 6.0 * torch.floor(k * (1.0 / 6.0))
    w = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    out = mx - c * w
    return out.add_(0.5).clamp_(0.0, 255.0).to(torch.uint8).reshape(shape)


class _PhotometricDistort:
    """`v2.RandomPhotometricDistort` (same parameters, same sampling) on a uint8 image tensor.

    Each of brightness, contrast (before or after saturation/hue), saturation, hue and a random
    channel permutation is applied with probability ``p``; only the hue kernel differs from
    torchvision's (`adjust_hue_uint8`, for speed).
    """

    def __init__(self, brightness=(0.875, 1.125), contrast=(0.5, 1.5), saturation=(0.5, 1.5),
                 hue=(-0.05, 0.05), p=0.5):
        self.brightness, self.contrast, self.saturation, self.hue, self.p = (
            brightness, contrast, saturation, hue, p)

    def _factor(self, lo_hi):
        if float(torch.rand(1)) < self.p:
            lo, hi = lo_hi
            return float(torch.empty(1).uniform_(lo, hi))
        return None

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        bright = self._factor(self.brightness)
        contrast = self._factor(self.contrast)
        sat = self._factor(self.saturation)
        hue = self._factor(self.hue)
        contrast_before = bool(torch.rand(()) < 0.5)
        perm = torch.randperm(3) if float(torch.rand(1)) < self.p else None
        if bright is not None:
            img = F.adjust_brightness(img, brightness_factor=bright)
        if contrast is not None and contrast_before:
            img = F.adjust_contrast(img, contrast_factor=contrast)
        if sat is not None:
            img = F.adjust_saturation(img, saturation_factor=sat)
        if hue is not None:
            img = adjust_hue_uint8(img, hue)
        if contrast is not None and not contrast_before:
            img = F.adjust_contrast(img, contrast_factor=contrast)
        if perm is not None:
            img = F.permute_channels(img, permutation=perm)
        return img


class _IoUCrop:
    """SSD's random crop (torchvision's `RandomIoUCrop`), with the trials vectorised.

    Draws a minimum-IoU option from ``options``; ``>= 1`` means "no crop". For the other options
    up to ``trials`` candidate crops (each side ``min_scale..max_scale`` of the image, aspect
    ``min_aspect..max_aspect``) are drawn at once; the first one that contains the centre of at
    least one box and overlaps one such box with IoU ``>=`` the option wins. Boxes whose centre is
    outside the crop are zeroed (removed by the following sanitize), the others are clipped.
    """

    def __init__(self, min_scale=0.3, max_scale=1.0, min_aspect=0.5, max_aspect=2.0,
                 options=(0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0), trials=40, max_rounds=100):
        self.min_scale, self.max_scale = min_scale, max_scale
        self.min_aspect, self.max_aspect = min_aspect, max_aspect
        self.options = list(options)
        self.trials = trials
        self.max_rounds = max_rounds  # a bound on options drawn; ~never reached (1/7 is "no crop")

    def params(self, boxes: torch.Tensor, h: int, w: int):
        """(top, left, height, width, keep-mask) or None for no crop."""
        n = boxes.shape[0]
        if n == 0:
            return None
        cx = 0.5 * (boxes[:, 0] + boxes[:, 2])
        cy = 0.5 * (boxes[:, 1] + boxes[:, 3])
        for _ in range(self.max_rounds):
            min_iou = self.options[int(torch.randint(len(self.options), (1,)))]
            if min_iou >= 1.0:
                return None
            t = self.trials
            r = self.min_scale + (self.max_scale - self.min_scale) * torch.rand(t, 2)
            new_w = (w * r[:, 0]).floor()
            new_h = (h * r[:, 1]).floor()
            ok = (new_w > 0) & (new_h > 0)
            aspect = new_w / new_h.clamp(min=1)
            ok &= (aspect >= self.min_aspect) & (aspect <= self.max_aspect)
            r = torch.rand(t, 2)
            left = ((w - new_w) * r[:, 0]).floor()
            top = ((h - new_h) * r[:, 1]).floor()
            right, bottom = left + new_w, top + new_h
            within = ((left[:, None] < cx) & (cx < right[:, None])
                      & (top[:, None] < cy) & (cy < bottom[:, None]))  # [t, n]
            ok &= within.any(dim=1)
            if not bool(ok.any()):
                continue
            crops = torch.stack([left, top, right, bottom], dim=1)
            iou = box_iou(crops, boxes.to(crops.dtype)).masked_fill(~within, -1.0)
            ok &= iou.max(dim=1).values >= min_iou
            hits = ok.nonzero()
            if hits.numel() == 0:
                continue
            i = int(hits[0, 0])
            return int(top[i]), int(left[i]), int(new_h[i]), int(new_w[i]), within[i]
        return None

    def __call__(self, sample: dict) -> dict:
        img, boxes = sample["image"], sample["boxes"]
        h, w = img.shape[-2:]
        p = self.params(boxes.as_subclass(torch.Tensor), h, w)
        if p is None:
            return sample
        top, left, height, width, keep = p
        out = dict(sample)
        out["image"] = F.crop(img, top=top, left=left, height=height, width=width)
        cropped = F.crop(boxes, top=top, left=left, height=height, width=width)
        cropped[~keep] = 0  # degenerate: removed by the sanitize that follows
        out["boxes"] = cropped
        return out


class _Pipeline:
    """The shared wrapper: PIL -> uint8 tv_tensors, the steps, resize, sanitize, float."""

    def __init__(self, resolution: int, *, train: bool, geometric: bool = True):
        resolution = int(resolution)
        if resolution <= 0:
            raise ValueError(f"resolution must be positive, got {resolution}")
        self.resolution = resolution
        self.train = train
        self.geometric = geometric
        if train:
            self.photometric = _PhotometricDistort(p=0.5)
            self.zoom_out = v2.RandomZoomOut(fill=list(ZOOM_OUT_FILL), side_range=(1.0, 4.0), p=0.5)
            self.iou_crop = _IoUCrop()
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
        if self.train and self.geometric:
            sample = self.zoom_out(sample)
            # RandomIoUCrop needs at least one box (with none it can only loop until it draws
            # the "keep as is" option), so images without boxes are not cropped.
            if sample["boxes"].shape[0] > 0:
                sample = self.iou_crop(sample)
                sample = self.sanitize(sample)  # drop the boxes the crop marked invalid
        if self.train:
            sample = self.flip(sample)
        sample = self.resize(sample)
        sample = self.sanitize(sample)
        if self.train:
            sample["image"] = tv_tensors.Image(self.photometric(sample["image"].as_subclass(torch.Tensor)))
        r = self.resolution
        out_boxes = sample["boxes"].as_subclass(torch.Tensor).to(torch.float32)
        out_boxes = out_boxes.clamp_(0.0, float(r))
        out_img = F.to_dtype(sample["image"].as_subclass(torch.Tensor), torch.float32, scale=True)
        return out_img.contiguous(), out_boxes, sample["labels"]


AUGMENTATIONS = ("ssd", "light")


def train_transforms(resolution: int, augment: str = "ssd") -> Callable:
    """SSD augmentation ending in an ``R x R`` float image; see the module docstring.

    ``augment="light"`` keeps the photometric distortion and the flip but skips zoom-out and
    the IoU crop: on short CPU schedules the full SSD geometry (which makes most objects
    small) slowed early learning about tenfold in our measurements; use it for short runs.
    """
    if augment not in AUGMENTATIONS:
        raise LpdetError(f"--augment {augment!r}: choose one of {', '.join(AUGMENTATIONS)}")
    return _Pipeline(resolution, train=True, geometric=augment == "ssd")


def eval_transforms(resolution: int) -> Callable:
    """Resize to ``R x R`` (no letterbox) and convert to float ``[0, 1]``; boxes follow."""
    return _Pipeline(resolution, train=False)
