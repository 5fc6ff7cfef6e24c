import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from lpdet.errors import LpdetError
from lpdet.serialize import from_dict, to_dict
from lpdet.eval.bootstrap import (BootstrapInterval, PredictionSet, accumulate_metric, bootstrap_difference,
                                  format_interval, paired_bootstrap, per_image_matches)
from lpdet.eval.coco_eval import METRIC_NAMES, coco_metrics


def _coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = json.loads(json.dumps(dataset))
    coco.createIndex()
    return coco


def _random_case(seed: int = 0, n_images: int = 30):
    """Ground truth of three categories and all sizes (a crowd box, an image without objects) and
    detections: jittered true boxes, misses, false positives, scores with ties."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "width": 320, "height": 320, "file_name": f"{image_id}.jpg"})
        for _ in range(int(rng.integers(0, 5)) if image_id != 3 else 0):
            size = float(rng.choice([12, 40, 90, 150]) * rng.uniform(0.8, 1.2))
            x, y = rng.uniform(0, 320 - size, 2)
            box = [float(x), float(y), size, size * float(rng.uniform(0.6, 1.4))]
            category = int(rng.integers(1, 4))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": int(rng.random() < 0.05)})
            if rng.random() < 0.75:
                jitter = rng.normal(0, 0.12 * size, 4)
                results.append({"image_id": image_id, "category_id": category,
                                "bbox": [box[0] + jitter[0], box[1] + jitter[1], max(2.0, box[2] + jitter[2]),
                                         max(2.0, box[3] + jitter[3])], "score": round(float(rng.random()), 1)})
        for _ in range(int(rng.integers(0, 4))):
            w, h = rng.uniform(8, 120, 2)
            results.append({"image_id": image_id, "category_id": int(rng.integers(1, 4)),
                            "bbox": [float(rng.uniform(0, 200)), float(rng.uniform(0, 200)), float(w), float(h)],
                            "score": round(float(rng.random()), 1)})
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}
    return gt, results, [image["id"] for image in images]


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_accumulate_equals_pycocotools_on_all_images(seed):
    gt, results, image_ids = _random_case(seed)
    reference = coco_metrics(_coco(gt), results, image_ids=image_ids)
    for metric in METRIC_NAMES:
        matches = per_image_matches(_coco(gt), PredictionSet(results, image_ids), metric)
        assert accumulate_metric(matches) == pytest.approx(reference[metric], abs=1e-12), metric


def test_fast_accumulate_on_a_resample_equals_pycocotools_on_the_duplicated_images():
    gt, results, image_ids = _random_case(2)
    draw = np.sort(np.random.default_rng(5).integers(0, len(image_ids), len(image_ids)))
    assert len(set(draw.tolist())) < len(draw)  # the resample repeats images
    # The resample as a dataset of its own: the j-th drawn image becomes image j + 1, with copies of
    # its objects and detections, so pycocotools sees the same images in the same order.
    images, annotations, duplicated = [], [], []
    for new_id, index in enumerate(draw, start=1):
        old_id = image_ids[index]
        images.append({"id": new_id, "width": 320, "height": 320, "file_name": f"{new_id}.jpg"})
        annotations += [dict(a, id=len(annotations) + n + 1, image_id=new_id)
                        for n, a in enumerate(a for a in gt["annotations"] if a["image_id"] == old_id)]
        duplicated += [dict(r, image_id=new_id) for r in results if r["image_id"] == old_id]
    resampled_gt = dict(gt, images=images, annotations=annotations)
    reference = coco_metrics(_coco(resampled_gt), duplicated, image_ids=[image["id"] for image in images])
    for metric in METRIC_NAMES:
        matches = per_image_matches(_coco(gt), PredictionSet(results, image_ids), metric)
        assert accumulate_metric(matches, draw) == pytest.approx(reference[metric], abs=1e-12), metric


def test_identical_prediction_sets_give_exactly_zero():
    gt, results, image_ids = _random_case(0)
    interval = paired_bootstrap(_coco(gt), PredictionSet(results, image_ids), PredictionSet(list(results), image_ids))
    assert (interval.difference, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert interval.within_noise and interval.resamples == 200
    assert format_interval(interval) == "+0.000 [+0.000, +0.000], within noise"


def _one_object_per_image_missed(n_images: int = 25):
    """Two objects per image; set a finds the first (and one false positive), set b also the second."""
    rng = np.random.default_rng(0)
    images, annotations, a, extra = [], [], [], []
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "width": 200, "height": 200, "file_name": f"{image_id}.jpg"})
        for n, box in enumerate(([10, 10, 60, 60], [120, 120, 50, 50])):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "bbox": box,
                                "area": 2500.0, "iscrowd": 0})
        a.append({"image_id": image_id, "category_id": 1, "bbox": [12, 11, 58, 60], "score": float(rng.random())})
        a.append({"image_id": image_id, "category_id": 1, "bbox": [60, 130, 40, 40], "score": float(rng.random())})
        extra.append({"image_id": image_id, "category_id": 1, "bbox": [121, 119, 50, 52],
                      "score": float(rng.random())})
    gt = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    return gt, a, a + extra, [image["id"] for image in images]


def test_one_extra_true_positive_per_image_is_beyond_noise():
    gt, a, b, image_ids = _one_object_per_image_missed()
    interval = paired_bootstrap(_coco(gt), PredictionSet(a, image_ids), PredictionSet(b, image_ids))
    full = coco_metrics(_coco(gt), b, image_ids)["AP"] - coco_metrics(_coco(gt), a, image_ids)["AP"]
    assert interval.difference == pytest.approx(full, abs=1e-12)
    assert 0.0 < interval.low <= interval.difference <= interval.high
    assert not interval.within_noise
    assert format_interval(interval).endswith("beyond noise")
    # AP50 too; and the reverse comparison is below 0.
    assert paired_bootstrap(_coco(gt), PredictionSet(b, image_ids), PredictionSet(a, image_ids),
                            metric="AP50").high < 0.0


def test_the_interval_is_set_by_the_seed():
    gt, results, image_ids = _random_case(0)
    other = [dict(r, score=r["score"] * 0.5) if r["category_id"] == 2 else r for r in results[::2]] + results[1::2]
    run = lambda seed: paired_bootstrap(_coco(gt), PredictionSet(results, image_ids),  # noqa: E731
                                        PredictionSet(other, image_ids), resamples=50, seed=seed)
    first = run(3)
    assert first == run(3)
    assert first.low < first.high  # a real spread, so that another seed can differ
    assert (first.low, first.high) != (run(4).low, run(4).high)


def test_different_images_are_refused():
    gt, results, image_ids = _random_case(0)
    with pytest.raises(LpdetError, match="same images"):
        paired_bootstrap(_coco(gt), PredictionSet(results, image_ids),
                         PredictionSet([r for r in results if r["image_id"] != 1], image_ids[1:]))
    with pytest.raises(LpdetError, match="unknown to it"):
        paired_bootstrap(_coco(gt), PredictionSet([], [999]), PredictionSet([], [999]))
    with pytest.raises(LpdetError, match="outside its image_ids"):
        paired_bootstrap(_coco(gt), PredictionSet(results, image_ids[1:]), PredictionSet(results, image_ids[1:]))


def test_a_set_without_detections_scores_zero():
    gt, a, _b, image_ids = _one_object_per_image_missed()
    interval = paired_bootstrap(_coco(gt), PredictionSet(a, image_ids), PredictionSet([], image_ids), resamples=20)
    assert interval.difference == pytest.approx(-coco_metrics(_coco(gt), a, image_ids)["AP"], abs=1e-12)
    assert interval.high < 0.0


def test_formatting_uses_true_minus_signs():
    interval = BootstrapInterval("AP", 0.012, -0.004, 0.027, 200, 0.95, within_noise=True)
    assert format_interval(interval) == "+0.012 [\N{MINUS SIGN}0.004, +0.027], within noise"
    assert from_dict(BootstrapInterval, to_dict(interval)) == interval  # cacheable as JSON


def test_matches_are_reusable_across_comparisons():
    gt, a, b, image_ids = _one_object_per_image_missed()
    coco = _coco(gt)
    base = per_image_matches(coco, PredictionSet(a, image_ids))
    direct = paired_bootstrap(coco, PredictionSet(a, image_ids), PredictionSet(b, image_ids), resamples=30)
    assert bootstrap_difference(base, per_image_matches(coco, PredictionSet(b, image_ids)), resamples=30) == direct
    with pytest.raises(LpdetError, match="AP50"):
        bootstrap_difference(base, per_image_matches(coco, PredictionSet(b, image_ids), "AP50"))
    with pytest.raises(LpdetError, match="same images"):
        bootstrap_difference(base, per_image_matches(coco, PredictionSet(b[2:], image_ids[1:])))
    with pytest.raises(LpdetError, match="unknown metric"):
        per_image_matches(coco, PredictionSet(b, image_ids), "mAP")
