"""A finished `lpdet search` output folder, opened for reuse (``lpdet design --search DIR``): its
settings, its chosen candidate, its supernet and its data, each checked, so that a folder that is
missing, unfinished, or for another architecture or class set is one clear error naming the fix."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lpdet.data.selection import SELECTION_YAML
from lpdet.data.sizes import read_coco_json
from lpdet.data.spec import load_dataset_yaml
from lpdet.design.search.candidate import CANDIDATE_YAML
from lpdet.design.search.front import FRONT_FILES
from lpdet.design.search.settings import SearchSettings
from lpdet.errors import LpdetError
from lpdet.models.arch_space import ArchCandidate, load_candidate
from lpdet.models.checkpoint_format import load_checkpoint
from lpdet.serialize import load_mapping

__all__ = ["SearchFolder", "open_search_folder", "image_files"]


@dataclass
class SearchFolder:
    path: Path
    settings: SearchSettings
    candidate: ArchCandidate  # the search's chosen candidate (best selection AP that fits its budget)
    chosen: dict  # its row in pareto.json (trial, select_ap, latency_ms, kind, ...)
    budget_ms: float  # the search's own budget
    supernet: Path  # the trained super-network checkpoint the candidate inherits from
    data: Path | None  # the search's dataset YAML with its carved selection split (None: the data's own select:)
    pareto_png: Path | None


def _fail(folder: Path, what: str) -> LpdetError:
    return LpdetError(f"--search {folder}: {what}")


def open_search_folder(folder: Path | str, *, arch: str, data: Path) -> SearchFolder:
    """The finished search in `folder`, checked against the design's architecture `arch` and the classes
    of the design's dataset YAML `data`; else an `LpdetError` naming the folder and the fix."""
    folder = Path(folder)
    redo = "run `lpdet search --data D --budget-ms B --out DIR` to the end, then pass that DIR"
    if not folder.is_dir():
        raise _fail(folder, f"no such folder; {redo}")
    pareto = folder / FRONT_FILES["json"]
    if not pareto.is_file() or not (folder / "settings.yaml").is_file():
        raise _fail(folder, f"not a finished search (no {pareto.name} or settings.yaml); {redo}")
    try:
        front = json.loads(pareto.read_text())
        settings = SearchSettings.from_dict(load_mapping(folder / "settings.yaml"))
    except (OSError, ValueError) as e:
        raise _fail(folder, f"cannot read its results ({e}); {redo}") from None
    chosen_yaml = folder / "chosen" / CANDIDATE_YAML
    if not front.get("chosen") or not chosen_yaml.is_file():
        raise _fail(folder, "the search chose no candidate (none fitted its budget); rerun it with a larger "
                            "--budget-ms, or leave --search out")
    candidate = load_candidate(chosen_yaml)
    if candidate.arch != arch:
        raise _fail(folder, f"it searched {candidate.arch}, the design is for {arch}; pass a search of {arch} "
                            f"(lpdet search --arch {arch}) or design with --arch {candidate.arch}")
    supernet = _supernet(folder, front)
    _check_classes(folder, supernet, data)
    own = folder / "selection" / SELECTION_YAML
    png = folder / FRONT_FILES["plot"]
    return SearchFolder(folder, settings, candidate, front["chosen"], float(front["budget_ms"]), supernet,
                        own if own.is_file() else None, png if png.is_file() else None)


def _supernet(folder: Path, front: dict) -> Path:
    """The supernet the search trained (its cached trial), else the one it was given (--supernet)."""
    trial = folder / "trials" / "supernet" / "result.json"
    if trial.is_file():
        found = trial.parent / json.loads(trial.read_text())["files"]["checkpoint"]
    else:
        found = Path(str(front.get("supernet", "")))
    if not str(found) or not found.exists():
        raise _fail(folder, f"its supernet ({found}) is gone; rerun the search with --supernet CKPT pointing at it")
    return found


def _check_classes(folder: Path, supernet: Path, data: Path) -> None:
    spec = load_dataset_yaml(data)
    categories = sorted(read_coco_json(spec.train.annotations)["categories"], key=lambda c: c["id"])
    names = [c["name"] for c in categories]
    have = list(load_checkpoint(supernet).class_names)
    if have != names:
        raise _fail(folder, f"its supernet was trained on classes {have}, the design's data has {names}; pass a "
                            f"search run on this dataset")


def image_files(data: Path, split: str) -> set[Path]:
    """The image files of `split` (train / select / val) of a dataset YAML, resolved: what two datasets'
    splits are compared by (image ids are per annotation file, so they do not say which image it is)."""
    part = getattr(load_dataset_yaml(data), split)
    return {(Path(part.images) / image["file_name"]).resolve() for image in read_coco_json(part.annotations)["images"]}
