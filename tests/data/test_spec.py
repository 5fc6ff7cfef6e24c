"""Dataset YAMLs and `--data synth`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lpdet.data import spec as spec_mod
from lpdet.data.spec import SYNTH_VERSION, DatasetSpec, load_dataset_yaml, resolve_dataset
from lpdet.errors import LpdetError


def _layout(root: Path) -> None:
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"{split}.json").write_text("{}")


GOOD = """\
train: {annotations: annotations/train.json, images: images/train}
val:
  annotations: annotations/val.json
  images: images/val
"""


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path, monkeypatch):
    root = tmp_path / "mydata"
    _layout(root)
    (root / "data.yaml").write_text(GOOD)
    monkeypatch.chdir(tmp_path)  # not the YAML's folder
    spec = load_dataset_yaml(Path("mydata/data.yaml"))
    assert isinstance(spec, DatasetSpec)
    assert spec.name == "mydata" and spec.root == Path("mydata")
    assert spec.train.annotations.resolve() == (root / "annotations" / "train.json").resolve()
    assert spec.val.images.resolve() == (root / "images" / "val").resolve()
    assert spec.val.annotations.is_file() and spec.train.images.is_dir()


def test_name_key_and_val_only(tmp_path):
    _layout(tmp_path)
    p = tmp_path / "evalset.yaml"
    p.write_text("name: bench\nval: {annotations: annotations/val.json, images: images/val}\n")
    spec = load_dataset_yaml(p)
    assert spec.name == "bench" and spec.train is None
    p.write_text("val: {annotations: annotations/val.json, images: images/val}\n")
    assert load_dataset_yaml(p).name == "evalset"


def test_select_split_is_read(tmp_path):
    _layout(tmp_path)
    (tmp_path / "annotations" / "select.json").write_text("{}")
    p = tmp_path / "d.yaml"
    p.write_text(GOOD + "select: {annotations: annotations/select.json, images: images/train}\n")
    spec = load_dataset_yaml(p)
    assert spec.select.annotations == tmp_path / "annotations" / "select.json"
    assert spec.select.images == tmp_path / "images" / "train"
    p.write_text(GOOD)
    assert load_dataset_yaml(p).select is None


def test_written_yaml_round_trips(tmp_path):
    _layout(tmp_path)
    spec = load_dataset_yaml(_write(tmp_path / "d.yaml", GOOD))
    out = spec_mod.write_dataset_yaml(tmp_path / "elsewhere" / "x.yaml", "copy", {"val": spec.val, "select": spec.train})
    text = out.read_text()
    assert text.index("select:") < text.index("val:") and "../annotations/val.json" in text
    again = load_dataset_yaml(out)
    assert again.name == "copy" and again.train is None
    assert again.select.annotations.resolve() == spec.train.annotations.resolve()
    assert again.val.images.resolve() == spec.val.images.resolve()
    with pytest.raises(ValueError, match="unknown split key"):
        spec_mod.write_dataset_yaml(tmp_path / "y.yaml", "bad", {"test": spec.val})


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_absolute_paths_are_kept(tmp_path):
    _layout(tmp_path)
    p = tmp_path / "elsewhere" / "d.yaml"
    p.parent.mkdir()
    p.write_text(f"val: {{annotations: {tmp_path}/annotations/val.json, images: {tmp_path}/images/val}}\n")
    assert load_dataset_yaml(p).val.annotations == tmp_path / "annotations" / "val.json"


@pytest.mark.parametrize("text,match", [
    ("train: {annotations: annotations/train.json, images: images/train}\n", "'val' is missing"),
    ("val: annotations/val.json\n", "'val' must be a mapping"),
    ("val: {images: images/val}\n", r"'val.annotations' is missing"),
    ("val: {annotations: annotations/val.json}\n", r"'val.images' is missing"),
    ("val: {annotations: 3, images: images/val}\n", r"'val.annotations' must be a path string"),
    ("val: {annotations: nope.json, images: images/val}\n", r"'val.annotations' file .*nope.json not found"),
    ("val: {annotations: annotations/val.json, images: nope}\n", r"'val.images' folder .*nope not found"),
    ("val: {annotations: annotations/val.json, images: images/val, labels: x}\n", r"unknown key\(s\) \['labels'\]"),
    ("nc: 3\nval: {annotations: annotations/val.json, images: images/val}\n", r"unknown key\(s\) \['nc'\]"),
    ("train:\nval: {annotations: annotations/val.json, images: images/val}\n", "'train' is empty"),
    ("select:\nval: {annotations: annotations/val.json, images: images/val}\n", "'select' is empty"),
    ("select: annotations/train.json\nval: {annotations: annotations/val.json, images: images/val}\n", "'select' must be a mapping"),
    ("select: {images: images/train}\nval: {annotations: annotations/val.json, images: images/val}\n", r"'select.annotations' is missing"),
    ("select: {annotations: nope.json, images: images/train}\nval: {annotations: annotations/val.json, images: images/val}\n", r"'select.annotations' file .*nope.json not found"),
    ("select: {annotations: annotations/train.json, images: nope}\nval: {annotations: annotations/val.json, images: images/val}\n", r"'select.images' folder .*nope not found"),
    ("select: {annotations: annotations/val.json, images: images/val}\nval: {annotations: annotations/val.json, images: images/val}\n",
     r"'select.annotations' is the 'val' file .* held out from train and val"),
    ("train: {annotations: annotations/train.json, images: images/train}\n"
     "select: {annotations: ./annotations/train.json, images: images/train}\nval: {annotations: annotations/val.json, images: images/val}\n",
     r"'select.annotations' is the 'train' file"),
    ("- a\n- b\n", "expected a mapping"),
    ("val: {annotations: [\n", "not valid YAML"),
])
def test_bad_yaml(tmp_path, text, match):
    _layout(tmp_path)
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(LpdetError, match=match) as e:
        load_dataset_yaml(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_resolve_paths(tmp_path):
    root = tmp_path / "ds"
    _layout(root)
    (root / "data.yaml").write_text(GOOD)
    assert resolve_dataset(str(root / "data.yaml")).name == "ds"
    assert resolve_dataset(str(root)).val.images == root / "images" / "val"  # a folder with data.yaml
    with pytest.raises(LpdetError, match=r"--data .*foo.yaml: no such file; pass a dataset YAML .* or 'synth'"):
        resolve_dataset(str(tmp_path / "foo.yaml"))
    with pytest.raises(LpdetError, match="no data.yaml"):
        resolve_dataset(str(tmp_path / "ds" / "images"))


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LPDET_CACHE", str(tmp_path / "c"))
    assert spec_mod.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LPDET_CACHE")
    assert spec_mod.default_cache_dir() == Path.home() / ".cache" / "lpdet"


def test_synth_generates_once_into_the_cache(monkeypatch, tmp_path):
    synth = pytest.importorskip("lpdet.data.synth")
    monkeypatch.setenv("LPDET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(spec_mod, "SYNTH_DEFAULT_TRAIN", 3)
    monkeypatch.setattr(spec_mod, "SYNTH_DEFAULT_VAL", 2)
    calls = []
    real = synth.generate_synthetic_coco

    def counting(*args, **kwargs):
        calls.append(args[0] if args else kwargs["out_dir"])
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "generate_synthetic_coco", counting)
    spec = resolve_dataset("synth")
    final = tmp_path / "cache" / f"synth-{SYNTH_VERSION}-train3-val2-seed0"
    assert spec.name == "synth" and spec.root == final
    assert spec.train.annotations.is_file() and spec.val.images.is_dir()
    assert len(list(spec.val.images.iterdir())) == 2
    assert len(calls) == 1 and Path(calls[0]).parent == final.parent and Path(calls[0]) != final
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [final.name]  # no temp folder left

    again = resolve_dataset("synth")  # reused, not regenerated
    assert again == spec and len(calls) == 1

    from lpdet.data.coco import CocoDetection

    ds = CocoDetection(spec.val.annotations, spec.val.images)
    assert len(ds) == 2 and ds.num_classes == 10


def test_synth_interrupted_generation_is_redone(monkeypatch, tmp_path):
    synth = pytest.importorskip("lpdet.data.synth")
    cache = tmp_path / "cache"

    def crash(out_dir, *a, **k):
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "half.jpg").write_bytes(b"x")
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "generate_synthetic_coco", crash)
    with pytest.raises(KeyboardInterrupt):
        resolve_dataset("synth", cache_dir=cache, synth_train=2, synth_val=1)
    assert list(cache.iterdir()) == []  # nothing half-made is left to be reused
    # a temp folder from a killed process (pid gone) is cleaned up on the next run
    stale = cache / f".{spec_mod.synth_dir_name(2, 1, 0)}.tmp-{2**22 + 12345}-deadbeef"
    stale.mkdir()
    monkeypatch.undo()
    spec = resolve_dataset("synth", cache_dir=cache, synth_train=2, synth_val=1)
    assert spec.val.annotations.is_file() and not stale.exists()
    assert sorted(p.name for p in cache.iterdir()) == [f"synth-{SYNTH_VERSION}-train2-val1-seed0"]
    assert os.listdir(cache / f"synth-{SYNTH_VERSION}-train2-val1-seed0" / "images" / "train")
