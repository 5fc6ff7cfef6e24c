"""Intervals of the design's AP comparisons (`lpdet.design.noise`) on hand-built prediction sets."""

from __future__ import annotations

import json

import pytest

from lpdet.data.spec import resolve_dataset
from lpdet.design.noise import NoiseJudge, load_predictions, save_predictions
from lpdet.errors import LpdetError
from tests.helpers import tiny_synth


def _ground_truth_detections(data, drop_one_per_image: bool = False) -> tuple[list[dict], list[int]]:
    """Every val object as a detection of score 1 (optionally all but one per image): perfect boxes."""
    gt = json.loads(resolve_dataset(str(data)).val.annotations.read_text())
    results, seen = [], set()
    for a in gt["annotations"]:
        if drop_one_per_image and a["image_id"] not in seen:
            seen.add(a["image_id"])
            continue
        results.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0})
    return results, [image["id"] for image in gt["images"]]


def test_intervals_on_hand_checkable_cases(tmp_path):
    data = tiny_synth(tmp_path / "data", n_train=2, n_val=8)
    perfect, ids = _ground_truth_detections(data)
    fewer, _ = _ground_truth_detections(data, drop_one_per_image=True)
    files = {name: save_predictions(tmp_path / f"{name}.json", results, ids)
             for name, results in (("perfect", perfect), ("again", list(perfect)), ("fewer", fewer), ("none", []))}
    assert load_predictions(files["perfect"]).image_ids == ids
    judge = NoiseJudge(data)
    # the same predictions: no difference on any resample
    same = judge.interval(files["perfect"], files["again"])
    assert (same.difference, same.low, same.high, same.within_noise) == (0.0, 0.0, 0.0, True)
    assert judge.text(files["perfect"], files["again"]) == "+0.000 [+0.000, +0.000], within noise"
    # every object found (AP 1) against nothing found (AP 0): +1 on every resample
    assert judge.text(files["none"], files["perfect"]) == "+1.000 [+1.000, +1.000], beyond noise"
    # one more true positive per image: a gain above 0 on every resample
    gain = judge.interval(files["fewer"], files["perfect"])
    assert gain.difference > 0 and gain.low > 0 and not gain.within_noise
    assert judge.interval(None, files["perfect"]) is None and judge.text(files["perfect"], None) is None


def test_different_images_say_why_instead_of_failing(tmp_path):
    data = tiny_synth(tmp_path / "data", n_train=2, n_val=4)
    perfect, ids = _ground_truth_detections(data)
    a = save_predictions(tmp_path / "a.json", perfect, ids)
    b = save_predictions(tmp_path / "b.json", [r for r in perfect if r["image_id"] != ids[0]], ids[1:])
    assert NoiseJudge(data).text(a, b).startswith("n/a (a paired bootstrap needs both prediction sets on the same")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(LpdetError, match="broken.json: cannot read the predictions file"):
        load_predictions(tmp_path / "broken.json")
