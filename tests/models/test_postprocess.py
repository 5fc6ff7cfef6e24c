import math

import torch

from lpdet.models.box_coder import encode
from lpdet.models.postprocess import PostprocessConfig, postprocess

ANCHORS = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.32, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]])


def _logits(probs: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is `probs` (rows: anchors; columns: background, classes)."""
    return torch.tensor(probs).log()[None]


def test_nms_same_class_only():
    # Anchors 0 and 1 overlap heavily (IoU ≈ 0.82).
    cls = _logits(
        [
            [0.1, 0.9, 0.0 + 1e-9],  # class 1, 0.9
            [0.2, 0.8, 1e-9],  # class 1, 0.8: suppressed by anchor 0
            [0.3, 1e-9, 0.7],  # class 2 elsewhere
            [1.0 - 2e-9, 1e-9, 1e-9],  # background
        ]
    )
    out = postprocess(cls, torch.zeros(1, 4, 4), ANCHORS)[0]
    assert out["labels"].dtype == torch.int64
    assert out["labels"].tolist() == [1, 2]
    assert torch.allclose(out["scores"], torch.tensor([0.9, 0.7]))
    assert torch.allclose(out["boxes"][0], torch.tensor([0.2, 0.2, 0.4, 0.4]))

    # Same boxes, the second of another class: both survive.
    cls2 = _logits([[0.1, 0.9, 1e-9], [0.2, 1e-9, 0.8], [1.0, 1e-9, 1e-9], [1.0, 1e-9, 1e-9]])
    out2 = postprocess(cls2, torch.zeros(1, 4, 4), ANCHORS)[0]
    assert sorted(out2["labels"].tolist()) == [1, 2]


def test_score_threshold_and_top_k():
    cls = _logits([[0.5, 0.5, 1e-9], [0.95, 0.05, 1e-9], [0.4, 1e-9, 0.6], [0.7, 1e-9, 0.3]])
    cfg = PostprocessConfig(score_threshold=0.2, nms_iou=0.99)
    out = postprocess(cls, torch.zeros(1, 4, 4), ANCHORS, cfg)[0]
    assert torch.allclose(out["scores"], torch.tensor([0.6, 0.5, 0.3]))  # 0.05 dropped, sorted
    out = postprocess(cls, torch.zeros(1, 4, 4), ANCHORS, PostprocessConfig(score_threshold=0.2, top_k=2))[0]
    assert out["scores"].shape == (2,)


def test_boxes_clipped_and_decoded():
    box = torch.tensor([[-0.1, 0.25, 0.5, 0.55]])  # partly outside the image
    deltas = encode(box, ANCHORS[3:4])
    cls = _logits([[1.0, 1e-9, 1e-9]] * 3 + [[0.1, 0.9, 1e-9]])
    box_deltas = torch.zeros(1, 4, 4)
    box_deltas[0, 3] = deltas[0]
    out = postprocess(cls, box_deltas, ANCHORS)[0]
    assert torch.allclose(out["boxes"], torch.tensor([[0.0, 0.25, 0.5, 0.55]]), atol=1e-6)
    assert out["boxes"].min() >= 0 and out["boxes"].max() <= 1


def test_batch_and_empty_result():
    cls = torch.full((2, 4, 3), -math.inf)
    cls[..., 0] = 0.0  # all background
    out = postprocess(cls, torch.zeros(2, 4, 4), ANCHORS)
    assert len(out) == 2
    assert out[0]["boxes"].shape == (0, 4) and out[0]["labels"].shape == (0,)
