"""A small report builder: sections of text, tables and figures -> ``report.md`` + ``report.html``.

    sections = [Section("Resolution", "AP and latency vs input size.", [
        Table("Runs", ["resolution", "AP", "latency ms"], [[160, 0.211, 3.2], [320, 0.3, None]]),
        line_plot("AP vs resolution", "resolution", "AP", {"AP": ([160, 320], [0.211, 0.3])},
                  secondary={"latency": ([160, 320], [3.2, 9.1])}, secondary_label="ms"),
    ])]
    md, html = write_report(sections, Path("out"), title="Design report")

- ``report.md``: Markdown (GitHub tables); figures saved as ``figures/NN-slug.png`` and linked.
- ``report.html``: self-contained (figures embedded as ``data:image/png;base64`` URIs, inline CSS,
  ASCII-only with character references), all text HTML-escaped.
- Cells: ``None`` -> "—"; ints with thousands separators; floats with 4 significant digits (no
  exponent between 1e-3 and 1e6), columns named like ``AP``/``AP50``/``mAP``/``AR..`` with 3
  decimals; `Table.formats` (column -> format spec, e.g. ``{"latency ms": ".1f"}``) overrides.
  Numeric columns are right-aligned in both outputs.
- Every file is written atomically (temporary file + rename); PNGs first, the reports last.
- Figures are drawn with matplotlib's object API on an Agg canvas: no pyplot state, no display
  needed, and the caller's pyplot backend is left alone.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import math
import numbers
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lpdet.serialize import atomic_write_bytes, atomic_write_text

__all__ = ["Table", "Figure", "Section", "figure_from_matplotlib", "line_plot", "write_report", "format_cell"]

DPI = 110
_EMPTY = "\u2014"  # em dash for None


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list]
    note: str = ""
    formats: dict[str, str] = field(default_factory=dict)  # column -> format spec for its numbers


@dataclass
class Figure:
    """A rendered figure: PNG bytes."""

    title: str
    png: bytes
    caption: str = ""


@dataclass
class Section:
    title: str
    text: str = ""  # plain text; blank lines separate paragraphs
    items: list[Table | Figure] = field(default_factory=list)


# ---------------------------------------------------------------------------- figures
def _render_png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported when drawing: see line_plot

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)  # attaches itself as fig.canvas; renders without a display
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def figure_from_matplotlib(fig, title: str, caption: str = "") -> Figure:
    """Render a matplotlib figure to PNG bytes (Agg, ``DPI`` dots per inch) and close it."""
    try:
        png = _render_png(fig)
    finally:
        plt = sys.modules.get("matplotlib.pyplot")  # only pyplot-made figures need closing
        if plt is not None:
            plt.close(fig)
    return Figure(title=title, png=png, caption=caption)


def _float_or_nan(v) -> float:
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _plot_series(ax, series: dict, colors, linestyle: str, points: frozenset = frozenset()) -> list:
    lines = []
    for name, xy in series.items():
        xs, ys = xy
        if len(xs) != len(ys):
            raise ValueError(f"series {name!r}: {len(xs)} x values but {len(ys)} y values")
        alone = name in points  # measured at a few x only: a line between them would invent values
        (line,) = ax.plot([_float_or_nan(x) for x in xs], [_float_or_nan(y) for y in ys], marker="o",
                          markersize=7 if alone else 4, linewidth=1.6, linestyle="none" if alone else linestyle,
                          color=next(colors), label=str(name))
        lines.append(line)
    return lines


def line_plot(title: str, x_label: str, y_label: str, series: dict[str, tuple[list, list]], *, caption: str = "",
              secondary: dict[str, tuple[list, list]] | None = None, secondary_label: str = "",
              points: frozenset[str] = frozenset(), secondary_levels: dict[str, float] | None = None) -> Figure:
    """Lines (one per `series` entry: name -> (xs, ys)); `secondary` series on a twin right y axis.

    ``None`` y values leave gaps. Series named in `points` are drawn as unconnected markers.
    `secondary_levels` (name -> y) are horizontal dotted lines on the right axis (e.g. a budget).
    Integer x values (e.g. resolutions) become the x ticks when few (slanted when crowded).
    """
    # matplotlib is imported when a figure is drawn, not with this module, which every command that
    # prints a table loads (lpdet eval, bench, compare-quant): matplotlib.figure takes about 0.9 s to import
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(7.0, 4.2))
    ax = fig.add_subplot()
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f"]
    colors = itertools.cycle(palette)
    lines = _plot_series(ax, series, colors, "-", points)
    ax.set_title(title)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(True, color="#dddddd", linewidth=0.7)
    ax.set_axisbelow(True)
    if secondary or secondary_levels:
        ax2 = ax.twinx()
        lines += _plot_series(ax2, secondary or {}, colors, "--", points)
        for name, level in (secondary_levels or {}).items():
            lines.append(ax2.axhline(level, linestyle=":", linewidth=1.8, color=next(colors), label=str(name)))
        ax2.set_ylabel(secondary_label)
    xs_all = [x for s in [series, secondary or {}] for xs, _ in s.values() for x in xs]
    if xs_all and all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in xs_all):
        ticks = sorted(set(int(x) for x in xs_all))
        if len(ticks) <= 12:
            ax.set_xticks(ticks)
            span = (ticks[-1] - ticks[0]) or 1
            if len(ticks) > 1 and min(b - a for a, b in zip(ticks, ticks[1:])) < span / 15:
                ax.tick_params(axis="x", labelrotation=45)  # close values (236, 240) would overlap
    if lines:
        ax.legend(lines, [ln.get_label() for ln in lines], loc="best", fontsize="small", framealpha=0.9)
    fig.tight_layout()
    return figure_from_matplotlib(fig, title, caption)


# ---------------------------------------------------------------------------- cells
_RATIO_COLUMN = re.compile(r"^m?A[PR][sml]?(?![A-Za-z])")  # AP, AP50, AP_small, APs, mAP, AR100 ...


def _is_num(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def format_cell(v, column: str = "", formats: dict[str, str] | None = None) -> str:
    """A table cell as text (see the module docstring for the rules)."""
    if v is None:
        return _EMPTY
    if isinstance(v, bool):
        return "yes" if v else "no"
    spec = (formats or {}).get(column)
    if _is_num(v) and spec:
        return format(v, spec)
    if isinstance(v, numbers.Integral):
        return f"{int(v):,}"
    if isinstance(v, numbers.Real):
        f = float(v)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "\u221e" if f > 0 else "-\u221e"
        if _RATIO_COLUMN.match(column) and abs(f) <= 1.0:
            return f"{f:.3f}"
        if f == 0:
            return "0"
        mag = math.floor(math.log10(abs(f)))
        if -3 <= mag < 6:
            return f"{f:,.{max(0, 3 - mag)}f}"
        return f"{f:.4g}"
    return str(v)


def _numeric_columns(t: Table) -> list[bool]:
    out = []
    for j in range(len(t.columns)):
        vals = [r[j] for r in t.rows if j < len(r) and r[j] is not None]
        out.append(bool(vals) and all(_is_num(v) for v in vals))
    return out


def _cells(t: Table) -> list[list[str]]:
    n = len(t.columns)
    rows = []
    for i, r in enumerate(t.rows):
        if len(r) > n:
            raise ValueError(f"table {t.title!r}: row {i} has {len(r)} cells for {n} columns")
        rows.append([format_cell(v, t.columns[j], t.formats) for j, v in enumerate(r)] + [""] * (n - len(r)))
    return rows


# ---------------------------------------------------------------------------- markdown
_MD_SPECIAL = re.compile(r"([\\`*<>\[\]])")


def _md(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def _md_cell(text: str) -> str:
    return _md(text).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def markdown_table(t: Table) -> str:
    """`t` as a GitHub Markdown table (title in bold above, note in italics below; numbers right-aligned)."""
    return "\n".join(_md_table(t))


def _md_table(t: Table) -> list[str]:
    num = _numeric_columns(t)
    out = []
    if t.title:
        out += [f"**{_md(t.title)}**", ""]
    out.append("| " + " | ".join(_md_cell(c) for c in t.columns) + " |")
    out.append("|" + "|".join("---:" if isnum else ":---" for isnum in num) + "|")
    out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in _cells(t)]
    if t.note:
        out += ["", f"*{_md(t.note)}*"]
    return out


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", str(text).strip()) if p.strip()]


def _markdown(title: str, sections: list[Section], paths: dict[int, str]) -> str:
    out = [f"# {_md(title)}", ""]
    for s in sections:
        out += [f"## {_md(s.title)}", ""]
        for p in _paragraphs(s.text):
            out += [_md(p), ""]
        for item in s.items:
            if isinstance(item, Table):
                out += _md_table(item) + [""]
            else:
                alt = _md(item.title).replace("\n", " ")
                out += [f"![{alt}]({paths[id(item)]})", ""]
                if item.caption:
                    out += [f"*{_md(item.caption)}*", ""]
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------------- html
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: #1f2328; background: #fff; max-width: 1000px; margin: 2rem auto; padding: 0 1.2rem;
       line-height: 1.5; }
h1 { font-size: 1.8rem; border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { font-size: 1.35rem; margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .6rem 0 .3rem; font-size: .92rem;
        font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .65rem; text-align: left; vertical-align: top; }
th { background: #f3f5f7; font-weight: 600; }
tbody tr:nth-child(even) { background: #fafbfc; }
.num { text-align: right; white-space: nowrap; }
.note, figcaption { color: #57606a; font-size: .88rem; margin: .2rem 0 1rem; }
figure { margin: 1rem 0 1.4rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #e5e7eb; }
.figtitle { font-weight: 600; margin-bottom: .3rem; }
"""


