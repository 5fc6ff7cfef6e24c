"""Small helpers beside `report.py`: Markdown for one sweep's table (``*.md`` next to its ``*.json``),
and atomic writes of JSON and PNG files."""

from __future__ import annotations

import json
import math
from pathlib import Path

from lpdet.design.report import Figure, Table, format_cell
from lpdet.serialize import atomic_write_bytes, atomic_write_text, to_dict

__all__ = ["markdown_table", "write_sweep_files", "save_json_atomic", "ap_or_none", "fmt_delta"]


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(table: Table) -> str:
    """A GitHub Markdown table with the report's cell formatting (numbers right-aligned)."""
    def numeric(j: int) -> bool:
        values = [r[j] for r in table.rows if j < len(r) and r[j] is not None]
        return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)

    lines = []
    if table.title:
        lines += [f"**{_md_escape(table.title)}**", ""]
    lines.append("| " + " | ".join(_md_escape(c) for c in table.columns) + " |")
    lines.append("|" + "|".join("---:" if numeric(j) else ":---" for j in range(len(table.columns))) + "|")
    for row in table.rows:
        cells = [format_cell(v, table.columns[j], table.formats) for j, v in enumerate(row)]
        cells += [""] * (len(table.columns) - len(cells))
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    if table.note:
        lines += ["", f"*{_md_escape(table.note)}*"]
    return "\n".join(lines)


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


def fmt_delta(value: float | None, unit: str = "", digits: int = 3, percent_of: float | None = None) -> str | None:
    """``+0.012`` / ``-1.30 ms (-12%)``: a signed change, None if unknown."""
    if value is None:
        return None
    text = f"{value:+.{digits}f}{(' ' + unit) if unit else ''}"
    if percent_of:
        text += f" ({100 * value / percent_of:+.0f}%)"
    return text
