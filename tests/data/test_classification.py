"""Classification data: synth-cls generation, the ImageFolder dataset YAML and its errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml

from lpdet.cli import main
from lpdet.data.classification import ImageFolderDataset, load_classification_yaml, resolve_classification_data
from lpdet.data.spec import load_dataset_yaml
from lpdet.data.synth import SYNTH_CLASSES, generate_synthetic_classification
from lpdet.data.transforms import eval_transforms, train_transforms
from lpdet.errors import LpdetError


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.jpg"))}


def test_synth_cls_is_deterministic_balanced_and_an_image_folder(tmp_path):
    one = generate_synthetic_classification(tmp_path / "a", n_train=20, n_val=10, seed=3, progress=False, workers=1)
    two = generate_synthetic_classification(tmp_path / "b", n_train=20, n_val=10, seed=3, progress=False, workers=2)
    assert _digests(one.parent) == _digests(two.parent) and len(_digests(one.parent)) == 30
    other = generate_synthetic_classification(tmp_path / "c", n_train=20, n_val=10, seed=4, progress=False, workers=1)
    assert _digests(other.parent) != _digests(one.parent)
    spec = load_classification_yaml(one)
    assert yaml.safe_load(one.read_text())["task"] == "classification"
    train = ImageFolderDataset(spec.train, eval_transforms(48))
    assert train.class_names == sorted(SYNTH_CLASSES) and len(train) == 20
    assert sorted(label for _, label in train.items) == sorted(list(range(10)) * 2)  # two images per class
    image, label = train[0]
    assert image.shape == (3, 48, 48) and 0 <= float(image.min()) <= float(image.max()) <= 1 and label == 0


def test_synth_cls_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LPDET_CACHE", str(tmp_path))
    spec = resolve_classification_data("synth-cls", synth_train=10, synth_val=10)
    assert spec.name == "synth-cls" and spec.train.is_dir()
    stamp = next(spec.train.rglob("*.jpg")).stat().st_mtime_ns
    again = resolve_classification_data("synth-cls", synth_train=10, synth_val=10)
    assert again.train == spec.train and next(again.train.rglob("*.jpg")).stat().st_mtime_ns == stamp


def test_augmentation_depends_only_on_seed_epoch_index(tmp_path):
    yaml_path = generate_synthetic_classification(tmp_path / "d", n_train=10, n_val=10, progress=False, workers=1)
    spec = load_classification_yaml(yaml_path)
    a, b = (ImageFolderDataset(spec.train, train_transforms(32, "light"), seed=1) for _ in range(2))
    b[5]  # a different item first: no shared RNG state
    assert torch.equal(a[3][0], b[3][0])
    a.set_epoch(1)
    assert not torch.equal(a[3][0], b[3][0])


def _yaml(tmp_path: Path, **entries) -> Path:
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump({"task": "classification", **entries}))
    return path


def _class_folder(root: Path, name: str, images: int = 1) -> None:
    from PIL import Image

    (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(images):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / name / f"{i}.png")


def test_missing_folder_is_one_clear_error(tmp_path):
    _class_folder(tmp_path / "train", "cat")
    with pytest.raises(LpdetError, match=r"'val' folder .*nowhere not found; fix the path") as error:
        load_classification_yaml(_yaml(tmp_path, train="train", val="nowhere"))
    assert "\n" not in str(error.value)


def test_empty_class_folder_is_one_clear_error(tmp_path):
    _class_folder(tmp_path / "train", "cat")
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(LpdetError, match=r"dog: class folder holds no images") as error:
        ImageFolderDataset(tmp_path / "train", eval_transforms(32))
    assert "\n" not in str(error.value)


def test_val_classes_must_match_train(tmp_path):
    _class_folder(tmp_path / "train", "cat")
    _class_folder(tmp_path / "train", "dog")
    _class_folder(tmp_path / "val", "cat")
    with pytest.raises(LpdetError, match=r"missing \['dog'\]"):
        ImageFolderDataset(tmp_path / "val", eval_transforms(32), class_names=["cat", "dog"])


def test_detection_commands_refuse_a_classification_yaml(tmp_path):
    _class_folder(tmp_path / "val", "cat")
    with pytest.raises(LpdetError, match="classification dataset"):
        load_dataset_yaml(_yaml(tmp_path, val="val"))


def test_cli_error_is_one_line(tmp_path, capsys):
    _class_folder(tmp_path / "train", "cat")
    (tmp_path / "train" / "dog").mkdir()
    _class_folder(tmp_path / "val", "cat")
    code = main(["classify", "train", "--data", str(_yaml(tmp_path, train="train", val="val")),
                 "--out", str(tmp_path / "run"), "--width", "0.25", "--resolution", "32"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1 and "dog" in errors[0], err
