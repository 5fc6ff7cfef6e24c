"""The data the design trains on, chooses on and reports on: three disjoint splits.

* **train** (the fit part): what every training run of the design learns from;
* **select**: every choice is made on it (resolution, filtering, NMS setting, and each training run's
  best epoch, since its per-epoch validation runs on select);
* **val**: only reported; no choice looks at it, so its numbers are not optimistic.

The selection split is the dataset YAML's ``select:`` or is carved from train
(`lpdet.data.selection`, ``--select-fraction``). Two YAMLs under ``out_dir/selection``: the dataset
with all three splits (evaluations), and one whose ``val:`` is the selection split (training: its
validation and best checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lpdet.data.selection import selection_yaml
from lpdet.data.sizes import read_coco_json
from lpdet.data.spec import dataset_yaml_text, load_dataset_yaml
from lpdet.serialize import atomic_write_text

__all__ = ["DesignData", "design_data", "SPLIT_NOTE"]

TRAINING_YAML = "training.yaml"
SPLIT_NOTE = ("Splits: \"select\" is the held-out selection split every choice is made on; \"val\" is only "
              "reported (no choice looks at it).")


@dataclass(frozen=True)
class DesignData:
    evaluation: Path  # train (fit part), select and val: evaluations name the split
    training: Path  # train (fit part), val: the selection split (per-epoch validation and best epoch)
    select_source: str  # where the selection split comes from, for the report
    select_images: int


def design_data(data_yaml: Path, out_dir: Path, fraction: float) -> DesignData:
    """The design's dataset YAMLs (see the module docstring) for `data_yaml`; deterministic, rewritten
    only when different, the user's files untouched."""
    out_dir = Path(out_dir)
    evaluation = selection_yaml(data_yaml, out_dir, fraction)
    spec = load_dataset_yaml(evaluation)
    training = out_dir / TRAINING_YAML
    text = dataset_yaml_text(training, spec.name, {"train": spec.train, "val": spec.select})
    if not training.is_file() or training.read_text() != text:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(training, text)
    given = evaluation == Path(data_yaml)
    images = len(read_coco_json(spec.select.annotations)["images"])
    source = (f"the dataset's own select: split ({images} images)" if given else
              f"{images} images carved from train (--select-fraction {fraction:g}, a fixed hash of the image ids; "
              f"{out_dir / 'selection.json'})")
    return DesignData(evaluation=evaluation.resolve(), training=training.resolve(), select_source=source,
                      select_images=images)
