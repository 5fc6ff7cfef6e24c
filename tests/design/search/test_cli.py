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
])
def test_bad_search_option_is_one_error_line(capsys, tmp_path, monkeypatch, extra, needle):
    monkeypatch.chdir(tmp_path)
    _fails_cleanly(capsys, ["search", "--out", str(tmp_path / "out"), *extra], needle)


def test_settings_file_with_an_unknown_key_is_one_error_line(capsys, tmp_path):
    bad = tmp_path / "settings.yaml"
    bad.write_text("trials: 3\nwidht: 0.5\n")
    _fails_cleanly(capsys, ["search", "--budget-ms", "5", "--out", str(tmp_path / "out"), "--settings", str(bad)],
                   "widht")
