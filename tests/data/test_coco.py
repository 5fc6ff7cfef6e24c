"""CocoDetection on a dataset with real-world oddities, bad inputs, and the data loader."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import odd_coco  # noqa: E402
from odd_coco import write_odd_coco  # noqa: E402

from lpdet.data.coco import CocoDetection, item_seed  # noqa: E402
from lpdet.data.loader import collate_detection, make_loader  # noqa: E402
from lpdet.data.transforms import eval_transforms, train_transforms  # noqa: E402
from lpdet.errors import LpdetError  # noqa: E402



@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    return write_odd_coco(tmp_path_factory.mktemp("odd"))


@pytest.fixture(scope="module")
def odd_bad(tmp_path_factory):
    return write_odd_coco(tmp_path_factory.mktemp("odd_bad"), bad=True)


@pytest.fixture(scope="module")
def ds(odd):
    return CocoDetection(*odd)


def _index_of(ds, image_id):
    return ds.image_ids.index(image_id)


# --------------------------------------------------------------------------- labels
def test_gapped_category_ids_map_to_contiguous_labels(ds):
    assert ds.category_ids == odd_coco.CATEGORY_IDS
    assert ds.class_names == odd_coco.CLASS_NAMES
    assert ds.num_classes == 4
    for label in range(1, 5):
        assert ds.category_id_to_label(ds.label_to_category_id(label)) == label
    assert [ds.label_to_category_id(lab) for lab in (1, 2, 3, 4)] == [1, 3, 7, 90]
    with pytest.raises(ValueError):
        ds.label_to_category_id(0)  # background has no category
    with pytest.raises(ValueError):
        ds.label_to_category_id(5)


def test_targets_use_labels_not_category_ids(ds):
    _, t = ds[_index_of(ds, 1)]
    assert t["labels"].tolist() == [1, 4]  # category 1 -> 1, category 90 -> 4
    assert t["labels"].dtype == torch.int64
    assert torch.allclose(t["boxes"], torch.tensor([[10.0, 20, 110, 70], [150, 30, 210, 90]]))
    assert t["image_id"] == 1 and t["orig_size"] == (240, 320)


# --------------------------------------------------------------------------- crowd / empty
def test_crowd_excluded_from_targets_but_kept_for_evaluation(ds):
    assert ds.skipped["crowd"] == odd_coco.N_CROWD
    _, t = ds[_index_of(ds, 3)]
    assert t["labels"].tolist() == [2]  # the crowd "person" box is not a target
    crowd = [a for a in ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[1, 3])) if a["iscrowd"]]
    assert len(crowd) == 2
    assert len(ds.coco.getAnnIds()) == 10  # the evaluation ground truth is the whole file


def test_images_without_annotations_are_included(ds):
    assert len(ds) == 9 and set(ds.image_ids) == set(range(1, 10))
    for image_id in (8, 9):
        img, t = ds[_index_of(ds, image_id)]
        assert t["boxes"].shape == (0, 4) and t["boxes"].dtype == torch.float32
        assert t["labels"].shape == (0,) and t["labels"].dtype == torch.int64
        assert img.shape[1:] == t["orig_size"]


def test_coco_matches_pycocotools_on_the_file(odd, ds):
    from pycocotools.coco import COCO

    direct = COCO(str(odd[0]))
    assert direct.dataset == ds.coco.dataset
    assert sorted(direct.getImgIds()) == sorted(ds.coco.getImgIds())
    assert sorted(direct.getCatIds()) == sorted(ds.coco.getCatIds())


# --------------------------------------------------------------------------- image modes
@pytest.mark.parametrize("image_id", [1, 2, 3, 4, 5, 6, 7, 8, 9])
def test_every_mode_loads_as_rgb_float(ds, image_id):
    img, t = ds[_index_of(ds, image_id)]
    assert img.dtype == torch.float32 and img.ndim == 3 and img.shape[0] == 3
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    info = ds.coco.imgs[image_id]
    assert tuple(img.shape[1:]) == (info["height"], info["width"]) == t["orig_size"]


def test_16bit_grayscale_is_scaled_to_8bit(ds):
    img, _ = ds[_index_of(ds, 7)]
    assert float(img.max()) == pytest.approx(1.0, abs=1 / 255)
    assert float(img.min()) == pytest.approx(0.0, abs=1 / 255)
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])


def test_exif_orientation_is_applied(ds):
    img, t = ds[_index_of(ds, odd_coco.EXIF_IMAGE_ID)]
    assert tuple(img.shape) == (3, 300, 200)  # stored 300 x 200, displayed 200 x 300
    assert t["orig_size"] == (300, 200)
    x1, y1, x2, y2 = (int(v) for v in t["boxes"][0].tolist())
    inside = img[:, y1 + 5:y2 - 5, x1 + 5:x2 - 5]
    assert inside[0].mean() > 0.9 and inside[1].mean() < 0.1 and inside[2].mean() < 0.1  # the red square
    assert img[:, :y1 - 5, :].mean() == pytest.approx(128 / 255, abs=0.03)  # grey elsewhere


# --------------------------------------------------------------------------- skips
def test_bad_annotations_are_counted_and_summarised_once(odd_bad, caplog):
    with caplog.at_level(logging.WARNING, logger="lpdet.data"):
        ds = CocoDetection(*odd_bad)
    assert dict(ds.skipped) == {"crowd": odd_coco.N_CROWD, **odd_coco.BAD_SKIPS}
    summary = [r for r in caplog.records if "not used for training" in r.getMessage()]
    assert len(summary) == 1
    for reason in ("degenerate: 2", "outside: 1", "unknown category: 1", "unknown image: 1"):
        assert reason in summary[0].getMessage()
    _, t = ds[_index_of(ds, 2)]
    assert t["labels"].tolist() == [3, 2]  # image 2: its box, then the clipped "car"
    assert t["boxes"][1].tolist() == [140.0, 90.0, 150.0, 100.0]
    # evaluation ground truth keeps everything pycocotools can evaluate; the bbox-less one is gone
    assert len(ds.coco.getAnnIds()) == 10 + 6 - 1


def test_loads_every_annotation_of_a_large_file(tmp_path):
    """100k annotations on 2000 images all arrive (how fast: benchmarks/data_speed.py)."""
    from benchmarks.data_speed import write_large_coco

    (tmp_path / "im").mkdir()
    write_large_coco(tmp_path / "big.json", 2000, 100_000)
    ds = CocoDetection(tmp_path / "big.json", tmp_path / "im")
    assert len(ds) == 2000
    assert sum(len(ds.annotations_of(i)[0]) for i in range(len(ds))) == 100_000


# --------------------------------------------------------------------------- bad inputs
def test_missing_annotation_file(tmp_path):
    with pytest.raises(LpdetError, match="nope.json.*not found"):
        CocoDetection(tmp_path / "nope.json", tmp_path)


def test_missing_images_folder(odd, tmp_path):
    with pytest.raises(LpdetError, match="images folder not found"):
        CocoDetection(odd[0], tmp_path / "no_images")


def test_invalid_json(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('{"images": [')
    with pytest.raises(LpdetError, match="broken.json: not valid JSON") as e:
        CocoDetection(p, tmp_path)
    assert "\n" not in str(e.value)


def test_json_missing_annotations_key(tmp_path):
    p = tmp_path / "noanns.json"
    p.write_text(json.dumps({"images": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(LpdetError, match=r"noanns.json: missing top-level key\(s\) \['annotations'\]"):
        CocoDetection(p, tmp_path)


@pytest.mark.parametrize("data,match", [
    ([1, 2], "expected a COCO JSON object"),
    ({"images": {}, "annotations": [], "categories": []}, "'images' must be a list"),
    ({"images": [], "annotations": [], "categories": []}, "categories: the list is empty"),
    ({"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1}]}, "file_name"),
    ({"images": [], "annotations": [{"id": 1, "bbox": [0, 0, 1, 1]}], "categories": [{"id": 1}]},
     r"annotations\[0\]: missing 'image_id'"),
])
def test_wrong_structure(tmp_path, data, match):
    p = tmp_path / "wrong.json"
    p.write_text(json.dumps(data))
    with pytest.raises(LpdetError, match=match):
        CocoDetection(p, tmp_path)


def test_duplicate_image_ids_are_an_error_naming_the_file_and_the_id(tmp_path):
    p = tmp_path / "dup_images.json"
    p.write_text(json.dumps({"images": [{"id": 4, "file_name": "a.jpg"}, {"id": 4, "file_name": "b.jpg"}],
                             "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(LpdetError, match=r"dup_images.json: images\[1\]: duplicate image id 4; fix the annotation"):
        CocoDetection(p, tmp_path)


def test_duplicate_annotation_ids_are_renumbered_for_evaluation_with_a_warning(tmp_path, caplog):
    """pycocotools indexes annotations by id: on the file as it is, a perfect detector scores below
    1 (one object hidden, another counted twice); on lpdet's renumbered copy it scores 1."""
    from pycocotools.coco import COCO

    from lpdet.eval.coco_eval import coco_metrics

    boxes = [[0, 0, 20, 20], [30, 0, 20, 20], [0, 30, 20, 20]]
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 64}],
            "annotations": [{"id": ann_id, "image_id": 1, "category_id": 1, "bbox": box, "area": 400, "iscrowd": 0}
                            for ann_id, box in zip([7, 7, 8], boxes)],
            "categories": [{"id": 1, "name": "a"}]}
    p = tmp_path / "dup_anns.json"
    p.write_text(json.dumps(data))
    before = p.read_bytes()
    with caplog.at_level(logging.WARNING, logger="lpdet.data"):
        ds = CocoDetection(p, tmp_path)
    assert [r.getMessage() for r in caplog.records] == [
        f"{p}: annotation id(s) 7 used more than once (1 repeats); evaluating on a copy that gives the repeats "
        f"new ids (the file is unchanged); renumber its annotations"]
    assert p.read_bytes() == before
    assert sorted(ds.coco.anns) == [7, 8, 9] and len(ds.annotations_of(0)[0]) == 3
    perfect = [{"image_id": 1, "category_id": 1, "bbox": box, "score": 1.0} for box in boxes]
    raw = COCO()
    raw.dataset = json.loads(before)
    raw.createIndex()
    assert coco_metrics(raw, perfect)["AP"] < 0.9  # what pycocotools alone makes of the file
    assert coco_metrics(ds.coco, perfect)["AP"] == pytest.approx(1.0)


