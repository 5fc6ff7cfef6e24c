"""The checkpoint format: a directory holding safetensors weights and a JSON of everything else.

Below every user (training writes checkpoints, deployment and the design experiments read
them), so it imports nothing but the model config. `lpdet.deploy.runtime.load_detector`
rebuilds the detector a checkpoint describes.

Layout of a checkpoint directory (e.g. RUN_DIR/last, RUN_DIR/best):
    model.safetensors      model weights
    checkpoint.json        model config, class names, COCO category ids, training state
    optimizer.safetensors  optimizer tensors (momentum buffers) and the torch RNG states (CPU, and
                           each CUDA device's when the run used CUDA); only in checkpoints that a
                           run can resume from

A checkpoint is written into a temporary sibling directory (`.NAME.tmp-*`), every file and
the directory fsynced, and swapped in with renames, so a crash or power loss at any point
leaves either the old or the new checkpoint readable (`load` falls back to the `.old` copy
that exists only during the swap). `recover_interrupted_saves` tidies what a killed save left.
Nothing is unpickled: weights are safetensors and the rest is JSON.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lpdet.errors import LpdetError
from lpdet.models.config import QUANTIZATIONS, ModelConfig
from lpdet.serialize import from_dict, to_dict

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "checkpoint.json"
OPTIMIZER = "optimizer.safetensors"


@dataclass
class Checkpoint:
    path: Path
    model_config: ModelConfig              # its `quantization` says whether the weights are QAT
    class_names: list[str]
    category_ids: list[int]
    model_state: dict[str, torch.Tensor]
    train_state: dict = field(default_factory=dict)
    optimizer_tensors: dict[str, torch.Tensor] | None = None


def save_checkpoint(path: Path, *, model: torch.nn.Module, model_config: ModelConfig, class_names: list[str],
                    category_ids: list[int], train_state: dict | None = None,
                    optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Atomically write a checkpoint directory at `path` (replacing any existing one).

    `model_config` is the model's own config (`detector.config`: QAT once `prepare_qat` ran)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    except OSError as e:
        raise LpdetError(f"{path}: could not save the checkpoint ({_os_reason(e)}); free disk space or fix "
                         f"the folder's permissions") from None
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "lpdet", "version": str(FORMAT_VERSION)})
        meta = {
            "format": "lpdet-checkpoint",
            "version": FORMAT_VERSION,
            "model": _model_to_json(model_config),
            "class_names": list(class_names),
            "category_ids": [int(c) for c in category_ids],
            "quantization": model_config.quantization,
            "train_state": to_dict(train_state or {}),
        }
        if optimizer is not None:
            tensors, groups = _flatten_optimizer(optimizer)
            tensors.update(_torch_rng_tensors())
            save_file(tensors, str(tmp / OPTIMIZER))
            meta["optimizer_param_groups"] = groups
            meta["rng"] = {"python": _python_rng_to_json(random.getstate()),
                           "numpy": _numpy_rng_to_json(np.random.get_state())}
        (tmp / META).write_text(json.dumps(meta, indent=2))
        for name in (WEIGHTS, OPTIMIZER, META):
            if (tmp / name).exists():
                _fsync(tmp / name)  # on disk before the rename makes them the checkpoint
        _fsync(tmp)
        _swap_in(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (OSError, SafetensorError)):
            kept = ("the previous checkpoint there is unchanged" if path.exists() or path.with_name(path.name + ".old").exists()
                    else "nothing was written")
            raise LpdetError(f"{path}: could not save the checkpoint ({_os_reason(e)}); {kept}; "
                             f"free disk space or fix the folder's permissions") from None
        raise
    return path


def _os_reason(error: Exception) -> str:
    """An OSError's reason in words (safetensors reports the OS error code inside its message)."""
    code = error.errno if isinstance(error, OSError) else None
    if code is None and (found := re.search(r"\(os error (\d+)\)", str(error))):
        code = int(found.group(1))
    if code:
        return f"{errno.errorcode.get(code, code)}: {os.strerror(code)}"
    return str(error)


