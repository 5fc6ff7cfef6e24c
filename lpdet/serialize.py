"""Typed configuration <-> plain data (YAML/JSON).

Configs are dataclasses; on disk they are YAML or JSON mappings. Paths become strings and
come back as `Path`; unknown keys are an error (a typo in a config should not be silent).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
import types
import typing
from pathlib import Path
from collections.abc import Iterator
from typing import Any, TypeVar

import yaml

from lpdet.errors import LpdetError

T = TypeVar("T")


def is_number(value: object) -> bool:
    """A finite int or float, not a bool (what a numeric option read from YAML/JSON must be)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def to_dict(obj: Any) -> Any:
    """A dataclass (possibly nested) as JSON/YAML-safe plain data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def _coerce(value: Any, hint: Any, where: str) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(value, args[0], where) if len(args) == 1 else value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if hint is Path:
        return Path(value)
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(hint) or (Any,)
        items = [_coerce(v, inner, where) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is float and isinstance(value, int):
        return float(value)
    return value


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass `cls` from plain data, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise LpdetError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise LpdetError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], where) for k, v in data.items()}
    return cls(**kwargs)


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` (same folder, same suffix) for the block to write; when the
    block succeeds it is fsynced and renamed to `path`, when it fails it is removed. Readers of
    `path` see the old file or the complete new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_yaml(obj: Any, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))


def save_json(obj: Any, path: Path) -> None:
    atomic_write_text(path, json.dumps(to_dict(obj), indent=2) + "\n")


def load_mapping(path: Path) -> dict:
    """Read a YAML or JSON mapping with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise LpdetError(f"{path}: file not found; check the path")
    try:
        data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise LpdetError(f"{path}: not valid YAML/JSON ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(data, dict):
        raise LpdetError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's content (hex), read in 1 MiB chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
