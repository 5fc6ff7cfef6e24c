"""Box-aware train/eval transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from lpdet.data.transforms import adjust_hue_uint8, eval_transforms, train_transforms
from lpdet.errors import LpdetError



def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_eval_resize_scales_a_known_box():
    img, boxes, labels = eval_transforms(100)(_image(400, 200), torch.tensor([[100.0, 50, 200, 150]]), torch.tensor([3]))
    assert img.shape == (3, 100, 100) and img.dtype == torch.float32
    assert 0 <= float(img.min()) and float(img.max()) <= 1
    assert boxes.tolist() == [[25.0, 25.0, 50.0, 75.0]]
    assert labels.tolist() == [3] and labels.dtype == torch.int64


def test_eval_matches_a_plain_resize():
    pil = _image(64, 48)
    img, _, _ = eval_transforms(32)(pil, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    ref = F.resize(F.pil_to_tensor(pil), [32, 32], antialias=True).float() / 255
    assert torch.allclose(img, ref)


def test_zero_box_image_works():
    for tf in (train_transforms(64), eval_transforms(64)):
        for seed in range(20):
            torch.manual_seed(seed)
            img, boxes, labels = tf(_image(120, 80), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
            assert img.shape == (3, 64, 64) and boxes.shape == (0, 4) and labels.shape == (0,)


def test_train_boxes_stay_inside_and_labels_follow():
    tf = train_transforms(96)
    pil = _image(400, 300)
    boxes = torch.tensor([[50.0, 40, 150, 200], [200, 100, 380, 280], [10, 10, 40, 30], [0, 0, 400, 300]])
    labels = torch.tensor([1, 2, 3, 4])
    seen_counts = set()
    for seed in range(100):
        torch.manual_seed(seed)
        img, b, lab = tf(pil, boxes, labels)
        assert img.shape == (3, 96, 96) and img.dtype == torch.float32
        assert 0 <= float(img.min()) and float(img.max()) <= 1
        assert b.shape == (lab.shape[0], 4) and lab.dtype == torch.int64
        assert (b >= 0).all() and (b <= 96).all()
        assert ((b[:, 2] - b[:, 0]) >= 1).all() and ((b[:, 3] - b[:, 1]) >= 1).all()
        assert set(lab.tolist()) <= {1, 2, 3, 4}
        seen_counts.add(len(lab))
    assert len(seen_counts) > 1  # the crop does remove boxes sometimes


def test_train_is_a_function_of_the_torch_seed():
    tf = train_transforms(64)
    pil, boxes, labels = _image(200, 150), torch.tensor([[20.0, 30, 120, 140]]), torch.tensor([1])
    torch.manual_seed(7)
    a = tf(pil, boxes, labels)
    torch.manual_seed(7)
    b = tf(pil, boxes, labels)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_flip_moves_a_marked_box():
    """Whatever the augmentation does, the box must still cover the red patch it marks."""
    arr = np.full((200, 300, 3), 128, np.uint8)
    arr[50:110, 20:100] = (255, 0, 0)  # box [20, 50, 100, 110], on the left
    pil, boxes, labels = Image.fromarray(arr), torch.tensor([[20.0, 50, 100, 110]]), torch.tensor([1])
    tf = train_transforms(100)
    tf.photometric = lambda x: x  # keep colours exact for the check
    flipped = 0
    for seed in range(40):
        torch.manual_seed(seed)
        img, b, _ = tf(pil, boxes, labels)
        if len(b) == 0:
            continue
        x1, y1, x2, y2 = b[0].tolist()
        cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
        assert img[0, cy, cx] > 0.9 and img[1, cy, cx] < 0.1  # box centre is on the red patch
        flipped += cx > 50
    assert flipped > 0


def test_flip_exact():
    """The flip alone: x -> W - x."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    img = tv_tensors.Image(torch.zeros(3, 10, 40, dtype=torch.uint8))
    out = v2.RandomHorizontalFlip(p=1.0)({"image": img, "boxes": tv_tensors.BoundingBoxes(
        torch.tensor([[5.0, 1, 15, 9]]), format="XYXY", canvas_size=(10, 40))})
    assert out["boxes"].tolist() == [[25.0, 1.0, 35.0, 9.0]]


@pytest.mark.parametrize("factor", [-0.5, -0.05, 0.02, 0.05, 0.3])
def test_fast_hue_matches_torchvision(factor):
    img = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 40, 50), dtype=np.uint8))
    diff = (adjust_hue_uint8(img, factor).int() - F.adjust_hue(img, factor).int()).abs()
    assert int(diff.max()) <= 1


def test_light_augmentation_keeps_every_box_and_only_flips_geometry():
    image = Image.new("RGB", (400, 200), (90, 120, 60))
    boxes = torch.tensor([[100.0, 50.0, 200.0, 150.0], [10.0, 10.0, 30.0, 40.0]])
    labels = torch.tensor([1, 2])
    transform = train_transforms(100, augment="light")
    for seed in range(10):
        torch.manual_seed(seed)
        _, out_boxes, out_labels = transform(image, boxes, labels)
        resized = boxes * torch.tensor([0.25, 0.5, 0.25, 0.5])
        flipped = resized[:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1.0, -1.0, 1.0]) + torch.tensor([100.0, 0, 100.0, 0])
        assert torch.equal(out_labels, labels)
        assert torch.allclose(out_boxes, resized, atol=1e-3) or torch.allclose(out_boxes, flipped, atol=1e-3)


def test_unknown_augmentation_is_a_clear_error():
    with pytest.raises(LpdetError, match="--augment"):
        train_transforms(100, augment="heavy")
