"""Pascal VOC -> COCO: hand-computed boxes, difficult, splits, every bad input, the source untouched."""

from __future__ import annotations

import json
import logging

import pytest

from lpdet.cli import main
from lpdet.data.coco import CocoDetection
from lpdet.data.convert import convert_dataset
from lpdet.data.spec import load_dataset_yaml
from lpdet.errors import LpdetError
from tests.data.convert.fixtures import make_image, tree_digest, voc_object, voc_xml, write_voc

SIZE = (40, 30)


def _good(root, splits=None):
    files = {
        "a": (SIZE, voc_xml("a.jpg", SIZE, voc_object("dog", 5, 7, 14, 20), voc_object("cat", 1, 1, 40, 30, difficult=1))),
        "b": (SIZE, voc_xml("b.jpg", SIZE, voc_object("cat", 31, 21, 50, 40, difficult=None))),  # partly outside
        "c": (SIZE, voc_xml("c.jpg", SIZE, voc_object("dog", 2.5, 3, 10.5, 12))),
    }
    return write_voc(root, files, {"train": ["a", "b"], "val": ["c"]} if splits is None else splits)


def _coco(out, split):
    return json.loads((out / "annotations" / f"instances_{split}.json").read_text())


def test_voc_boxes_are_hand_computed_and_round_trip_through_the_loader(tmp_path):
    src = _good(tmp_path / "voc")
    before = tree_digest(src)
    yaml_path = convert_dataset("voc", src, tmp_path / "out")
    assert tree_digest(src) == before  # the source is only read

    train = _coco(tmp_path / "out", "train")
    assert [c["name"] for c in train["categories"]] == ["cat", "dog"]  # sorted names, ids 1..K
    anns = {(a["image_id"], a["category_id"], a["iscrowd"]): a["bbox"] for a in train["annotations"]}
    # xmin 5..xmax 14 (1-based inclusive) covers 10 pixels starting at 0-based 4
    assert anns[(1, 2, 0)] == [4, 6, 10, 14]
    assert anns[(1, 1, 1)] == [0, 0, 40, 30]  # difficult: an ignore region
    assert anns[(2, 1, 0)] == [30, 20, 10, 10]  # clipped to the 40x30 image
    assert _coco(tmp_path / "out", "val")["annotations"][0]["bbox"] == [1.5, 2, 9, 10]  # fractional corners

    spec = load_dataset_yaml(yaml_path)
    assert spec.train.images.resolve() == (src / "JPEGImages").resolve()  # referenced, not copied
    ds = CocoDetection(spec.train.annotations, spec.train.images)
    assert ds.class_names == ["cat", "dog"] and ds.skipped["crowd"] == 1  # difficult is not trained on
    expected = {1: [4, 6, 14, 20], 2: [30, 20, 40, 30]}
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape[1:] == (30, 40)
        (box,) = target["boxes"].tolist()
        assert box == pytest.approx(expected[target["image_id"]], abs=0.5)
    assert ds.coco.getAnnIds(iscrowd=True) != []  # evaluation sees the ignore region


def test_voc_classes_file_fixes_order_and_unknown_names_are_counted(tmp_path, caplog):
    src = _good(tmp_path / "voc")
    classes = tmp_path / "classes.txt"
    classes.write_text("dog\nbird\n")
    with caplog.at_level(logging.WARNING, logger="lpdet.data"):
        convert_dataset("voc", src, tmp_path / "out", classes=classes)
    train = _coco(tmp_path / "out", "train")
    assert [c["name"] for c in train["categories"]] == ["dog", "bird"]
    assert [a["category_id"] for a in train["annotations"]] == [1]
    report = json.loads((tmp_path / "out" / "convert_report.json").read_text())
    assert report["skipped"]["unknown category"]["count"] == 2
    assert [r.getMessage() for r in caplog.records if "unknown category" in r.getMessage()][0].count("a.xml") == 1


