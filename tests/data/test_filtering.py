"""Dropping training images that contain objects of given size buckets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from lpdet.data.coco import CocoDetection
from lpdet.data.filtering import filter_dataset
from lpdet.data.sizes import SizeThresholds
from lpdet.data.spec import load_dataset_yaml
from lpdet.errors import LpdetError


def _ann(i, img, area, crowd=0):
    side = area**0.5
    return {"id": i, "image_id": img, "category_id": 1, "bbox": [1, 1, side, side], "area": area, "iscrowd": crowd}


TRAIN = [  # (image id, annotations); image ids deliberately out of order in the file
    (5, [_ann(50, 5, 32**2)]),  # exactly 32²: medium -> kept
    (1, [_ann(10, 1, 100), _ann(11, 1, 100**2)]),  # small + large -> dropped for "small"
    (3, [_ann(30, 3, 100, crowd=1), _ann(31, 3, 120**2)]),  # the small one is crowd -> kept
    (2, [_ann(20, 2, 40**2)]),  # medium
    (6, [_ann(60, 6, 10)]),  # small only
    (4, []),  # no objects
]
VAL = [(7, [_ann(70, 7, 100)]), (8, [_ann(80, 8, 300), _ann(81, 8, 50**2)])]  # both hold small objects


def _split(root: Path, name: str, items) -> None:
    (root / "images" / name).mkdir(parents=True)
    images, anns = [], []
    for img_id, a in items:
        Image.new("RGB", (8, 8), (img_id * 20, 0, 0)).save(root / "images" / name / f"{img_id}.png")
        images.append({"id": img_id, "file_name": f"{img_id}.png", "width": 200, "height": 200})
        anns += a
    data = {"info": {"description": "hand-made"}, "images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "thing"}]}
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"{name}.json").write_text(json.dumps(data))


@pytest.fixture()
def spec(tmp_path):
    root = tmp_path / "ds"
    _split(root, "train", TRAIN)
    _split(root, "val", VAL)
    (root / "data.yaml").write_text("train: {annotations: annotations/train.json, images: images/train}\n"
                                    "val: {annotations: annotations/val.json, images: images/val}\n")
    return load_dataset_yaml(root / "data.yaml")


def test_drops_images_with_small_objects(spec, tmp_path):
    out = tmp_path / "out"
    yaml_path = filter_dataset(spec, out)
    assert yaml_path == out / "data.yaml"
    ann = out / "annotations" / "instances_train.filtered.json"
    data = json.loads(ann.read_text())
    assert [im["id"] for im in data["images"]] == [2, 3, 4, 5]  # sorted
    assert [a["id"] for a in data["annotations"]] == [20, 30, 31, 50]  # crowd kept with its image
    assert data["categories"] == [{"id": 1, "name": "thing"}] and data["info"] == {"description": "hand-made"}

    # paths relative to the new YAML, pointing at the original images; val is the original split
    text = yaml_path.read_text()
    assert str(tmp_path) not in text and "../ds/images/train" in text
    new = load_dataset_yaml(yaml_path)
    assert new.name == "ds-no-small"
    assert new.train.images.resolve() == spec.train.images.resolve()
    assert new.val.annotations.resolve() == spec.val.annotations.resolve()
    assert new.val.images.resolve() == spec.val.images.resolve()

    ds = CocoDetection(new.train.annotations, new.train.images)
    assert ds.image_ids == [2, 3, 4, 5]
    image, target = ds[0]
    assert image.shape == (3, 8, 8) and target["image_id"] == 2
    assert CocoDetection(new.val.annotations, new.val.images).image_ids == [7, 8]

    report = json.loads((out / "filter_report.json").read_text())
    assert report["drop_images_with"] == ["small"] and report["removed_images"] == 2
    assert report["before"]["images"] == 6 and report["after"]["images"] == 4
    assert report["before"]["objects"] == {"small": 2, "medium": 2, "large": 2}
    assert report["after"]["objects"] == {"small": 0, "medium": 2, "large": 1}
    assert report["after"]["crowd"] == 1


def test_several_buckets_thresholds_and_determinism(spec, tmp_path):
    a = filter_dataset(spec, tmp_path / "a", drop_images_with=["medium", "small"])
    b = filter_dataset(spec, tmp_path / "b", drop_images_with=("small", "medium"))
    fa = a.parent / "annotations" / "instances_train.filtered.json"
    fb = b.parent / "annotations" / "instances_train.filtered.json"
    assert fa.read_bytes() == fb.read_bytes()
    assert [im["id"] for im in json.loads(fa.read_text())["images"]] == [3, 4]
    assert a.read_text() == b.read_text() and load_dataset_yaml(a).name == "ds-no-small-medium"
    # a plain string is one bucket; thresholds move objects between buckets
    c = filter_dataset(spec, tmp_path / "c", drop_images_with="small", thresholds=SizeThresholds(small=32**2 + 1))
    fc = c.parent / "annotations" / "instances_train.filtered.json"
    assert [im["id"] for im in json.loads(fc.read_text())["images"]] == [2, 3, 4]  # 32² is now small
    # rerunning into the same folder replaces its output
    assert filter_dataset(spec, tmp_path / "a", drop_images_with=["medium", "small"]) == a


def test_errors(spec, tmp_path):
    with pytest.raises(LpdetError, match=r"unknown size bucket.*\['tiny'\].*valid: \['small', 'medium', 'large'\]"):
        filter_dataset(spec, tmp_path / "x", drop_images_with=["tiny", "small"])
    with pytest.raises(LpdetError, match="leave no val images"):
        filter_dataset(spec, tmp_path / "x", split="val")  # every val image has a small object
    with pytest.raises(LpdetError, match="unknown split"):
        filter_dataset(spec, tmp_path / "x", split="test")
    assert not (tmp_path / "x").exists()
    with pytest.raises(LpdetError, match="not written by a dataset filter"):
        filter_dataset(spec, spec.root)  # would overwrite the original data.yaml
    spec.train = None
    with pytest.raises(LpdetError, match="no 'train' split"):
        filter_dataset(spec, tmp_path / "x")
