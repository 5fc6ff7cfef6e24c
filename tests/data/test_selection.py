"""The selection split carved from train (`lpdet.data.selection`) and a YAML's own `select:`."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from lpdet.data.coco import CocoDetection
from lpdet.data.filtering import filter_dataset
from lpdet.data.selection import (
    FIT_ANNOTATIONS, SELECT_ANNOTATIONS, SELECTION_REPORT, SELECTION_YAML, check_select_fraction, select_image_ids,
    selection_yaml, split_coco, with_selection_split,
)
from lpdet.data.spec import load_dataset_yaml
from lpdet.errors import LpdetError
from tests.helpers import tiny_synth


@pytest.fixture(scope="module")
def synth_yaml(tmp_path_factory) -> Path:
    return tiny_synth(tmp_path_factory.mktemp("synth"), n_train=30, n_val=3, seed=2)


def _tree_hashes(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file under `root`."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _ids(path: Path, key: str = "images") -> list[int]:
    return [x["id"] for x in json.loads(path.read_text())[key]]


# ----------------------------------------------------------------------------- which images
def test_selected_ids_are_pinned_and_do_not_depend_on_order():
    # pinned values: BLAKE2b is the same on every machine and Python; a change here changes every
    # user's selection split, so it must be deliberate
    assert select_image_ids(range(1, 21), 0.25) == [2, 13, 14, 17, 18]
    assert select_image_ids(range(1, 21), 0.25, seed=1) == [2, 3, 14, 16, 20]
    ids = list(range(1, 101))
    first = select_image_ids(ids, 0.1)
    for trial in range(3):
        random.Random(trial).shuffle(ids)
        assert select_image_ids(ids, 0.1) == first
    assert select_image_ids(ids, 0.1) == select_image_ids(ids, 0.1)


@pytest.mark.parametrize("n,fraction,expected", [(100, 0.1, 10), (100, 0.25, 25), (30, 0.1, 3), (7, 0.1, 1),
                                                 (3, 0.9, 2), (2, 0.5, 1), (1000, 0.001, 1)])
def test_selection_sizes(n, fraction, expected):
    chosen = select_image_ids(range(5000, 5000 + n), fraction)
    assert len(chosen) == expected and len(set(chosen)) == expected
    assert set(chosen) <= set(range(5000, 5000 + n)) and chosen == sorted(chosen)


def test_a_smaller_fraction_selects_part_of_a_larger_one():
    ids = range(1, 501)
    assert set(select_image_ids(ids, 0.05)) < set(select_image_ids(ids, 0.1)) < set(select_image_ids(ids, 0.3))


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, 0.0, 1.0, float("nan"), float("inf"), "0.1", None, True])
def test_bad_fraction_is_a_named_error(fraction, synth_yaml, tmp_path):
    with pytest.raises(LpdetError, match=r"--select-fraction: must be a number between 0 and 1") as e:
        check_select_fraction(fraction)
    assert "\n" not in str(e.value)
    with pytest.raises(LpdetError, match="--select-fraction"):
        select_image_ids(range(10), fraction)
    with pytest.raises(LpdetError, match="--select-fraction"):
        with_selection_split(load_dataset_yaml(synth_yaml), tmp_path / "sel", fraction)
    assert not (tmp_path / "sel").exists()


def test_too_few_images_or_no_train_split(tmp_path):
    with pytest.raises(LpdetError, match=r"1 image\(s\) cannot be split .* 'select:'"):
        select_image_ids([7], 0.5)
    spec = load_dataset_yaml(tiny_synth(tmp_path / "d", n_train=0, n_val=1))
    spec.train = None
    with pytest.raises(LpdetError, match="no 'train' split to carve"):
        with_selection_split(spec, tmp_path / "sel")


def test_split_coco_partitions_images_and_annotations():
    data = {
        "info": {"x": 1}, "categories": [{"id": 3, "name": "a"}],
        "images": [{"id": i, "file_name": f"{i}.jpg"} for i in (5, 1, 4, 2, 3)],
        "annotations": [{"id": 10 + k, "image_id": img, "category_id": 3, "bbox": [0, 0, 2, 2]}
                        for k, img in enumerate([1, 2, 2, 3, 4, 5, 99, "x", [1]])],
    }
    fit, select = split_coco(data, [2, 4])
    assert [im["id"] for im in select["images"]] == [4, 2]  # file order kept
    assert [im["id"] for im in fit["images"]] == [5, 1, 3]
    assert [a["image_id"] for a in select["annotations"]] == [2, 2, 4]
    assert [a["image_id"] for a in fit["annotations"]] == [1, 3, 5, 99, "x", [1]]  # no image: stays in fit
    for part in (fit, select):
        assert part["categories"] == data["categories"] and part["info"] == data["info"]
    assert len(data["images"]) == 5 and len(data["annotations"]) == 9  # the input is not modified


# ----------------------------------------------------------------------------- the written split
def test_carved_split_is_disjoint_complete_and_evaluates_only_its_images(synth_yaml, tmp_path):
    spec = load_dataset_yaml(synth_yaml)
    before = _tree_hashes(spec.root)
    split = with_selection_split(spec, tmp_path / "sel")
    assert _tree_hashes(spec.root) == before  # no user file touched (content and time)

    assert split.root == tmp_path / "sel" and split.name == spec.name
    assert split.train.annotations == tmp_path / "sel" / FIT_ANNOTATIONS
    assert split.select.annotations == tmp_path / "sel" / SELECT_ANNOTATIONS
    assert split.train.images.resolve() == split.select.images.resolve() == spec.train.images.resolve()
    assert split.val.annotations.resolve() == spec.val.annotations.resolve()

    train_ids, fit_ids, select_ids = (_ids(s.annotations) for s in (spec.train, split.train, split.select))
    assert len(select_ids) == 3 and len(fit_ids) == 27  # 10% of 30
    assert not set(fit_ids) & set(select_ids) and set(fit_ids) | set(select_ids) == set(train_ids)
    assert sorted(select_ids) == select_image_ids(train_ids, 0.1)
    report = json.loads((tmp_path / "sel" / SELECTION_REPORT).read_text())
    assert report["select_image_ids"] == sorted(select_ids) and report["images"] == {"fit": 27, "select": 3}

    original = CocoDetection(spec.train.annotations, spec.train.images)
    fit = CocoDetection(split.train.annotations, split.train.images)
    select = CocoDetection(split.select.annotations, split.select.images)
    assert sorted(select.coco.getImgIds()) == sorted(select_ids)  # the evaluation ground truth
    assert {a["image_id"] for a in select.coco.dataset["annotations"]} <= set(select_ids)
    assert fit.class_names == select.class_names == original.class_names
    assert len(fit.coco.anns) + len(select.coco.anns) == len(original.coco.anns)
    for part in (fit, select):  # every training target is the original one of the same image
        for i, image_id in enumerate(part.image_ids):
            j = original.image_ids.index(image_id)
            for got, want in zip(part.annotations_of(i), original.annotations_of(j)):
                assert (got == want).all()


def test_same_ids_whatever_the_annotation_file_order(synth_yaml, tmp_path):
    spec = load_dataset_yaml(synth_yaml)
    data = json.loads(spec.train.annotations.read_text())
    rng = random.Random(0)
    rng.shuffle(data["images"])
    rng.shuffle(data["annotations"])
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    (shuffled / "train.json").write_text(json.dumps(data))
    (shuffled / "data.yaml").write_text(f"train: {{annotations: train.json, images: {spec.train.images}}}\n"
                                        f"val: {{annotations: {spec.val.annotations}, images: {spec.val.images}}}\n")
    a = with_selection_split(spec, tmp_path / "a")
    b = with_selection_split(load_dataset_yaml(shuffled / "data.yaml"), tmp_path / "b")
    assert sorted(_ids(a.select.annotations)) == sorted(_ids(b.select.annotations))
    assert sorted(_ids(a.select.annotations, "annotations")) == sorted(_ids(b.select.annotations, "annotations"))


def test_repeated_call_rewrites_nothing_and_other_fractions_rewrite(synth_yaml, tmp_path):
    spec = load_dataset_yaml(synth_yaml)
    first = with_selection_split(spec, tmp_path / "sel")
    files = _tree_hashes(tmp_path / "sel")
    assert set(files) == {FIT_ANNOTATIONS, SELECT_ANNOTATIONS, SELECTION_REPORT, SELECTION_YAML}
    assert with_selection_split(spec, tmp_path / "sel") == first
    assert _tree_hashes(tmp_path / "sel") == files  # same bytes, same times
    more = with_selection_split(spec, tmp_path / "sel", 0.3)
    assert len(_ids(more.select.annotations)) == 9 and _tree_hashes(tmp_path / "sel") != files


def test_refuses_to_write_over_user_files(synth_yaml, tmp_path):
    spec = load_dataset_yaml(synth_yaml)
    before = _tree_hashes(spec.root)
    with pytest.raises(LpdetError, match="not written by the selection split; choose another folder"):
        with_selection_split(spec, spec.root)  # holds the user's data.yaml
    (tmp_path / "file").write_text("x")
    with pytest.raises(LpdetError, match="is not a folder"):
        with_selection_split(spec, tmp_path / "file")
    # a dataset whose train file sits where the split would write its fit part
    (tmp_path / "ds" / "annotations").mkdir(parents=True)
    clash = tmp_path / "ds" / FIT_ANNOTATIONS
    clash.write_bytes(spec.train.annotations.read_bytes())
    (tmp_path / "ds" / "d.yaml").write_text(f"train: {{annotations: {FIT_ANNOTATIONS}, images: {spec.train.images}}}\n"
                                            f"val: {{annotations: {spec.val.annotations}, images: {spec.val.images}}}\n")
    own = _tree_hashes(tmp_path / "ds")
    with pytest.raises(LpdetError, match="would overwrite the input"):
        with_selection_split(load_dataset_yaml(tmp_path / "ds" / "d.yaml"), tmp_path / "ds")
    assert _tree_hashes(spec.root) == before and _tree_hashes(tmp_path / "ds") == own


# ----------------------------------------------------------------------------- a YAML's own select:
def _with_select(synth_yaml: Path, tmp_path: Path) -> Path:
    spec = load_dataset_yaml(synth_yaml)
    p = tmp_path / "own.yaml"
    p.write_text(f"name: own\ntrain: {{annotations: {spec.train.annotations}, images: {spec.train.images}}}\n"
                 f"select: {{annotations: {spec.val.annotations.parent / 'instances_select.json'}, "
                 f"images: {spec.val.images}}}\n"
                 f"val: {{annotations: {spec.val.annotations}, images: {spec.val.images}}}\n")
    return p


def test_yaml_select_is_honoured_and_nothing_is_written(synth_yaml, tmp_path):
    spec = load_dataset_yaml(synth_yaml)
    own_select = spec.val.annotations.parent / "instances_select.json"
    own_select.write_bytes(spec.val.annotations.read_bytes())
    try:
        yaml_path = _with_select(synth_yaml, tmp_path)
        own = load_dataset_yaml(yaml_path)
        assert own.select.annotations == own_select and own.select.images == spec.val.images
        assert with_selection_split(own, tmp_path / "sel") is own
        assert selection_yaml(yaml_path, tmp_path / "sel") == yaml_path
        assert not (tmp_path / "sel").exists()
    finally:
        own_select.unlink()


def test_selection_yaml_writes_a_loadable_dataset(synth_yaml, tmp_path):
    path = selection_yaml(synth_yaml, tmp_path / "sel", 0.2)
    assert path == tmp_path / "sel" / SELECTION_YAML
    spec = load_dataset_yaml(path)
    assert len(_ids(spec.select.annotations)) == 6 and len(_ids(spec.train.annotations)) == 24


def test_filtering_keeps_the_select_split(synth_yaml, tmp_path):
    split = with_selection_split(load_dataset_yaml(synth_yaml), tmp_path / "sel")
    filtered = load_dataset_yaml(filter_dataset(split, tmp_path / "filtered", drop_images_with="small"))
    assert filtered.select.annotations.resolve() == split.select.annotations.resolve()
    assert filtered.val.annotations.resolve() == split.val.annotations.resolve()
    assert set(_ids(filtered.train.annotations)) <= set(_ids(split.train.annotations))