def test_voc_bad_inputs_are_counted_skips_with_one_warning_per_reason(tmp_path, caplog):
    files = {
        "ok": (SIZE, voc_xml("ok.jpg", SIZE, voc_object("dog", 5, 5, 10, 10), voc_object("dog", 45, 5, 50, 10),
                             voc_object("dog", 10, 10, 5, 12), "<object><name>dog</name></object>",
                             voc_object("dog", "x", 1, 2, 3))),
        "empty": (SIZE, ""),
        "broken": (SIZE, "<annotation><object>"),
        "noimage": (None, voc_xml("noimage.jpg", SIZE, voc_object("dog", 1, 1, 5, 5))),
        "noxml": (SIZE, None),
        "apath": (None, voc_xml("C:\\labelling\\other.jpg", SIZE, voc_object("dog", 1, 1, 5, 5))),  # by its name
        "wrongname": (SIZE, voc_xml("renamed.png", SIZE, voc_object("dog", 1, 1, 5, 5))),  # found by stem
    }
    src = write_voc(tmp_path / "voc", files, {"train": list(files)[:-1], "val": ["wrongname"]})
    make_image(src / "JPEGImages" / "other.jpg", SIZE)
    with caplog.at_level(logging.WARNING, logger="lpdet.data"):
        convert_dataset("voc", src, tmp_path / "out")
    skipped = json.loads((tmp_path / "out" / "convert_report.json").read_text())["skipped"]
    counts = {k: v["count"] for k, v in skipped.items()}
    assert counts == {"outside": 1, "degenerate": 1, "malformed object": 2, "empty file": 1, "malformed XML": 1,
                      "missing image": 1, "missing annotation file": 1}
    assert skipped["missing image"]["files"][0].endswith("noimage.xml")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(counts)
    assert [im["file_name"] for im in _coco(tmp_path / "out", "train")["images"]] == ["ok.jpg", "other.jpg"]
    assert [im["file_name"] for im in _coco(tmp_path / "out", "val")["images"]] == ["wrongname.jpg"]


def test_voc_splits_trainval_test_and_carved(tmp_path):
    files = {s: (SIZE, voc_xml(f"{s}.jpg", SIZE, voc_object("dog", 1, 1, 5, 5))) for s in "abcdefghij"}
    src = write_voc(tmp_path / "v1", files, {"trainval": list("abcdefgh"), "test": ["i", "j"]})
    convert_dataset("voc", src, tmp_path / "o1")
    assert len(_coco(tmp_path / "o1", "train")["images"]) == 8 and len(_coco(tmp_path / "o1", "val")["images"]) == 2

    src = write_voc(tmp_path / "v2", files, {})
    with pytest.raises(LpdetError, match="--val-fraction"):
        convert_dataset("voc", src, tmp_path / "o2")
    convert_dataset("voc", src, tmp_path / "o2", val_fraction=0.3)
    train, val = (_coco(tmp_path / "o2", s)["images"] for s in ("train", "val"))
    assert len(val) == 3 and len(train) == 7
    assert not {i["file_name"] for i in train} & {i["file_name"] for i in val}
    convert_dataset("voc", src, tmp_path / "o2", val_fraction=0.3)  # a re-run into its own output is fine
    assert _coco(tmp_path / "o2", "val")["images"] == val  # and chooses the same images


def test_voc_copy_images(tmp_path):
    src = _good(tmp_path / "voc")
    spec = load_dataset_yaml(convert_dataset("voc", src, tmp_path / "out", copy_images=True))
    assert spec.val.images.resolve() == (tmp_path / "out" / "images" / "val").resolve()
    assert (spec.val.images / "c.jpg").read_bytes() == (src / "JPEGImages" / "c.jpg").read_bytes()
    assert CocoDetection(spec.val.annotations, spec.val.images)[0] is not None


def test_voc_errors_name_the_file_and_the_fix(tmp_path):
    src = _good(tmp_path / "voc")
    with pytest.raises(LpdetError, match="overlaps the source"):
        convert_dataset("voc", src, src / "coco")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(LpdetError, match="not empty"):
        convert_dataset("voc", src, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(LpdetError, match="not a Pascal VOC folder"):
        convert_dataset("voc", tmp_path / "busy", tmp_path / "o")
    bad = write_voc(tmp_path / "bad", {"a": (SIZE, "")}, {"train": ["a"], "val": ["a"]})
    with pytest.raises(LpdetError, match="no usable <object>"):
        convert_dataset("voc", bad, tmp_path / "o")
    only_train = write_voc(tmp_path / "v3", {"a": (SIZE, voc_xml("a.jpg", SIZE, voc_object("dog", 1, 1, 5, 5))),
                                             "b": (None, voc_xml("b.jpg", SIZE, voc_object("dog", 1, 1, 5, 5)))},
                           {"train": ["a"], "val": ["b"]})
    with pytest.raises(LpdetError, match="no usable image in the val split.*missing image: 1"):
        convert_dataset("voc", only_train, tmp_path / "o")
    assert not (tmp_path / "o" / "data.yaml").exists()


def test_cli_convert_and_its_errors(tmp_path, capsys):
    src = _good(tmp_path / "voc")
    assert main(["data", "convert", "--from", "voc", str(src), "--out", str(tmp_path / "out")]) == 0
    assert "--data" in capsys.readouterr().out
    assert main(["data", "stats", "--data", str(tmp_path / "out" / "data.yaml")]) == 0
    capsys.readouterr()
    assert main(["data", "convert", "--from", "voc", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "nope" in err[0]


def test_exif_rotated_image_size_is_the_displayed_size(tmp_path):
    from lpdet.data.convert.common import image_size
    from lpdet.data.images import load_rgb_image

    path = make_image(tmp_path / "r.jpg", (40, 20), exif_orientation=6)
    assert image_size(path) == (20, 40) == load_rgb_image(path).size
