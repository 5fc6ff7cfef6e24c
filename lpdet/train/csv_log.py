"""The run's per-step and per-epoch CSV logs (`metrics.csv`, `val.csv`)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from lpdet.serialize import atomic_write_text


class CsvLog:
    """Append rows to a CSV, writing the header once; every row is its own write, so a crash loses nothing."""

    def __init__(self, path: Path, fields: list[str]):
        self.path, self.fields = path, fields
        if not path.exists() or path.stat().st_size == 0:
            atomic_write_text(path, _csv_text(fields, []))

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            f.write(_csv_text(self.fields, [{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}],
                              header=False))


def trim_csv(path: Path, key: str, last_kept: int) -> None:
    """On resume, drop rows logged after the checkpoint we continue from (rewritten atomically)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows = [r for r in reader if _number(r.get(key)) <= last_kept]
    atomic_write_text(path, _csv_text(fields, rows))


def _csv_text(fields: list[str], rows: list[dict], header: bool = True) -> str:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def _number(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.inf