def _h(text) -> str:
    return html.escape(str(text), quote=True)


def _h_text(text: str) -> str:
    return _h(text).replace("\n", "<br>")


def _html_table(t: Table) -> list[str]:
    num = _numeric_columns(t)
    cls = lambda j: ' class="num"' if num[j] else ""  # noqa: E731
    out = ["<table>"]
    if t.title:
        out.append(f"<caption>{_h(t.title)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th{cls(j)}>{_h(c)}</th>" for j, c in enumerate(t.columns)) + "</tr></thead>")
    out.append("<tbody>")
    for r in _cells(t):
        out.append("<tr>" + "".join(f"<td{cls(j)}>{_h_text(c)}</td>" for j, c in enumerate(r)) + "</tr>")
    out += ["</tbody>", "</table>"]
    if t.note:
        out.append(f'<p class="note">{_h_text(t.note)}</p>')
    return out


def _html(title: str, sections: list[Section]) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{_h(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>", f"<h1>{_h(title)}</h1>"]
    for s in sections:
        out += ["<section>", f"<h2>{_h(s.title)}</h2>"]
        out += [f"<p>{_h_text(p)}</p>" for p in _paragraphs(s.text)]
        for item in s.items:
            if isinstance(item, Table):
                out += _html_table(item)
            else:
                b64 = base64.b64encode(item.png).decode("ascii")
                out += ["<figure>", f'<div class="figtitle">{_h(item.title)}</div>',
                        f'<img src="data:image/png;base64,{b64}" alt="{_h(item.title)}">']
                if item.caption:
                    out.append(f"<figcaption>{_h_text(item.caption)}</figcaption>")
                out.append("</figure>")
        out.append("</section>")
    out += ["</body>", "</html>"]
    # ASCII only (non-ASCII as character references): correct whatever encoding the file is read with
    return "\n".join(out).encode("ascii", "xmlcharrefreplace").decode("ascii") + "\n"


# ---------------------------------------------------------------------------- writing
def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")[:40].strip("-")
    return s or "figure"


_FIGURE_NAME = re.compile(r"^\d{2,}-[a-z0-9-]+\.png$")


def write_report(sections: list[Section], out_dir: Path, *, title: str) -> tuple[Path, Path]:
    """Write ``out_dir/report.md`` (+ ``figures/*.png``) and a self-contained ``out_dir/report.html``.

    Returns ``(markdown path, html path)``. Figure files of an earlier report in the same folder
    that this report no longer has are removed.
    """
    out_dir = Path(out_dir)
    for s in sections:
        if not isinstance(s, Section):
            raise TypeError(f"write_report: expected Section, got {type(s).__name__}")
        for item in s.items:
            if not isinstance(item, (Table, Figure)):
                raise TypeError(f"section {s.title!r}: items must be Table or Figure, got {type(item).__name__}")
    figures = [item for s in sections for item in s.items if isinstance(item, Figure)]
    width = max(2, len(str(len(figures))))
    paths: dict[int, str] = {}
    written: set[str] = set()
    for n, fig in enumerate(figures, 1):
        name = f"{n:0{width}d}-{_slug(fig.title)}.png"
        if id(fig) not in paths:  # the same Figure object used twice: one file
            atomic_write_bytes(out_dir / "figures" / name, fig.png)
            paths[id(fig)] = f"figures/{name}"
            written.add(name)
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    atomic_write_text(md_path, _markdown(title, sections, paths))
    atomic_write_text(html_path, _html(title, sections))
    fig_dir = out_dir / "figures"
    if fig_dir.is_dir():
        for p in fig_dir.iterdir():
            if p.is_file() and _FIGURE_NAME.match(p.name) and p.name not in written:
                p.unlink(missing_ok=True)
    return md_path, html_path
