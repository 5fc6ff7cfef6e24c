import torch

from lpdet.models.loss import match_anchors, multibox_loss

# Four anchors (cx, cy, w, h) on a 2×2 grid of 0.5×0.5 cells.
ANCHORS = torch.tensor(
    [[0.25, 0.25, 0.5, 0.5], [0.75, 0.25, 0.5, 0.5], [0.25, 0.75, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]]
)


def test_threshold_match():
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 0.95]])
    assert match_anchors(gt, ANCHORS).tolist() == [0, -1, -1, 1]


def test_best_anchor_forced_below_threshold():
    # IoU with anchor 1 is 0.25 (box covers a quarter of it): below 0.5, matched anyway.
    gt = torch.tensor([[0.5, 0.0, 0.75, 0.25]])
    assert match_anchors(gt, ANCHORS).tolist() == [-1, 0, -1, -1]
    assert match_anchors(gt, ANCHORS, iou_threshold=0.2).tolist() == [-1, 0, -1, -1]


def test_forced_match_overrides_a_better_threshold_match():
    # Box 0 covers anchors 0 and 1 well (IoU 0.5 each, argmax picks anchor 0); box 1 is small in
    # anchor 1 and would otherwise go unmatched, so anchor 1 is forced to it.
    gt = torch.tensor([[0.0, 0.0, 1.0, 0.5], [0.6, 0.1, 0.7, 0.2]])
    matched = match_anchors(gt, ANCHORS)
    assert matched.tolist() == [0, 1, -1, -1]


def test_no_boxes_all_background():
    assert match_anchors(torch.zeros(0, 4), ANCHORS).tolist() == [-1] * 4


def _targets():
    return [
        {"boxes": torch.tensor([[0.0, 0.0, 0.5, 0.5]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]


def test_loss_finite_with_empty_image_and_normalised_by_positives():
    torch.manual_seed(0)
    cls = torch.randn(2, 4, 3, requires_grad=True)
    box = torch.randn(2, 4, 4, requires_grad=True)
    out = multibox_loss(cls, box, _targets(), ANCHORS)
    assert set(out) == {"loss", "cls_loss", "box_loss"}
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert torch.isfinite(cls.grad).all() and torch.isfinite(box.grad).all()
    # One positive (image 0, anchor 0, label 2); box loss = smooth-L1 of its offsets.
    target = torch.zeros(4)  # the box is exactly anchor 0
    expected_box = torch.nn.functional.smooth_l1_loss(box[0, 0], target, reduction="sum")
    assert torch.allclose(out["box_loss"], expected_box)
    # Negatives: 3 per positive in image 0 (all 3 others), 3 for the empty image (no positives).
    ce = torch.nn.functional.cross_entropy(cls.reshape(-1, 3), torch.tensor([2, 0, 0, 0, 0, 0, 0, 0]), reduction="none")
    ce = ce.view(2, 4)
    expected_cls = ce[0].sum() + ce[1].topk(3).values.sum()
    assert torch.allclose(out["cls_loss"], expected_cls)


def test_hard_negative_mining_picks_highest_loss():
    # One positive (anchor 0); 7 background anchors, 3:1 → only the 3 hardest count.
    small = torch.tensor([[0.9, 0.9, 0.1, 0.1], [0.9, 0.1, 0.1, 0.1], [0.1, 0.9, 0.1, 0.1], [0.6, 0.6, 0.1, 0.1]])
    anchors = torch.cat([ANCHORS, small])
    cls = torch.zeros(1, 8, 2)
    cls[0, 1:, 1] = torch.tensor([5.0, 0.0, 0.0, 4.0, 3.0, 0.0, -1.0])  # anchors 1, 4, 5 are hard
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 0.5, 0.5]]), "labels": torch.tensor([1])}]
    out = multibox_loss(cls, torch.zeros(1, 8, 4), targets, anchors)
    labels = torch.tensor([1, 0, 0, 0, 0, 0, 0, 0])
    ce = torch.nn.functional.cross_entropy(cls[0], labels, reduction="none")
    assert torch.allclose(out["cls_loss"], ce[[0, 1, 4, 5]].sum())


def test_neg_pos_ratio_limits_negatives():
    cls = torch.zeros(1, 4, 2)
    cls[0, :, 1] = torch.tensor([0.0, 1.0, 3.0, 2.0])
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 0.5, 0.5]]), "labels": torch.tensor([1])}]
    out = multibox_loss(cls, torch.zeros(1, 4, 4), targets, ANCHORS, neg_pos_ratio=1)
    ce = torch.nn.functional.cross_entropy(cls[0], torch.tensor([1, 0, 0, 0]), reduction="none")
    assert torch.allclose(out["cls_loss"], ce[0] + ce[2])  # the single hardest negative
