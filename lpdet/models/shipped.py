"""The trained detector shipped with lpdet: the float base the quick design starts from.

`lpdet design --data synth` starts from a MobileNetV2-SSDLite (width 0.5, 300x300) trained
offline on the embedded synthetic dataset by ``scripts/train_synth_base.py`` (its recipe, training
time, machine and AP on the embedded val are in ``provenance.json`` beside the weights, and in the
README). It is an ordinary lpdet checkpoint directory (fp16 weights, to keep the package a few MB),
so ``--base``, ``--init`` and ``lpdet eval`` take its path like any other checkpoint.

Why a shipped base rather than the design training one: the few minutes of float training a quick
design can afford on 2 CPU cores reached AP ~0.02 on the synthetic set, and comparisons between
models that barely learned are comparisons of noise. The seed's design likewise started from a
trained 300x300 detector.
"""

from __future__ import annotations

import json
from pathlib import Path

from lpdet.errors import LpdetError
from lpdet.models.checkpoint_format import Checkpoint, load_checkpoint

__all__ = ["SYNTH_BASE", "PROVENANCE", "synth_base_checkpoint", "synth_base_provenance", "shipped_base_for"]

SYNTH_BASE = Path(__file__).resolve().parent.parent / "weights" / "synth_base"
PROVENANCE = "provenance.json"


def synth_base_checkpoint() -> Path:
    """The shipped base's checkpoint directory, or an `LpdetError` saying how to get on without it."""
    if not (SYNTH_BASE / "checkpoint.json").is_file():
        raise LpdetError(f"{SYNTH_BASE}: the shipped synthetic-data base detector is missing from this install; "
                         "reinstall lpdet, regenerate it with scripts/train_synth_base.py, or run the design "
                         "with --from-scratch")
    return SYNTH_BASE


def synth_base_provenance() -> dict:
    """How the shipped base was made and what it scores (`scripts/train_synth_base.py` writes it)."""
    path = synth_base_checkpoint() / PROVENANCE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LpdetError(f"{path}: unreadable ({e}); regenerate it with scripts/train_synth_base.py") from None


def shipped_base_for(arch: str, width: float) -> Checkpoint | None:
    """The shipped base when it is `arch` at `width` (the one test of whether a synth run can start
    from it: the design's base, the search's supernet), else None."""
    ckpt = load_checkpoint(synth_base_checkpoint())
    return ckpt if (ckpt.model_config.arch, ckpt.model_config.width) == (arch, width) else None
