"""Small helpers beside `report.py`: one sweep's Markdown (``*.md`` next to its ``*.json``), atomic
JSON writes, and the AP value tables and plots show."""

from __future__ import annotations

import json
import math
from pathlib import Path

from lpdet.design.report import Figure, Table, markdown_table
from lpdet.serialize import atomic_write_bytes, atomic_write_text, to_dict

__all__ = ["write_sweep_files", "save_json_atomic", "ap_or_none", "SIZE_METRICS"]

SIZE_METRICS = ("AP_small", "AP_medium", "AP_large")


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def save_json_atomic(data, path: Path) -> Path:
    atomic_write_text(Path(path), json.dumps(to_dict(data), indent=2, default=str) + "\n")
    return Path(path)


def write_sweep_files(out_dir: Path, stem: str, title: str, tables: list[Table], figures: list[Figure],
                      data, text: str = "") -> tuple[Path, Path]:
    """``out_dir/stem.md`` (tables + linked PNGs ``stem[-N].png``) and ``out_dir/stem.json`` (`data`)."""
    out_dir = Path(out_dir)
    parts = [f"# {title}", ""]
    if text:
        parts += [text, ""]
    for table in tables:
        parts += [markdown_table(table), ""]
    for i, fig in enumerate(figures):
        name = f"{stem}.png" if len(figures) == 1 else f"{stem}-{i + 1}.png"
        atomic_write_bytes(out_dir / name, fig.png)
        parts += [f"![{_md_escape(fig.title)}]({name})", ""]
        if fig.caption:
            parts += [f"*{_md_escape(fig.caption)}*", ""]
    md = out_dir / f"{stem}.md"
    atomic_write_text(md, "\n".join(parts).rstrip() + "\n")
    return md, save_json_atomic(data, out_dir / f"{stem}.json")


def ap_or_none(value) -> float | None:
    """An AP for plots/tables: pycocotools' -1 (no ground truth of that size) and NaN become None."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) or value < 0 else value
