import json

import pytest
import torch
from pycocotools.coco import COCO

from lpdet.eval.coco_eval import coco_metrics, detections_to_coco


def _coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


GT = {
    "images": [{"id": 10, "width": 400, "height": 200, "file_name": "a.jpg"},
               {"id": 11, "width": 100, "height": 100, "file_name": "b.jpg"}],
    "categories": [{"id": 3, "name": "cat"}, {"id": 90, "name": "dog"}],
    "annotations": [
        {"id": 1, "image_id": 10, "category_id": 3, "bbox": [40, 40, 160, 80], "area": 12800, "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 3, "bbox": [250, 20, 100, 100], "area": 10000, "iscrowd": 0},
        {"id": 3, "image_id": 11, "category_id": 90, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0},
    ],
}


def test_detections_are_scaled_to_original_pixels_and_mapped_to_coco_ids():
    det = {"boxes": torch.tensor([[0.1, 0.2, 0.5, 0.6]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([2])}
    target = {"image_id": 10, "orig_size": (200, 400)}
    (entry,) = detections_to_coco([det], [target], category_ids=[3, 90])
    assert entry == {"image_id": 10, "category_id": 90, "bbox": [40.0, 40.0, 160.0, 80.0], "score": 0.9}


def test_perfect_detections_score_one():
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in GT["annotations"]]
    metrics = coco_metrics(_coco(json.loads(json.dumps(GT))), results)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP_small"] == -1.0  # no small objects: pycocotools reports -1


def test_hand_computed_average_precision():
    # category 3: a false positive ranked above one true positive, one object missed → recall 0.5 at
    # precision 0.5; 101-point interpolation gives 51 × 0.5 / 101. Category 90: nothing detected → 0.
    results = [
        {"image_id": 10, "category_id": 3, "bbox": [0, 150, 30, 30], "score": 0.95},
        {"image_id": 10, "category_id": 3, "bbox": [40, 40, 160, 80], "score": 0.9},
    ]
    metrics = coco_metrics(_coco(json.loads(json.dumps(GT))), results)
    assert metrics["AP50"] == pytest.approx((51 * 0.5 / 101) / 2, abs=1e-6)


def test_no_detections_gives_zeros():
    assert coco_metrics(_coco(json.loads(json.dumps(GT))), [])["AP"] == 0.0
