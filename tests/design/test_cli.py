"""The design commands: registered on the main parser; bad options are one-line errors (exit 2)."""

from __future__ import annotations

import pytest

from lpdet.cli import build_parser, main
from lpdet.design.cli import parse_float_list, parse_int_list
from lpdet.errors import LpdetError


def test_commands_are_registered():
    parser = build_parser()
    args = parser.parse_args(["sweep", "resolution", "--init", "ck", "--resolutions", "300,240", "--data", "synth",
                              "--epochs", "2", "--out", "o", "--no-finetune"])
    assert args.no_finetune and args.epochs == 2 and callable(args.func)
    args = parser.parse_args(["sweep", "nms", "m.onnx", "--data", "d.yaml", "--ious", "0.3,0.1", "--top-ks", "50"])
    assert args.ious == "0.3,0.1" and args.top_ks == "50" and callable(args.func)
    args = parser.parse_args(["sweep", "filter", "--data", "synth", "--out", "o", "--epochs", "1", "--init", "ck"])
    assert callable(args.func)
    args = parser.parse_args(["design", "--data", "synth", "--budget-ms", "12", "--out", "o", "--quick",
                              "--threads", "2"])
    assert args.quick and args.budget_ms == 12 and args.threads == 2 and callable(args.func)
    args = parser.parse_args(["design", "--budget-ratio", "0.64", "--select-fraction", "0.2", "--out", "o"])
    assert args.budget_ratio == 0.64 and args.budget_ms is None and args.select_fraction == 0.2


def test_list_parsing():
    assert parse_int_list("--resolutions", "300, 280,236") == [300, 280, 236]
    assert parse_float_list("--ious", "0.3,0.25", low=0, high=1, low_open=True) == [0.3, 0.25]
    with pytest.raises(LpdetError, match=r"--resolutions 300,abc: 'abc' is not a whole number"):
        parse_int_list("--resolutions", "300,abc")
    with pytest.raises(LpdetError, match="outside"):
        parse_float_list("--ious", "0.3,0", low=0, high=1, low_open=True)


@pytest.mark.parametrize("argv, message", [
    (["sweep", "resolution", "--init", "ck", "--resolutions", "300,abc", "--out", "o"], "--resolutions 300,abc"),
    (["sweep", "resolution", "--init", "ck", "--resolutions", "300,16", "--out", "o"], "below 32"),
    (["sweep", "resolution", "--init", "ck", "--epochs", "0", "--out", "o"], "--epochs 0"),
    (["sweep", "nms", "m.onnx", "--ious", "0.3,x"], "--ious 0.3,x"),
    (["sweep", "nms", "m.onnx", "--ious", "0.3,1.5"], "--ious 0.3,1.5"),
    (["sweep", "nms", "m.onnx", "--top-ks", "0"], "--top-ks 0"),
    (["sweep", "nms", "m.onnx", "--score-thresholds", "1"], "--score-thresholds 1"),
    (["sweep", "filter", "--out", "o", "--epochs", "0"], "--epochs 0"),
    (["design", "--budget-ms", "0", "--out", "o"], "--budget-ms 0"),
    (["design", "--budget-ms", "-3", "--out", "o"], "--budget-ms -3"),
    (["design", "--budget-ms", "10", "--out", "o", "--threads", "-1"], "--threads -1"),
    (["design", "--budget-ms", "10", "--out", "o", "--resolutions", "300,abc"], "--resolutions 300,abc"),
    (["design", "--budget-ms", "10", "--out", "o", "--budget-margin", "1"], "--budget-margin 1"),
    (["design", "--out", "o"], "give exactly one of --budget-ms MS"),
    (["design", "--budget-ms", "10", "--budget-ratio", "0.6", "--out", "o"], "give exactly one of --budget-ms MS"),
    (["design", "--budget-ratio", "0", "--out", "o"], "--budget-ratio 0.0: must be a factor"),
    (["design", "--budget-ratio", "0.6", "--out", "o", "--select-fraction", "1"], "--select-fraction"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()  # rejected before doing anything
