"""YOLO -> COCO: hand-computed boxes, the common layouts and class-name sources, every bad input."""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from lpdet.data.coco import CocoDetection
from lpdet.data.convert import convert_dataset
from lpdet.data.spec import load_dataset_yaml
from lpdet.errors import LpdetError
from tests.data.convert.fixtures import make_image, tree_digest

SIZE = (50, 40)


def _split(root, images_dir, labels_dir, labels: dict[str, str | None], size=SIZE):
    """labels: image stem -> label file text (None: no label file)."""
    for stem, text in labels.items():
        make_image(root / images_dir / f"{stem}.png", size)
        if text is not None:
            (root / labels_dir).mkdir(parents=True, exist_ok=True)
            (root / labels_dir / f"{stem}.txt").write_text(text)


def _ultralytics(root, names=None):
    _split(root, "images/train", "labels/train", {"a": "1 0.5 0.5 0.2 0.25\n0 0.1 0.125 0.2 0.25\n", "b": None})
    _split(root, "images/val", "labels/val", {"c": "0 0.3 0.6 0.2 0.2\n"})
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val",
                                                    "names": names or {0: "cat", 1: "dog"}}))
    return root


def _coco(out, split):
    return json.loads((out / "annotations" / f"instances_{split}.json").read_text())


def test_yolo_boxes_are_hand_computed_and_round_trip_through_the_loader(tmp_path):
    src = _ultralytics(tmp_path / "yolo")
    before = tree_digest(src)
    spec = load_dataset_yaml(convert_dataset("yolo", src, tmp_path / "out"))
    assert tree_digest(src) == before
    train = _coco(tmp_path / "out", "train")
    assert [c["name"] for c in train["categories"]] == ["cat", "dog"]
    # 50x40 image: centre (25, 20), size 10x10 -> x 20, y 15; centre (5, 5), size 10x10 -> x 0, y 0
    assert [(a["category_id"], a["bbox"]) for a in train["annotations"]] == [(2, [20, 15, 10, 10]), (1, [0, 0, 10, 10])]
    assert [im["file_name"] for im in train["images"]] == ["a.png", "b.png"]  # b: background, kept
    ds = CocoDetection(spec.val.annotations, spec.val.images)
    _, target = ds[0]
    (box,) = target["boxes"].tolist()
    assert box == pytest.approx([10, 20, 20, 28], abs=0.5)  # centre (15, 24), size 10x8
    assert target["labels"].tolist() == [1]


@pytest.mark.parametrize("names_source", ["yaml list", "classes.txt", "obj.names", "--classes"])
def test_yolo_class_names_sources(tmp_path, names_source):
    src = tmp_path / "yolo"
    _split(src, "images/train", "labels/train", {"a": "1 0.5 0.5 0.2 0.2\n"})
    _split(src, "images/val", "labels/val", {"b": "0 0.5 0.5 0.2 0.2\n"})
    classes = None
    if names_source == "yaml list":
        (src / "data.yaml").write_text(yaml.safe_dump({"train": "images/train", "val": "images/val", "names": ["x", "y"]}))
    elif names_source == "--classes":
        classes = tmp_path / "names.txt"
        classes.write_text("x\ny\n")
    else:
        (src / names_source).write_text("x\n\ny\n")
    convert_dataset("yolo", src, tmp_path / "out", classes=classes)
    assert [c["name"] for c in _coco(tmp_path / "out", "train")["categories"]] == ["x", "y"]


