"""Is a design step's change in AP noise? Every AP the design compares keeps its predictions (a
*predictions file*: the COCO result entries and the ids of the images they were predicted on), so
any two of them, cached or fresh, get a paired bootstrap interval of their AP difference over the
images both were evaluated on (`lpdet.eval.bootstrap`; 200 resamples, 95%). The report writes
"within noise" where the interval contains 0.

    judge = NoiseJudge(data_yaml)                # the ground truth of the split the APs were measured on
    judge.text(before_file, after_file)         # "+0.012 [−0.004, +0.027], within noise"
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from pycocotools.coco import COCO

from lpdet.data.splits import split_of
from lpdet.errors import LpdetError
from lpdet.eval.bootstrap import BootstrapInterval, ImageMatches, PredictionSet, bootstrap_difference, \
    format_interval, per_image_matches
from lpdet.serialize import atomic_write_text

__all__ = ["save_predictions", "load_predictions", "NoiseJudge", "RESAMPLES", "INTERVAL_NOTE"]

RESAMPLES = 200
CONFIDENCE = 0.95
INTERVAL_NOTE = (f"[low, high]: paired bootstrap {CONFIDENCE:.0%} interval of the AP difference over the val images "
                 f"({RESAMPLES} resamples of the images, the same draw for both models); \"within noise\": it "
                 f"contains 0, so the val set cannot tell the two apart. It does not cover the spread between "
                 f"trainings with other seeds.")


def save_predictions(path: Path, results: list[dict], image_ids: list[int]) -> Path:
    """Write COCO result entries and the images they were predicted on (for a later paired bootstrap)."""
    atomic_write_text(Path(path), json.dumps({"image_ids": [int(i) for i in image_ids], "results": results},
                                             separators=(",", ":")) + "\n")
    return Path(path)


def load_predictions(path: Path) -> PredictionSet:
    try:
        data = json.loads(Path(path).read_text())
        return PredictionSet(results=data["results"], image_ids=[int(i) for i in data["image_ids"]])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LpdetError(f"{path}: cannot read the predictions file ({e}); delete its trial folder to measure "
                         f"it again") from None


class NoiseJudge:
    """Paired bootstrap intervals of AP differences on one split of one dataset; each predictions file is
    matched to the ground truth once (`per_image_matches`), however many comparisons it is in."""

    def __init__(self, data: str | Path, split: str = "val", *, resamples: int = RESAMPLES, seed: int = 0):
        _, chosen = split_of(data, split)
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(str(chosen.annotations))
        self.split = split
        self.resamples = resamples
        self.seed = seed
        self._matches: dict[str, ImageMatches] = {}

    def _matched(self, path: Path) -> ImageMatches:
        key = str(Path(path).resolve())
        if key not in self._matches:
            self._matches[key] = per_image_matches(self.coco, load_predictions(path))
        return self._matches[key]

    def interval(self, before: Path | str | None, after: Path | str | None) -> BootstrapInterval | None:
        """AP(after) − AP(before) with its interval; None when either has no predictions file."""
        if before is None or after is None:
            return None
        return bootstrap_difference(self._matched(Path(before)), self._matched(Path(after)),
                                    resamples=self.resamples, confidence=CONFIDENCE, seed=self.seed)

    def text(self, before: Path | str | None, after: Path | str | None) -> str | None:
        """`format_interval` of `interval` ("+0.012 [−0.004, +0.027], within noise"), or a reason it has none."""
        try:
            found = self.interval(before, after)
        except LpdetError as e:  # e.g. evaluated on different images: the table says why, the flow goes on
            return f"n/a ({e})"
        return None if found is None else format_interval(found)
