"""`lpdet data coco`: the dataset YAML for the standard COCO 2017 layout.

Checks ``ROOT/annotations/instances_{train,val}2017.json`` and ``ROOT/{train,val}2017/`` and
writes a dataset YAML (paths relative to the YAML) where the caller says; nothing is written
inside ROOT unless the caller names a path there.
"""

from __future__ import annotations

from pathlib import Path

from lpdet.data.spec import SplitSpec, dataset_yaml_text, write_dataset_yaml
from lpdet.errors import LpdetError

__all__ = ["coco2017_splits", "write_coco2017_yaml"]

_SPLITS = ("train", "val")


def coco2017_splits(root: Path) -> dict[str, SplitSpec]:
    """The train/val `SplitSpec`s of a COCO 2017 folder; an `LpdetError` naming everything missing."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise LpdetError(f"--root {root}: folder not found; give the folder holding annotations/, train2017/ and val2017/")
    splits = {s: SplitSpec(annotations=root / "annotations" / f"instances_{s}2017.json", images=root / f"{s}2017")
              for s in _SPLITS}
    missing = [str(p.relative_to(root)) for s in splits.values() for p in (s.annotations,) if not p.is_file()]
    missing += [str(s.images.relative_to(root)) + "/" for s in splits.values() if not s.images.is_dir()]
    if missing:
        raise LpdetError(f"--root {root}: missing {', '.join(missing)}; unpack train2017.zip, val2017.zip and "
                         "annotations_trainval2017.zip (from the COCO site) into this folder")
    return splits


def write_coco2017_yaml(root: Path, out: Path, name: str = "coco2017") -> Path:
    """Write the dataset YAML for COCO 2017 in `root` to `out`; return `out`.

    An existing `out` is replaced only when it already says the same (never lose a user's file)."""
    splits = coco2017_splits(root)
    out = Path(out).expanduser()
    if out.is_dir():
        raise LpdetError(f"--out {out}: is a folder; name the YAML file to write, e.g. {out / 'coco2017.yaml'}")
    if out.exists():
        try:
            same = out.read_text() == dataset_yaml_text(out, name, splits)
        except (OSError, UnicodeDecodeError):
            same = False
        if not same:
            raise LpdetError(f"--out {out}: file exists with other content; remove it or choose another path")
    return write_dataset_yaml(out, name, splits)
