"""COCO size buckets and dataset size statistics."""

from __future__ import annotations

import json

import pytest
from pycocotools.cocoeval import Params

from lpdet.data.sizes import (BUCKETS, DatasetStats, SizeThresholds, compute_stats, dataset_stats, format_stats,
                              object_area, size_bucket)
from lpdet.errors import LpdetError


# --------------------------------------------------------------------------- buckets
@pytest.mark.parametrize("area,bucket", [
    (0.0, "small"), (1.0, "small"), (32**2 - 1e-6, "small"),
    (32**2, "medium"),  # exactly 32² is medium (half-open buckets)
    (50**2, "medium"), (96**2 - 1e-6, "medium"),
    (96**2, "large"),  # exactly 96² is large
    (1e7, "large"),
])
def test_bucket_boundaries(area, bucket):
    assert size_bucket(area) == bucket


def test_default_thresholds_are_cocoevals():
    # pycocotools: all, small, medium, large (closed ranges; we make them half-open)
    rng = Params(iouType="bbox").areaRng
    t = SizeThresholds()
    assert rng[1] == [0, t.small] and rng[2] == [t.small, t.large] and rng[3][0] == t.large
    assert Params(iouType="bbox").areaRngLbl[1:] == list(BUCKETS)


def test_custom_thresholds_and_validation():
    t = SizeThresholds(small=16**2, large=64**2)
    assert [size_bucket(a, t) for a in (255, 256, 4095, 4096)] == ["small", "medium", "medium", "large"]
    with pytest.raises(LpdetError, match="must not exceed"):
        SizeThresholds(small=100, large=10)
    with pytest.raises(LpdetError, match="finite area"):
        SizeThresholds(small=-1)


def test_object_area_prefers_the_area_field():
    assert object_area({"area": 100, "bbox": [0, 0, 40, 40]}) == 100.0  # COCOeval's choice
    assert object_area({"bbox": [0, 0, 40, 30]}) == 1200.0
    assert object_area({"area": None, "bbox": [0, 0, 4, 5]}) == 20.0
    assert object_area({"area": float("nan"), "bbox": [0, 0, 4, 5]}) == 20.0
    assert object_area({"area": True, "bbox": [0, 0, 4, 5]}) == 20.0
    assert object_area({"bbox": [0, 0, 4]}) is None and object_area({}) is None


# --------------------------------------------------------------------------- statistics
def _coco() -> dict:
    def ann(i, img, cat, area=None, bbox=(0, 0, 10, 10), crowd=None):
        a = {"id": i, "image_id": img, "category_id": cat}
        if bbox is not None:
            a["bbox"] = list(bbox)
        if area is not None:
            a["area"] = area
        if crowd is not None:
            a["iscrowd"] = crowd
        return a

    return {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 200} for i in range(1, 6)],
        "categories": [{"id": 3, "name": "dog"}, {"id": 1, "name": "cat"}],
        "annotations": [
            ann(1, 1, 1, area=100),  # small
            ann(2, 1, 3, bbox=(0, 0, 40, 40)),  # no area: bbox 1600 -> medium
            ann(3, 2, 1, area=1024, bbox=(0, 0, 10, 10)),  # area field wins: exactly 32² -> medium
            ann(4, 2, 3, area=9216, crowd=0),  # exactly 96² -> large
            ann(5, 3, 1, area=1023.9),  # small
            ann(6, 3, 1, area=50, crowd=1),  # crowd: not in buckets
            ann(7, 4, 3, area=5000, crowd=1),  # image 4 has only a crowd region
            ann(8, 3, 3, area=20000),  # large
            ann(9, 1, 99, area=100),  # unknown category: not counted
            ann(10, 2, 1, bbox=None),  # no area, no bbox: not counted
            ann(11, 42, 1, area=100),  # unknown image: not counted
        ],  # image 5: no annotations
    }


def test_stats_hand_counted():
    s = compute_stats(_coco())
    assert s == DatasetStats(
        images=5, images_without_objects=2,  # images 4 (crowd only) and 5 (nothing)
        objects={"small": 2, "medium": 2, "large": 2},
        images_with={"small": 2, "medium": 2, "large": 2},  # small: 1, 3; medium: 1, 2; large: 2, 3
        per_class={"cat": {"small": 2, "medium": 1, "large": 0}, "dog": {"small": 0, "medium": 1, "large": 2}},
        crowd=2, skipped=3,
    )
    assert list(s.per_class) == ["cat", "dog"]  # category id order
    assert s.total_objects == 6


def test_stats_custom_thresholds():
    s = compute_stats(_coco(), SizeThresholds(small=1025, large=20000))
    assert s.objects == {"small": 3, "medium": 2, "large": 1}


def test_dataset_stats_from_file_and_format(tmp_path):
    p = tmp_path / "instances.json"
    p.write_text(json.dumps(_coco()))
    s = dataset_stats(p)
    assert s == compute_stats(_coco())
    text = format_stats(s)
    lines = text.splitlines()
    assert "images: 5 (2 without objects)" in text and "crowd regions: 2" in text
    assert any(ln.split()[:5] == ["small", "2", "33.3%", "2", "40.0%"] for ln in lines)
    assert any(ln.split()[:5] == ["dog", "0", "1", "2", "3"] for ln in lines)
    assert "small: area < 1024" in text


def test_dataset_stats_bad_files(tmp_path):
    with pytest.raises(LpdetError, match="not found"):
        dataset_stats(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LpdetError, match="not valid JSON"):
        dataset_stats(bad)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(LpdetError, match="missing top-level"):
        dataset_stats(bad)
    bad.write_text(json.dumps({"images": [], "categories": [], "annotations": [3]}))
    with pytest.raises(LpdetError, match=r"annotations\[0\]"):
        dataset_stats(bad)
