"""`lpdet data coco`: the dataset YAML for a (tiny, fake) COCO 2017 layout."""

from __future__ import annotations

import json

import pytest

from lpdet.cli import main
from lpdet.data.coco import CocoDetection
from lpdet.data.coco2017 import write_coco2017_yaml
from lpdet.data.spec import load_dataset_yaml
from lpdet.errors import LpdetError
from tests.data.convert.fixtures import make_image, tree_digest


def _fake_coco(root):
    for split in ("train", "val"):
        make_image(root / f"{split}2017" / "000000000001.jpg", (32, 24))
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps({
            "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 32, "height": 24}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 18, "bbox": [2, 3, 10, 8], "area": 80, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]}))
    return root


def test_writes_a_loadable_yaml_outside_the_coco_folder(tmp_path):
    root = _fake_coco(tmp_path / "coco")
    before = tree_digest(root)
    out = write_coco2017_yaml(root, tmp_path / "cfg" / "coco2017.yaml")
    assert tree_digest(root) == before
    spec = load_dataset_yaml(out)
    assert spec.name == "coco2017"
    assert spec.train.images.resolve() == (root / "train2017").resolve()
    ds = CocoDetection(spec.val.annotations, spec.val.images)
    assert ds.class_names == ["person", "dog"] and ds[0][1]["labels"].tolist() == [2]
    assert write_coco2017_yaml(root, out) == out  # same content again: fine
    out.write_text("name: mine\n")
    with pytest.raises(LpdetError, match="exists with other content"):
        write_coco2017_yaml(root, out)
    assert out.read_text() == "name: mine\n"


def test_missing_parts_are_all_named(tmp_path):
    root = _fake_coco(tmp_path / "coco")
    (root / "annotations" / "instances_val2017.json").unlink()
    (root / "train2017" / "000000000001.jpg").unlink()
    (root / "train2017").rmdir()
    with pytest.raises(LpdetError, match=r"missing annotations/instances_val2017.json, train2017/; unpack"):
        write_coco2017_yaml(root, tmp_path / "c.yaml")
    with pytest.raises(LpdetError, match="folder not found"):
        write_coco2017_yaml(tmp_path / "nope", tmp_path / "c.yaml")


def test_cli(tmp_path, capsys):
    root = _fake_coco(tmp_path / "coco")
    assert main(["data", "coco", "--root", str(root), "--out", str(tmp_path / "coco2017.yaml")]) == 0
    assert "--data" in capsys.readouterr().out
    assert main(["data", "coco", "--root", str(tmp_path), "--out", str(tmp_path / "x.yaml")]) == 2
    assert capsys.readouterr().err.startswith("error: --root")