def test_yolo_without_class_names_is_an_error_naming_the_fix(tmp_path):
    src = tmp_path / "yolo"
    _split(src, "images/train", "labels/train", {"a": "0 0.5 0.5 0.2 0.2\n"})
    _split(src, "images/val", "labels/val", {"b": "0 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(LpdetError, match="--classes FILE"):
        convert_dataset("yolo", src, tmp_path / "out")
    (src / "classes.txt").write_text("a\nb\na\n")
    with pytest.raises(LpdetError, match="duplicate class name"):
        convert_dataset("yolo", src, tmp_path / "out")


def test_yolo_roboflow_layout_with_parent_relative_yaml_paths(tmp_path):
    src = tmp_path / "rf"
    _split(src, "train/images", "train/labels", {"a": "0 0.5 0.5 0.2 0.2\n"})
    _split(src, "valid/images", "valid/labels", {"b": "0 0.5 0.5 0.2 0.2\n"})
    (src / "data.yaml").write_text(yaml.safe_dump({"train": "../train/images", "val": "../valid/images", "nc": 1,
                                                   "names": ["thing"]}))
    spec = load_dataset_yaml(convert_dataset("yolo", src, tmp_path / "out"))
    assert spec.val.images.resolve() == (src / "valid" / "images").resolve()
    assert len(_coco(tmp_path / "out", "val")["annotations"]) == 1
    # paths relative to some other folder: the tail that exists under SRC
    (src / "data.yaml").write_text(yaml.safe_dump({"train": "./proj/rf/train/images", "val": "./proj/rf/valid/images",
                                                   "names": ["thing"]}))
    spec = load_dataset_yaml(convert_dataset("yolo", src, tmp_path / "out"))
    assert spec.train.images.resolve() == (src / "train" / "images").resolve()
    (src / "data.yaml").write_text(yaml.safe_dump({"train": "elsewhere/images", "val": "valid/images", "names": ["t"]}))
    with pytest.raises(LpdetError, match="image folder 'elsewhere/images' not found"):
        convert_dataset("yolo", src, tmp_path / "out")


def test_yolo_unsplit_folder_needs_val_fraction(tmp_path):
    src = tmp_path / "flat"
    _split(src, "images", "labels", {f"i{k}": "0 0.5 0.5 0.2 0.2\n" for k in range(10)})
    (src / "classes.txt").write_text("thing\n")
    with pytest.raises(LpdetError, match="--val-fraction"):
        convert_dataset("yolo", src, tmp_path / "out")
    convert_dataset("yolo", src, tmp_path / "out", val_fraction=0.2)
    assert [len(_coco(tmp_path / "out", s)["images"]) for s in ("train", "val")] == [8, 2]


def test_yolo_bad_inputs_are_counted_skips_with_one_warning_per_reason(tmp_path, caplog):
    src = tmp_path / "yolo"
    lines = ["0 0.5 0.5 0.2 0.2",          # ok
             "7 0.5 0.5 0.2 0.2",          # class index out of range
             "0 0.5 0.5 0.2",              # 4 fields
             "0 0.5 zero 0.2 0.2",         # not a number
             "0 1.5 1.5 0.2 0.2",          # outside the image
             "0 0.5 0.5 0 0.2",            # no width
             "1 0.1 0.1 0.3 0.1 0.3 0.4"]  # a segment: its bounding box
    _split(src, "images/train", "labels/train", {"a": "\n".join(lines) + "\n", "empty": ""})
    _split(src, "images/val", "labels/val", {"c": "0 0.5 0.5 0.2 0.2\n"})
    (src / "labels/train/orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (src / "images/val/broken.jpg").write_bytes(b"not an image")
    (src / "classes.txt").write_text("cat\ndog\n")
    with caplog.at_level(logging.WARNING, logger="lpdet.data"):
        convert_dataset("yolo", src, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "convert_report.json").read_text())
    counts = {k: v["count"] for k, v in report["skipped"].items()}
    assert counts == {"unknown category": 1, "malformed line": 2, "outside": 1, "degenerate": 1,
                      "label file without image": 1, "unreadable image": 1}
    assert report["notes"] == {"empty label files (kept as background)": 1}
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == len(counts)
    anns = _coco(tmp_path / "out", "train")["annotations"]
    assert [a["bbox"] for a in anns] == [[20, 16, 10, 8], [5, 4, 10, 12]]  # segment: x 0.1..0.3, y 0.1..0.4
    assert [im["file_name"] for im in _coco(tmp_path / "out", "val")["images"]] == ["c.png"]


def test_yolo_exif_rotated_image_uses_the_displayed_size(tmp_path):
    src = tmp_path / "yolo"
    make_image(src / "images/train/r.jpg", (40, 20), exif_orientation=6)  # displayed 20 wide, 40 high
    (src / "labels/train").mkdir(parents=True)
    (src / "labels/train/r.txt").write_text("0 0.5 0.5 0.5 0.25\n")
    _split(src, "images/val", "labels/val", {"v": "0 0.5 0.5 0.2 0.2\n"})
    (src / "classes.txt").write_text("thing\n")
    spec = load_dataset_yaml(convert_dataset("yolo", src, tmp_path / "out"))
    image, target = CocoDetection(spec.train.annotations, spec.train.images)[0]
    assert image.shape[1:] == (40, 20)
    (box,) = target["boxes"].tolist()
    assert box == pytest.approx([5, 15, 15, 25], abs=0.5)


def test_yolo_not_a_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LpdetError, match="--classes"):
        convert_dataset("yolo", tmp_path / "empty", tmp_path / "out")
    (tmp_path / "empty" / "classes.txt").write_text("a\n")
    with pytest.raises(LpdetError, match="not a YOLO dataset folder"):
        convert_dataset("yolo", tmp_path / "empty", tmp_path / "out")
    with pytest.raises(LpdetError, match="unknown format"):
        convert_dataset("coco", tmp_path / "empty", tmp_path / "out")
