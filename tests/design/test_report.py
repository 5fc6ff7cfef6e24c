"""The Markdown + self-contained HTML report builder."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from lpdet.design.report import Figure, Section, Table, figure_from_matplotlib, format_cell, line_plot, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def plot():
    return line_plot("AP & latency vs resolution", "input resolution", "AP",
                     {"AP": ([160, 224, 320], [0.2114, 0.2651, None])}, caption="latency on 1 core",
                     secondary={"latency": ([160, 224, 320], [3.25, 6.1, 12.4])}, secondary_label="ms")


def _sections(plot):
    table = Table("Runs", ["model", "resolution", "AP", "latency ms", "params"],
                  [["ssdlite-0.5", 160, 0.21137, 3.25, 1_234_567], ["ssdlite-1.0", 320, 0.30049, None, 3_500_000]],
                  note="AP on val")
    return [Section("Resolution sweep", "Two runs.\n\nSecond paragraph.", [table, plot])]


def test_line_plot_renders_png(plot):
    assert isinstance(plot, Figure) and plot.png.startswith(PNG_MAGIC) and plot.caption == "latency on 1 core"


def test_write_report(tmp_path, plot):
    md, html = write_report(_sections(plot), tmp_path / "rep", title="Design report")
    assert md == tmp_path / "rep" / "report.md" and html == tmp_path / "rep" / "report.html"
    m, h = md.read_text(), html.read_text()

    # markdown: a table with right-aligned numeric columns, the figure linked
    assert "| model | resolution | AP | latency ms | params |" in m
    assert "|:---|---:|---:|---:|---:|" in m
    assert "| ssdlite-0.5 | 160 | 0.211 | 3.250 | 1,234,567 |" in m
    assert "| ssdlite-1.0 | 320 | 0.300 | \u2014 | 3,500,000 |" in m
    assert "![AP & latency vs resolution](figures/01-ap-latency-vs-resolution.png)" in m
    assert (tmp_path / "rep" / "figures" / "01-ap-latency-vs-resolution.png").read_bytes() == plot.png

    # html: self-contained, the figure embedded, the numbers in right-aligned cells
    assert h.isascii() and "figures/" not in h
    (b64,) = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', h)
    assert base64.b64decode(b64) == plot.png
    for v in ("0.211", "3.250", "1,234,567", "&#8212;"):
        assert f'<td class="num">{v}</td>' in h
    assert "<td>ssdlite-0.5</td>" in h and "AP &amp; latency" in h
    assert "<p>Two runs.</p>" in h and "<p>Second paragraph.</p>" in h


def test_html_escaping(tmp_path):
    sec = Section("<i>s</i>", "a < b & c", [Table("<script>x</script>", ["<col>"], [["<b>v</b>"]])])
    md, html = write_report([sec], tmp_path, title="<b>bold</b> report")
    h = html.read_text()
    assert "<b>bold" not in h and "&lt;b&gt;bold&lt;/b&gt; report" in h
    assert "<script>" not in h and "<i>" not in h and "<col>" not in h and "&lt;b&gt;v&lt;/b&gt;" in h
    assert "a &lt; b &amp; c" in h
    m = md.read_text()
    assert m.startswith("# \\<b\\>bold\\</b\\> report")


def test_stale_figures_removed_and_matplotlib_figures(tmp_path, plot):
    write_report(_sections(plot), tmp_path, title="r")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.bar(["a", "b"], [1, 2])
    bar = figure_from_matplotlib(fig, "Bars", caption="c")
    assert bar.png.startswith(PNG_MAGIC) and not plt.fignum_exists(fig.number)  # closed
    write_report([Section("s", items=[bar])], tmp_path, title="r")
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["01-bars.png"]


@pytest.mark.parametrize("value,column,text", [
    (None, "x", "\u2014"), (True, "x", "yes"), (7, "x", "7"), (12345678, "x", "12,345,678"),
    (np.int64(3), "x", "3"), (0.0, "x", "0"), (0.123456, "x", "0.1235"), (12.3456, "x", "12.35"),
    (1234.56, "x", "1,235"), (np.float32(0.5), "x", "0.5000"), (2.5e-7, "x", "2.5e-07"), (3.2e9, "x", "3.2e+09"),
    (0.34567, "AP", "0.346"), (0.5, "AP50", "0.500"), (0.25, "AP_small", "0.250"), (0.1, "mAP", "0.100"),
    (0.1, "AR100", "0.100"), (0.2, "APs", "0.200"), (0.2, "mAP@0.5", "0.200"),
    (0.1, "APPLE", "0.1000"), (float("nan"), "AP", "nan"), ("text", "AP", "text"),
])
def test_format_cell(value, column, text):
    assert format_cell(value, column) == text


def test_format_override():
    assert format_cell(3.14159, "ms", {"ms": ".1f"}) == "3.1"
    assert format_cell(None, "ms", {"ms": ".1f"}) == "\u2014"