def _swap_in(new: Path, path: Path) -> None:
    """Rename `new` to `path`, keeping a readable checkpoint at `path` or `path.old` at every instant."""
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)  # `path` is complete, so a leftover `.old` is stale
        os.replace(path, old)
    # else a killed swap left only `.old`: it stays until the new checkpoint is in place
    os.replace(new, path)
    _fsync(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's contents (a directory: its entries, i.e. renames) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_interrupted_saves(directory: Path) -> list[str]:
    """Tidy what saves killed in `directory` left behind; returns one line per thing done.

    A temporary checkpoint folder (`.NAME.tmp-*` holding only checkpoint files) is removed; a
    `NAME.old` without `NAME` (killed mid-swap) is renamed back to `NAME`. A temporary-looking
    folder holding anything else is left alone and reported."""
    directory, done = Path(directory), []
    if not directory.is_dir():
        return done
    for tmp in sorted(directory.glob(".*.tmp-*")):
        if not tmp.is_dir():
            continue
        # safetensors itself writes through a `.tmp*` file in the same folder
        if all(f.name in (WEIGHTS, OPTIMIZER, META) or f.name.startswith(".tmp") for f in tmp.iterdir()):
            shutil.rmtree(tmp)
            done.append(f"removed {tmp}, the temporary folder of a checkpoint save that did not finish")
        else:
            done.append(f"left {tmp} alone: it looks like a temporary checkpoint folder but holds other files")
    for old in sorted(directory.glob("*.old")):
        path = old.with_name(old.name[:-len(".old")])
        if old.is_dir() and (old / META).is_file() and not path.exists():
            os.replace(old, path)
            done.append(f"restored {path} from {old.name}, left by a checkpoint swap that did not finish")
    return done


def resolve_checkpoint(path: Path | str) -> Path:
    """The checkpoint directory that `path` names: a checkpoint dir, a file in one, or a run dir (best, else last)."""
    path = Path(path)
    if not path.exists():
        old = path.with_name(path.name + ".old")
        if old.is_dir() and (old / META).is_file():
            return old  # a crash in the middle of a swap
        raise LpdetError(f"{path}: no such checkpoint; pass a run directory or a checkpoint directory (RUN/best, RUN/last)")
    if path.is_file():
        if path.name in (WEIGHTS, META) and (path.parent / META).is_file():
            return path.parent
        raise LpdetError(f"{path}: not an lpdet checkpoint; pass a run directory or a checkpoint directory "
                         f"holding {WEIGHTS} and {META}")
    if (path / META).is_file():
        return path
    for name in ("best", "last"):
        for candidate in (path / name, path / f"{name}.old"):
            if (candidate / META).is_file():
                return candidate
    raise LpdetError(f"{path}: not an lpdet checkpoint or run directory (no {META} in it, nor in best/ or last/)")


def load_checkpoint(path: Path | str, *, with_optimizer: bool = False) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint` with clear errors for anything else."""
    directory = resolve_checkpoint(path)
    try:
        meta = json.loads((directory / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LpdetError(f"{directory / META}: not valid JSON ({e}); the checkpoint is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != "lpdet-checkpoint":
        raise LpdetError(f"{directory / META}: not an lpdet checkpoint file")
    if meta.get("version", 0) > FORMAT_VERSION:
        raise LpdetError(f"{directory}: checkpoint format {meta.get('version')} is newer than this lpdet "
                         f"understands ({FORMAT_VERSION}); upgrade lpdet")
    model_state = _load_safetensors(directory / WEIGHTS)
    optimizer_tensors = None
    if with_optimizer:
        if not (directory / OPTIMIZER).is_file():
            raise LpdetError(f"{directory}: has no optimizer state, so a run cannot resume from it; "
                             f"resume from RUN/last or start with --init")
        optimizer_tensors = _load_safetensors(directory / OPTIMIZER)
    train_state = dict(meta.get("train_state", {}))
    if "optimizer_param_groups" in meta:
        train_state["optimizer_param_groups"] = meta["optimizer_param_groups"]
    if "rng" in meta:
        train_state["rng"] = meta["rng"]
    return Checkpoint(
        path=directory,
        model_config=_model_from_json(meta, directory / META),
        class_names=list(meta["class_names"]),
        category_ids=[int(c) for c in meta["category_ids"]],
        model_state=model_state,
        train_state=train_state,
        optimizer_tensors=optimizer_tensors,
    )


def _model_to_json(config: ModelConfig) -> dict:
    """The "model" entry: the config without `quantization`, which has its own top-level key
    (as in every checkpoint.json written so far)."""
    data = to_dict(config)
    data.pop("quantization")
    return data


def _model_from_json(meta: dict, where: Path) -> ModelConfig:
    quantization = meta.get("quantization", "fp32")
    if quantization not in QUANTIZATIONS:
        raise LpdetError(f"{where}: quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}; "
                         f"the checkpoint is damaged or from a newer lpdet")
    return from_dict(ModelConfig, {**meta["model"], "quantization": quantization}, where=str(where))


def restore_optimizer(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    """Load optimizer tensors and param-group settings saved by `save_checkpoint`, and the RNG states."""
    assert ckpt.optimizer_tensors is not None
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in ckpt.optimizer_tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = tensor
    groups = ckpt.train_state["optimizer_param_groups"]
    current = optimizer.state_dict()
    if len(groups) != len(current["param_groups"]):
        raise LpdetError(f"{ckpt.path}: optimizer state does not match this model; start a new run with --init")
    for saved, group in zip(groups, current["param_groups"]):
        saved["params"] = group["params"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    _restore_torch_rng(ckpt.optimizer_tensors)
    rng = ckpt.train_state.get("rng")
    if rng:
        random.setstate(_python_rng_from_json(rng["python"]))
        np.random.set_state(_numpy_rng_from_json(rng["numpy"]))


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise LpdetError(f"{file}: missing; the checkpoint is incomplete")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise LpdetError(f"{file}: not a readable safetensors file ({e}); the checkpoint is damaged") from None


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = optimizer.state_dict()
    tensors = {}
    for index, entries in sd["state"].items():
        for name, value in entries.items():
            tensors[f"state.{index}.{name}"] = torch.as_tensor(value).detach().contiguous().cpu()
    groups = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
    return tensors, groups


def _torch_rng_tensors() -> dict[str, torch.Tensor]:
    """torch's CPU generator, and every CUDA device's when CUDA was used (dropout, random
    augmentation on the GPU draw from those). An unused CUDA is left alone: asking for its state
    would start it on a CPU run."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = state
    return tensors


def _restore_torch_rng(tensors: dict[str, torch.Tensor]) -> None:
    """The inverse of `_torch_rng_tensors`. CUDA states are restored where CUDA is available (a
    resume on another machine restores as many devices as both have); on a CPU they are not needed."""
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda.0" not in tensors or not torch.cuda.is_available():
        return
    for index in range(torch.cuda.device_count()):
        if f"rng.cuda.{index}" in tensors:
            torch.cuda.set_rng_state(tensors[f"rng.cuda.{index}"], index)


def _python_rng_to_json(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_rng_from_json(data):
    version, internal, gauss = data
    return (version, tuple(internal), gauss)


def _numpy_rng_to_json(state):
    name, keys, pos, has_gauss, cached = state
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _numpy_rng_from_json(data):
    name, keys, pos, has_gauss, cached = data
    return (name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached)
