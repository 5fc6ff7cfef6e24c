import io
import sys

from lpdet.progress import LOG_INTERVAL_S, progress_bar


def test_bar_is_throttled_when_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    bar = progress_bar(range(3), desc="x")
    assert bar.mininterval == LOG_INTERVAL_S
    assert list(bar) == [0, 1, 2]


def test_disabled_bar_still_iterates_and_prints_nothing(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    assert list(progress_bar(range(3), enabled=False)) == [0, 1, 2]
    assert stream.getvalue() == ""
