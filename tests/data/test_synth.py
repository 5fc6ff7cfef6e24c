"""The synthetic COCO generator: format, determinism, size distribution, clutter, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools.coco import COCO

from lpdet.data.synth import SYNTH_CLASSES, generate_synthetic_coco
from lpdet.errors import LpdetError


def _load(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def _iou_any_overlap(boxes: list[list[float]]) -> bool:
    """Whether any two xywh boxes intersect."""
    for i, (x, y, w, h) in enumerate(boxes):
        for x2, y2, w2, h2 in boxes[i + 1:]:
            if min(x + w, x2 + w2) > max(x, x2) and min(y + h, y2 + h2) > max(y, y2):
                return True
    return False


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """One 60+8-image dataset shared by the read-only tests (generation is the slow part)."""
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_coco(root, n_train=60, n_val=8, seed=3, progress=False)
    return root


def test_writes_valid_coco(dataset: Path):
    for split, n in (("train", 60), ("val", 8)):
        coco = COCO(str(dataset / "annotations" / f"instances_{split}.json"))
        cats = coco.loadCats(coco.getCatIds())
        assert len(cats) >= 8
        assert [c["id"] for c in cats] == list(range(1, len(cats) + 1))
        assert [c["name"] for c in cats] == list(SYNTH_CLASSES)
        assert len(coco.getImgIds()) == n
        anns = coco.loadAnns(coco.getAnnIds())
        assert len({a["id"] for a in anns}) == len(anns)
        for img in coco.loadImgs(coco.getImgIds()):
            path = dataset / "images" / split / img["file_name"]
            with Image.open(path) as im:
                assert im.format == "JPEG" and im.mode == "RGB"
                assert im.size == (img["width"], img["height"])
            assert 256 <= img["width"] <= 384 and 256 <= img["height"] <= 384
        for a in anns:
            img = coco.imgs[a["image_id"]]
            x, y, w, h = a["bbox"]
            assert all(isinstance(v, float) for v in a["bbox"])
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= img["width"] and y + h <= img["height"]
            assert a["area"] == pytest.approx(w * h)
            assert a["iscrowd"] == 0
            assert 1 <= a["category_id"] <= len(cats)


def test_yaml_points_at_existing_files(dataset: Path):
    spec = yaml.safe_load((dataset / "data.yaml").read_text())
    assert spec["name"] == "synth"
    for split in ("train", "val"):
        assert set(spec[split]) == {"annotations", "images"}
        for key in ("annotations", "images"):
            rel = Path(spec[split][key])
            assert not rel.is_absolute()
            assert (dataset / rel).exists()
        assert (dataset / spec[split]["annotations"]).is_file()
        assert (dataset / spec[split]["images"]).is_dir()


def test_size_buckets_like_coco(dataset: Path):
    areas = np.array([a["area"] for a in _load(dataset, "train")["annotations"]])
    small, large = (areas < 32**2).mean(), (areas > 96**2).mean()
    medium = 1 - small - large
    assert abs(small - 0.40) < 0.12, small
    assert abs(medium - 0.35) < 0.12, medium
    assert abs(large - 0.25) < 0.12, large


def test_scenes_are_crowded_and_occluded(dataset: Path):
    data = _load(dataset, "train")
    per_image: dict[int, list] = {img["id"]: [] for img in data["images"]}
    for a in data["annotations"]:
        per_image[a["image_id"]].append(a["bbox"])
    counts = np.array([len(b) for b in per_image.values()])
    assert 4.0 <= counts.mean() <= 8.0, counts.mean()
    assert counts.max() <= 12
    overlapping = sum(_iou_any_overlap(b) for b in per_image.values())
    assert overlapping >= len(per_image) // 3
    used = {a["category_id"] for a in data["annotations"]}
    assert len(used) >= 8  # 60 images show (nearly) every class


def test_images_vary(dataset: Path):
    """Backgrounds differ: not one template with shapes pasted on."""
    means = []
    for name in sorted((dataset / "images" / "train").iterdir())[:10]:
        with Image.open(name) as im:
            means.append(np.asarray(im.resize((8, 8)), np.float32))
    spread = np.std(np.stack(means), axis=0).mean()
    assert spread > 15


def test_deterministic_per_seed(tmp_path: Path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_synthetic_coco(a, 6, 2, seed=7, progress=False)
    generate_synthetic_coco(b, 6, 2, seed=7, progress=False, workers=2)  # order must not matter
    generate_synthetic_coco(c, 6, 2, seed=8, progress=False)
    for split in ("train", "val"):
        ann = f"annotations/instances_{split}.json"
        assert (a / ann).read_bytes() == (b / ann).read_bytes()
        assert (a / ann).read_bytes() != (c / ann).read_bytes()
    for img in sorted((a / "images").rglob("*.jpg")):
        rel = img.relative_to(a)
        assert img.read_bytes() == (b / rel).read_bytes(), rel
    first = "images/train/000000000001.jpg"
    assert (a / first).read_bytes() != (c / first).read_bytes()
    # train and val are drawn from different streams
    assert (a / first).read_bytes() != (a / "images/val/000000000001.jpg").read_bytes()


def test_returns_yaml_path_and_allows_empty_train(tmp_path: Path):
    path = generate_synthetic_coco(tmp_path / "d", 0, 1, progress=False)
    assert path == tmp_path / "d" / "data.yaml" and path.is_file()
    assert _load(tmp_path / "d", "train")["images"] == []
    assert len(_load(tmp_path / "d", "val")["images"]) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_train": -1, "n_val": 1},
        {"n_train": 2, "n_val": 0},
        {"n_train": 2.5, "n_val": 1},
        {"n_train": 2, "n_val": 1, "seed": -3},
        {"n_train": 2, "n_val": 1, "seed": "x"},
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs):
    with pytest.raises(LpdetError):
        generate_synthetic_coco(tmp_path / "d", progress=False, **kwargs)
    assert not (tmp_path / "d" / "data.yaml").exists()


def test_out_dir_is_a_file(tmp_path: Path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(LpdetError, match="not a directory"):
        generate_synthetic_coco(f, 1, 1, progress=False)


def test_stale_outputs_removed_before_generation(tmp_path: Path, monkeypatch):
    """An interrupted regeneration must not leave the previous (valid-looking) JSON/YAML."""
    generate_synthetic_coco(tmp_path, 2, 1, progress=False)
    import lpdet.data.synth.writer as writer

    def boom(task):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "make_image", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_coco(tmp_path, 2, 1, progress=False)
    assert not (tmp_path / "data.yaml").exists()
    assert not list((tmp_path / "annotations").glob("*.json"))


def test_refuses_a_folder_it_did_not_write(tmp_path: Path):
    """A user's dataset folder is never regenerated over: its files stay byte for byte."""
    user = tmp_path / "mydata"
    (user / "annotations").mkdir(parents=True)
    (user / "data.yaml").write_text("name: mine\n")
    (user / "annotations" / "instances_train.json").write_text("{}")
    before = {p: p.read_bytes() for p in user.rglob("*") if p.is_file()}
    with pytest.raises(LpdetError, match="not empty and was not written by `lpdet data synth`"):
        generate_synthetic_coco(user, 2, 1, progress=False)
    assert {p: p.read_bytes() for p in user.rglob("*") if p.is_file()} == before


def test_regenerates_its_own_folder_and_fills_an_empty_one(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    first = generate_synthetic_coco(tmp_path / "empty", 2, 1, progress=False)
    again = generate_synthetic_coco(tmp_path / "empty", 2, 1, progress=False)
    assert first == again and again.is_file()
