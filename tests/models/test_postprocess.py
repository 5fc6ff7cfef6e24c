import math
from dataclasses import replace

import pytest
import torch

from lpdet.models.box_coder import encode
from lpdet.models.postprocess import PostprocessConfig, postprocess, postprocess_from_metadata, select_detections

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


# ----------------------------------------------------------------------------- against a plain reference
def _iou(a, b) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _greedy_nms(candidates: list[tuple], iou: float) -> list[tuple]:
    """candidates: (score, label, anchor, box) already in the order to visit."""
    kept, kept_boxes = [], {}
    for cand in candidates:
        same_label = kept_boxes.setdefault(cand[1], [])
        if all(_iou(box, cand[3]) <= iou for box in same_label):
            kept.append(cand)
            same_label.append(cand[3])
    return kept


def _reference(scores: torch.Tensor, boxes: torch.Tensor, cfg: PostprocessConfig) -> list[tuple]:
    """The rule in plain Python, one image: per class, the `pre_nms_top_k` best anchors (ties: lower
    anchor first), above the threshold, non-empty clipped box; greedy NMS per class; the `top_k`
    best overall (ties: lower label, then lower anchor). Class-agnostic: each anchor's best class
    (ties: lower label), one NMS over all in order of score (ties: lower anchor). Returns (score, label, anchor, box) tuples in order."""
    rows = scores.double().tolist()
    clipped = boxes.clamp(0, 1).double().tolist()
    num_classes = len(rows[0])
    candidates = []
    if cfg.class_agnostic:
        for a, row in enumerate(rows):
            best = max(range(num_classes), key=lambda k: (row[k], -k))
            candidates.append((row[best], best + 1, a))
    else:
        for k in range(num_classes):
            ranked = sorted(range(len(rows)), key=lambda a: (-rows[a][k], a))[: cfg.pre_nms_top_k]
            candidates += [(rows[a][k], k + 1, a) for a in ranked]
    candidates = [(s, label, a, clipped[a]) for s, label, a in candidates
                  if s > cfg.score_threshold and clipped[a][2] > clipped[a][0] and clipped[a][3] > clipped[a][1]]
    if cfg.class_agnostic:
        candidates.sort(key=lambda c: (-c[0], c[2]))
        candidates = [(s, 0, a, box, label) for s, label, a, box in candidates]  # label 0: one NMS for all
        return [(s, label, a, box) for s, _, a, box, label in _greedy_nms(candidates, cfg.nms_iou)][: cfg.top_k]
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    return _greedy_nms(candidates, cfg.nms_iou)[: cfg.top_k]


def _assert_matches_reference(scores, boxes, cfg):
    results = select_detections(scores, boxes, cfg)
    for image_scores, image_boxes, got in zip(scores, boxes, results):
        want = _reference(image_scores, image_boxes, cfg)
        assert got["labels"].tolist() == [w[1] for w in want]
        assert got["scores"].tolist() == pytest.approx([w[0] for w in want], abs=0)
        assert torch.equal(got["boxes"], torch.tensor([w[3] for w in want], dtype=torch.float32).reshape(-1, 4))
        assert got["labels"].dtype == torch.int64


def _random_boxes(generator, shape, spread=1.0):
    centre = torch.rand(*shape, 2, generator=generator) * spread
    size = torch.rand(*shape, 2, generator=generator) * 0.4
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)  # some partly outside [0, 1]


@pytest.mark.parametrize("class_agnostic", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_random_inputs_match_the_reference(seed, class_agnostic):
    generator = torch.Generator().manual_seed(seed)
    num_classes = [3, 20, 90, 1][seed]
    num_anchors = 120 if num_classes > 20 else 300
    scores = torch.rand(2, num_anchors, num_classes, generator=generator) ** 3
    boxes = _random_boxes(generator, (2, num_anchors), spread=0.6)  # crowded: NMS has work to do
    cfg = PostprocessConfig(score_threshold=0.05, nms_iou=0.5, top_k=40, pre_nms_top_k=30,
                            class_agnostic=class_agnostic)
    _assert_matches_reference(scores, boxes, cfg)
    _assert_matches_reference(scores, boxes, replace(cfg, top_k=1000, pre_nms_top_k=1000))


@pytest.mark.parametrize("class_agnostic", [False, True])
def test_ties_empty_boxes_and_many_classes_match_the_reference(class_agnostic):
    generator = torch.Generator().manual_seed(7)
    num_anchors, num_classes = 200, 90
    # Scores on a coarse grid (as from an int8 graph): ties everywhere, also at the top-k cut-offs.
    scores = torch.randint(0, 12, (1, num_anchors, num_classes), generator=generator).float() / 16
    boxes = _random_boxes(generator, (1, num_anchors), spread=0.5)
    boxes[0, ::3] = boxes[0, 1::3][: len(boxes[0, ::3])]  # duplicated boxes: ties in NMS
    boxes[0, ::7] = torch.tensor([1.2, 0.1, 1.5, 0.3])  # wholly outside: empty once clipped
    boxes[0, 5] = torch.tensor([0.2, 0.2, 0.2, 0.5])  # zero width
    for cfg in (PostprocessConfig(score_threshold=0.2, nms_iou=0.3, top_k=50, pre_nms_top_k=10),
                PostprocessConfig(score_threshold=0.0, nms_iou=0.7, top_k=500, pre_nms_top_k=60)):
        _assert_matches_reference(scores, boxes, replace(cfg, class_agnostic=class_agnostic))


def test_empty_inputs():
    for cfg in (PostprocessConfig(), PostprocessConfig(class_agnostic=True)):
        out = select_detections(torch.zeros(1, 5, 3), torch.rand(1, 5, 4), cfg)[0]  # nothing above threshold
        assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,) and out["labels"].dtype == torch.int64
        assert select_detections(torch.zeros(0, 5, 3), torch.zeros(0, 5, 4), cfg) == []
        out = select_detections(torch.ones(1, 0, 3), torch.zeros(1, 0, 4), cfg)[0]  # no anchors
        assert out["boxes"].shape == (0, 4)


def test_class_agnostic_suppresses_across_classes():
    # Anchors 0 and 1 overlap (IoU ≈ 0.82), best classes 1 and 2: per class both stay, agnostic one.
    cls = _logits([[0.1, 0.9, 1e-9], [0.2, 1e-9, 0.8], [1.0, 1e-9, 1e-9], [1.0, 1e-9, 1e-9]])
    assert postprocess(cls, torch.zeros(1, 4, 4), ANCHORS)[0]["labels"].tolist() == [1, 2]
    out = postprocess(cls, torch.zeros(1, 4, 4), ANCHORS, PostprocessConfig(class_agnostic=True))[0]
    assert out["labels"].tolist() == [1] and torch.allclose(out["scores"], torch.tensor([0.9]))


def test_class_agnostic_round_trips_through_metadata():
    saved = {"postprocess": {"class_agnostic": True, "nms_iou": 0.5, "unknown": 1}}
    assert postprocess_from_metadata(saved) == PostprocessConfig(nms_iou=0.5, class_agnostic=True)
