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


def test_no_detections_give_pycocotools_own_values():
    # the reference: pycocotools on one false positive (it cannot load an empty result list): 0 where
    # there is ground truth, -1 for the small bucket that has none
    false_positive = [{"image_id": 10, "category_id": 3, "bbox": [0, 0, 2, 2], "score": 0.5}]
    reference = coco_metrics(_coco(json.loads(json.dumps(GT))), false_positive)
    assert reference == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AP_small": -1.0, "AP_medium": 0.0, "AP_large": 0.0}
    assert coco_metrics(_coco(json.loads(json.dumps(GT))), []) == reference


def test_an_unreadable_val_image_is_scored_as_missed_not_dropped(tmp_path):
    """Perfect detections on the readable images: AP is what pycocotools gives with the unreadable
    image's objects missed (below 1), not the 1.0 of leaving that image out."""
    from lpdet.data.coco import CocoDetection
    from lpdet.data.spec import resolve_dataset
    from lpdet.data.transforms import eval_transforms
    from lpdet.eval.coco_eval import evaluate
    from tests.helpers import tiny_synth

    val = resolve_dataset(str(tiny_synth(tmp_path / "data", n_train=1, n_val=4))).val
    dataset = CocoDetection(val.annotations, val.images, transform=eval_transforms(64))
    dataset.image_path(1).unlink()
    readable = [image_id for i, image_id in enumerate(dataset.image_ids) if i != 1]
    perfect = []
    for image_id in readable:
        info = dataset.coco.imgs[image_id]
        anns = dataset.coco.imgToAnns[image_id]
        boxes = torch.tensor([[x / info["width"], y / info["height"], (x + w) / info["width"], (y + h) / info["height"]]
                              for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        labels = torch.tensor([dataset.category_ids.index(a["category_id"]) + 1 for a in anns], dtype=torch.long)
        perfect.append({"boxes": boxes, "scores": torch.ones(len(anns)), "labels": labels})
    queue = iter(perfect)
    result = evaluate(lambda images: [next(queue) for _ in images], dataset, batch_size=2, progress=False)

    assert result.skipped_images == 1 and result.num_images == 4 and result.image_ids == dataset.image_ids
    assert dataset.coco.imgToAnns[dataset.image_ids[1]], "the unreadable image must hold objects"
    assert coco_metrics(dataset.coco, result.results, image_ids=readable)["AP"] == pytest.approx(1.0)
    assert result.metrics == coco_metrics(dataset.coco, result.results, image_ids=dataset.image_ids)
    assert result.metrics["AP"] < 0.99