def _single_image_dataset(tmp_path, file_bytes: bytes, name: str) -> CocoDetection:
    (tmp_path / "im").mkdir(exist_ok=True)
    (tmp_path / "im" / name).write_bytes(file_bytes)
    p = tmp_path / "one.json"
    p.write_text(json.dumps({
        "images": [{"id": 1, "file_name": name, "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "a"}],
    }))
    return CocoDetection(p, tmp_path / "im", transform=eval_transforms(32))


def test_corrupt_image_returns_none_and_logs(tmp_path, caplog):
    ds = _single_image_dataset(tmp_path, np.random.default_rng(0).bytes(2000), "corrupt.jpg")
    with caplog.at_level(logging.WARNING, logger="lpdet.data"):
        assert ds[0] is None
    assert any("corrupt.jpg" in r.getMessage() and "cannot read image" in r.getMessage() for r in caplog.records)


def test_truncated_jpeg_returns_none_and_logs(tmp_path, caplog):
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    ds = _single_image_dataset(tmp_path, data[: len(data) // 2], "truncated.jpg")
    with caplog.at_level(logging.WARNING, logger="lpdet.data"):
        assert ds[0] is None
    assert any("truncated.jpg" in r.getMessage() for r in caplog.records)
    assert not __import__("PIL.ImageFile").ImageFile.LOAD_TRUNCATED_IMAGES


def test_missing_image_returns_none_and_logs(odd, tmp_path, caplog):
    data = json.loads(Path(odd[0]).read_text())
    data["images"][0]["file_name"] = "gone.jpg"
    p = tmp_path / "gone.json"
    p.write_text(json.dumps(data))
    ds = CocoDetection(p, odd[1])
    with caplog.at_level(logging.WARNING, logger="lpdet.data"):
        assert ds[0] is None
    assert any("gone.jpg" in r.getMessage() and "not found" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- determinism
def test_item_seed_is_stable():
    assert item_seed(0, 0, 0) == item_seed(0, 0, 0)
    assert len({item_seed(s, e, i) for s in range(3) for e in range(3) for i in range(3)}) == 27


def test_augmentation_depends_on_seed_epoch_index_only(odd):
    ds = CocoDetection(*odd, transform=train_transforms(64), seed=3)
    i = _index_of(ds, 1)
    torch.manual_seed(123)
    a = ds[i]
    torch.manual_seed(456)  # the global RNG does not matter ...
    b = ds[i]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    state = torch.get_rng_state()
    ds[i]
    assert torch.equal(state, torch.get_rng_state())  # ... and is not consumed
    outs = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        outs.append(ds[i][0])
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # ... but the epoch does


# --------------------------------------------------------------------------- loader
def _batches(loader):
    return [(imgs, [t["image_id"] for t in targets], dropped) for imgs, targets, dropped in loader]


def test_loader_same_seed_and_epoch_same_batches(odd):
    ds = CocoDetection(*odd, transform=train_transforms(48), seed=1)
    first = _batches(make_loader(ds, 2, shuffle=True, seed=5, epoch=2, workers=0))
    again = _batches(make_loader(ds, 2, shuffle=True, seed=5, epoch=2, workers=0))
    assert len(first) == len(ds) // 2  # drop_last when training
    for (a, ia, _), (b, ib, _) in zip(first, again):
        assert ia == ib and torch.equal(a, b)
    other = _batches(make_loader(ds, 2, shuffle=True, seed=5, epoch=3, workers=0))
    assert [ids for _, ids, _ in other] != [ids for _, ids, _ in first]


def test_loader_workers_give_the_same_batches(odd):
    ds = CocoDetection(*odd, transform=train_transforms(48), seed=1)
    serial = _batches(make_loader(ds, 3, shuffle=True, seed=0, epoch=1, workers=0))
    ds.set_epoch(7)  # the loader pins its own epoch in the workers
    parallel = _batches(make_loader(ds, 3, shuffle=True, seed=0, epoch=1, workers=2))
    for (a, ia, _), (b, ib, _) in zip(serial, parallel, strict=True):
        assert ia == ib and torch.equal(a, b)


def test_skip_batches_resumes_exactly(odd):
    ds = CocoDetection(*odd, transform=train_transforms(48), seed=2)
    full = _batches(make_loader(ds, 2, shuffle=True, seed=9, epoch=4, workers=0))
    tail = _batches(make_loader(ds, 2, shuffle=True, seed=9, epoch=4, workers=0, skip_batches=2))
    assert len(tail) == len(full) - 2
    for (a, ia, _), (b, ib, _) in zip(full[2:], tail, strict=True):
        assert ia == ib and torch.equal(a, b)


def test_eval_loader_keeps_order_and_last_batch(odd):
    ds = CocoDetection(*odd, transform=eval_transforms(40))
    batches = _batches(make_loader(ds, 4, shuffle=False, seed=0, epoch=0, workers=0))
    assert [ids for _, ids, _ in batches] == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert batches[0][0].shape == (4, 3, 40, 40) and batches[0][0].dtype == torch.float32


def test_loader_does_not_touch_global_rng(odd):
    ds = CocoDetection(*odd, transform=train_transforms(32))
    state = torch.get_rng_state()
    for _ in make_loader(ds, 2, shuffle=True, seed=0, epoch=0, workers=0):
        pass
    assert torch.equal(state, torch.get_rng_state())


def test_collate_drops_none_items():
    img = torch.zeros(3, 8, 8)
    t = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "image_id": 1, "orig_size": (8, 8)}
    images, targets, dropped = collate_detection([None, (img, t), None, (img, dict(t, image_id=2))])
    assert images.shape == (2, 3, 8, 8) and [x["image_id"] for x in targets] == [1, 2] and dropped == 2
    images, targets, dropped = collate_detection([None, None])
    assert images.shape[0] == 0 and targets == [] and dropped == 2


def test_loader_drops_unreadable_items(tmp_path, odd):
    data = json.loads(Path(odd[0]).read_text())
    data["images"][1]["file_name"] = "missing.png"
    p = tmp_path / "with_missing.json"
    p.write_text(json.dumps(data))
    ds = CocoDetection(p, odd[1], transform=eval_transforms(32))
    batches = list(make_loader(ds, 3, shuffle=False, seed=0, epoch=0, workers=0))
    assert [d for _, _, d in batches] == [1, 0, 0]
    assert batches[0][0].shape[0] == 2
