"""`lpdet search` with bad options: one `error:` line naming the option, exit status 2, no traceback."""

from __future__ import annotations

import pytest

from tests.test_cli import _fails_cleanly  # the one-error-line check every CLI test uses


@pytest.mark.parametrize("extra, needle", [
    (["--budget-ms", "0"], "--budget-ms"),
    (["--budget-ms", "5", "--trials", "0"], "--trials"),
    (["--budget-ms", "5", "--threads", "-1"], "--threads"),
    (["--budget-ms", "5", "--budget-margin", "1.5"], "--budget-margin"),
    (["--budget-ms", "5", "--time-budget-min", "-2"], "--time-budget-min"),
    (["--budget-ms", "5", "--storage", "nosuchdialect://x/y"], "--storage"),
    (["--budget-ms", "5", "--supernet", "missing-checkpoint"], "--supernet"),
    (["--budget-ms", "5", "--settings", "missing.yaml"], "--settings"),
    (["--budget-ms", "5", "--supernet-init", "missing-checkpoint"], "--supernet-init"),
    (["--budget-ms", "5", "--supernet-init", "x", "--supernet-from-scratch"], "--supernet-from-scratch"),
])
def test_bad_search_option_is_one_error_line(capsys, tmp_path, monkeypatch, extra, needle):
    monkeypatch.chdir(tmp_path)
    _fails_cleanly(capsys, ["search", "--out", str(tmp_path / "out"), *extra], needle)


def test_settings_file_with_an_unknown_key_is_one_error_line(capsys, tmp_path):
    bad = tmp_path / "settings.yaml"
    bad.write_text("trials: 3\nwidht: 0.5\n")
    _fails_cleanly(capsys, ["search", "--budget-ms", "5", "--out", str(tmp_path / "out"), "--settings", str(bad)],
                   "widht")


def test_the_supernet_starts_from_the_shipped_base_on_synth_only_when_it_fits():
    """--data synth --quick (width 0.5): the shipped base; --supernet-from-scratch, another width or other
    data: from scratch; --supernet-init: the given checkpoint."""
    from lpdet.cli.parsers import build_parser
    from lpdet.design.search.command import settings_from_args
    from lpdet.models.shipped import SYNTH_BASE

    def init(*extra):
        args = build_parser().parse_args(["search", "--budget-ms", "5", "--out", "o", *extra])
        return settings_from_args(args).supernet.init

    assert init("--quick") == str(SYNTH_BASE)
    assert init("--quick", "--supernet-from-scratch") == ""
    assert init() == ""  # the full preset searches width 1.0: the width-0.5 base cannot start it
    assert init("--quick", "--data", "mine.yaml") == ""
    assert init("--supernet-init", str(SYNTH_BASE)) == str(SYNTH_BASE)
