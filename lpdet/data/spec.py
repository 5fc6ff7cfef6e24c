"""Which dataset: a dataset YAML, or ``synth`` (the embedded synthetic dataset).

Dataset YAML (paths relative to the YAML's folder)::

    name: mydata            # optional; default: the YAML's name (its folder's for data.yaml)
    train:                  # optional (evaluation-only datasets have just val:)
      annotations: annotations/train.json
      images: images/train
    val:
      annotations: annotations/val.json
      images: images/val
    select:                 # optional: held-out images the design's choices are made on (else
      annotations: ...      # `lpdet.data.selection` carves them from train); never train or val
      images: ...

``synth`` is generated on first use into ``default_cache_dir() / synth-{SYNTH_VERSION}-train{N}-val{M}-seed{S}``
(``$LPDET_CACHE`` or ``~/.cache/lpdet``) and reused afterwards. Generation writes to a
temporary sibling folder that is renamed into place only when complete, so an interrupted
generation is redone rather than half-used.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from lpdet.errors import LpdetError
from lpdet.serialize import atomic_write_text, load_mapping

__all__ = [
    "SplitSpec", "DatasetSpec", "SPLIT_KEYS", "load_dataset_yaml", "dataset_yaml_text", "write_dataset_yaml", "resolve_dataset",
    "find_yaml",
    "default_cache_dir", "cached_dataset_yaml",
    "synth_dir_name", "SYNTH_DEFAULT_TRAIN", "SYNTH_DEFAULT_VAL", "SYNTH_DEFAULT_SEED", "SYNTH_VERSION",
]

SYNTH_VERSION = "v4"  # bump when the generator's output changes, so old caches are not reused
SYNTH_DEFAULT_TRAIN = 4000
SYNTH_DEFAULT_VAL = 500
SYNTH_DEFAULT_SEED = 0

_DATA_HELP = "pass a dataset YAML (train:/val: with annotations and images) or 'synth'"
SPLIT_KEYS = ("train", "select", "val")  # a dataset YAML's splits, in the order they are written


@dataclass
class SplitSpec:
    annotations: Path
    images: Path


@dataclass
class DatasetSpec:
    name: str
    val: SplitSpec
    train: SplitSpec | None = None
    root: Path | None = None
    select: SplitSpec | None = None  # held out from training; the design chooses on it, val is only reported


def default_cache_dir() -> Path:
    """``$LPDET_CACHE`` if set, else ``~/.cache/lpdet``."""
    env = os.environ.get("LPDET_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lpdet"


# ---------------------------------------------------------------------------- YAML
def _split(path: Path, data: dict, key: str) -> SplitSpec:
    root = path.parent
    value = data[key]
    example = f"{key}: {{annotations: {key}.json, images: images/{key}}}"
    if not isinstance(value, dict):
        raise LpdetError(f"{path}: '{key}' must be a mapping with 'annotations' and 'images', got "
                         f"{type(value).__name__}; write e.g. '{example}'")
    unknown = sorted(set(value) - {"annotations", "images"})
    if unknown:
        raise LpdetError(f"{path}: '{key}' has unknown key(s) {unknown}; use 'annotations' and 'images'")
    paths = {}
    for sub in ("annotations", "images"):
        if sub not in value or value[sub] is None:
            raise LpdetError(f"{path}: '{key}.{sub}' is missing; write e.g. '{example}'")
        if not isinstance(value[sub], str) or not value[sub]:
            raise LpdetError(f"{path}: '{key}.{sub}' must be a path string, got {value[sub]!r}")
        p = Path(value[sub]).expanduser()
        paths[sub] = p if p.is_absolute() else root / p
    if not paths["annotations"].is_file():
        raise LpdetError(f"{path}: '{key}.annotations' file {paths['annotations']} not found; fix the path "
                         f"(relative paths are relative to {root})")
    if not paths["images"].is_dir():
        raise LpdetError(f"{path}: '{key}.images' folder {paths['images']} not found; fix the path "
                         f"(relative paths are relative to {root})")
    return SplitSpec(annotations=paths["annotations"], images=paths["images"])


def load_dataset_yaml(path: Path) -> DatasetSpec:
    """Read and check a dataset YAML; all paths in the result are resolved and exist."""
    path = Path(path).expanduser()
    data = load_mapping(path)  # LpdetError for a missing file / bad YAML / non-mapping
    if data.get("task") == "classification":
        raise LpdetError(f"{path}: a classification dataset (task: classification); use it with `lpdet classify` "
                         f"and a classifier (--arch mobilenet_v2_classifier), or pass a detection dataset")
    unknown = sorted(set(data) - {"name", *SPLIT_KEYS})
    if unknown:
        raise LpdetError(f"{path}: unknown key(s) {unknown}; a dataset YAML has 'train:' and 'val:' "
                         "(each with 'annotations' and 'images'), an optional 'select:' like them and an "
                         "optional 'name:'")
    if "val" not in data:
        raise LpdetError(f"{path}: 'val' is missing; add 'val: {{annotations: val.json, images: images/val}}'")
    name = data.get("name")
    if name is None:
        name = path.parent.name if path.stem == "data" and path.parent.name else path.stem
    elif not isinstance(name, str) or not name:
        raise LpdetError(f"{path}: 'name' must be a non-empty string, got {name!r}")
    for key in ("train", "select"):
        if key in data and data[key] is None:
            raise LpdetError(f"{path}: '{key}' is empty; give it annotations and images, or remove the key")
    splits = {key: _split(path, data, key) for key in SPLIT_KEYS if key in data}
    _check_select_is_held_out(path, splits)
    return DatasetSpec(name=name, val=splits["val"], train=splits.get("train"), root=path.parent,
                       select=splits.get("select"))


def _check_select_is_held_out(path: Path, splits: dict[str, SplitSpec]) -> None:
    """`select` must not be the train or val file: choosing on them makes the reported numbers optimistic."""
    if "select" not in splits:
        return
    chosen = Path(os.path.abspath(splits["select"].annotations))
    for key in ("train", "val"):
        if key in splits and Path(os.path.abspath(splits[key].annotations)) == chosen:
            raise LpdetError(f"{path}: 'select.annotations' is the '{key}' file {chosen}; the selection split "
                             "must be held out from train and val: give it its own images, or remove 'select:' "
                             "to carve it from train")


def _relative(target: Path, start: Path) -> str:
    """`target` relative to folder `start` (POSIX separators), or absolute where none exists."""
    target = Path(os.path.abspath(target))
    try:
        return Path(os.path.relpath(target, os.path.abspath(start))).as_posix()
    except ValueError:  # no relative path (e.g. another drive on Windows)
        return str(target)


def dataset_yaml_text(path: Path, name: str, splits: dict[str, SplitSpec]) -> str:
    """The text of a dataset YAML at `path` whose paths are relative to its folder.

    `splits` maps keys of `SPLIT_KEYS` to their files; they are written in `SPLIT_KEYS` order.
    """
    path = Path(path)
    unknown = sorted(set(splits) - set(SPLIT_KEYS))
    if unknown:
        raise ValueError(f"unknown split key(s) {unknown}; valid: {list(SPLIT_KEYS)}")
    doc: dict = {"name": name}
    for key in SPLIT_KEYS:
        if key in splits:
            doc[key] = {"annotations": _relative(splits[key].annotations, path.parent),
                        "images": _relative(splits[key].images, path.parent)}
    return yaml.safe_dump(doc, sort_keys=False)


def write_dataset_yaml(path: Path, name: str, splits: dict[str, SplitSpec]) -> Path:
    """Write `dataset_yaml_text` to `path` atomically; return `path`."""
    atomic_write_text(Path(path), dataset_yaml_text(path, name, splits))
    return Path(path)


# ---------------------------------------------------------------------------- synth
def synth_dir_name(n_train: int, n_val: int, seed: int) -> str:
    return f"synth-{SYNTH_VERSION}-train{n_train}-val{n_val}-seed{seed}"


def _find_yaml(folder: Path) -> Path | None:
    if (folder / "data.yaml").is_file():
        return folder / "data.yaml"
    found = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))
    return found[0] if len(found) == 1 else None


find_yaml = _find_yaml  # `folder`'s data.yaml, else its only *.yaml; also finds a YOLO dataset's YAML (data/convert)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale_tmp(cache_dir: Path, name: str) -> None:
    """Remove temporary folders of generations whose process is gone (killed mid-way)."""
    for tmp in cache_dir.glob(f".{name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        if not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def _synth(cache_dir: Path | None, n_train: int, n_val: int, seed: int) -> DatasetSpec:
    def generate(tmp: Path) -> Path:
        from lpdet.data.synth import generate_synthetic_coco  # lazy: heavy, and optional here

        return generate_synthetic_coco(tmp, n_train=n_train, n_val=n_val, seed=seed, progress=True)

    spec = load_dataset_yaml(cached_dataset_yaml(cache_dir, synth_dir_name(n_train, n_val, seed), generate))
    spec.name = "synth"
    return spec


def cached_dataset_yaml(cache_dir: Path | None, name: str, generate) -> Path:
    """The dataset YAML of the generated dataset ``cache_dir / name`` (default cache:
    `default_cache_dir`), made first by ``generate(tmp_folder) -> yaml path`` in a temporary sibling
    folder renamed into place when complete (`synth`, `synth-cls`)."""
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = cache_dir / name
    yaml_path = _find_yaml(final) if final.is_dir() else None
    if yaml_path is None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LpdetError(f"{cache_dir}: cannot create the dataset cache ({e.strerror or e}); "
                             "set LPDET_CACHE to a writable folder") from None
        _remove_stale_tmp(cache_dir, name)
        tmp = cache_dir / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            made = Path(generate(tmp))
            rel = made.resolve().relative_to(tmp.resolve())
            if final.exists() and _find_yaml(final) is None:
                shutil.rmtree(final)  # an unusable leftover (not made by this code's rename)
            try:
                os.replace(tmp, final)
            except OSError:
                if _find_yaml(final) is None:  # not a concurrent winner: a real failure
                    raise
            yaml_path = final / rel if (final / rel).is_file() else _find_yaml(final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        if yaml_path is None:
            raise LpdetError(f"{final}: the generated synthetic dataset has no dataset YAML; delete the folder and retry")
    return yaml_path


# ---------------------------------------------------------------------------- entry point
def resolve_dataset(data: str, *, cache_dir: Path | None = None, synth_train: int | None = None,
                    synth_val: int | None = None, synth_seed: int | None = None) -> DatasetSpec:
    """``--data`` -> `DatasetSpec`: ``"synth"`` (generated/cached) or a dataset YAML path.

    A directory is accepted if it contains ``data.yaml``. The ``synth_*`` overrides (default:
    the module's ``SYNTH_DEFAULT_*``) choose the synthetic dataset's size and seed.
    """
    data = str(data)
    if data == "synth":
        return _synth(
            cache_dir,
            SYNTH_DEFAULT_TRAIN if synth_train is None else int(synth_train),
            SYNTH_DEFAULT_VAL if synth_val is None else int(synth_val),
            SYNTH_DEFAULT_SEED if synth_seed is None else int(synth_seed),
        )
    path = Path(data).expanduser()
    if path.is_dir():
        if (path / "data.yaml").is_file():
            return load_dataset_yaml(path / "data.yaml")
        raise LpdetError(f"--data {data}: folder has no data.yaml; {_DATA_HELP}")
    if not path.exists():
        raise LpdetError(f"--data {data}: no such file; {_DATA_HELP}")
    return load_dataset_yaml(path)
