"""Bad input through the command line: one `error:` line naming the problem, exit status 2, no traceback."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lpdet.cli import build_parser, main
from lpdet.cli.data_commands import train_config_from_args
from lpdet.quant.qat import QatConfig
from lpdet.train.config import TrainConfig


def _fails_cleanly(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, err
    for needle in needles:
        assert needle in error_lines[0], err
    return error_lines[0]


def test_unknown_architecture(capsys):
    _fails_cleanly(capsys, ["model", "info", "--arch", "resnet50_ssd"], "resnet50_ssd", "mobilenet_v2_ssdlite")


def test_missing_checkpoint(capsys, tmp_path):
    _fails_cleanly(capsys, ["eval", str(tmp_path / "nope"), "--data", "synth"], "nope")


def test_file_that_is_not_a_checkpoint(capsys, tmp_path):
    bogus = tmp_path / "weights.pt"
    bogus.write_bytes(b"\x80\x04junk")
    _fails_cleanly(capsys, ["predict", str(bogus), str(tmp_path), "--out", str(tmp_path / "o")], "weights.pt")


def test_missing_dataset_yaml(capsys, tmp_path):
    _fails_cleanly(capsys, ["train", "--data", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "run")],
                   "missing.yaml")


def test_bad_training_option(capsys, tmp_path):
    _fails_cleanly(capsys, ["train", "--epochs", "0", "--out", str(tmp_path / "run")], "--epochs")


def test_synth_needs_validation_images(capsys, tmp_path):
    _fails_cleanly(capsys, ["data", "synth", str(tmp_path / "d"), "--train", "2", "--val", "0"])


def test_argparse_rejects_non_numbers(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "synth", "out", "--train", "many"])
    assert exit_info.value.code == 2
    assert "expected a whole number" in capsys.readouterr().err


def test_bench_uses_the_models_nms_setting_and_flags_override(capsys, tmp_path):
    import json

    from lpdet.deploy.export import export_onnx, update_metadata
    from tests.deploy.tiny import CLASS_NAMES, tiny_detector

    plain = export_onnx(tiny_detector(), tmp_path / "m.onnx", metadata={"class_names": CLASS_NAMES})
    tuned = update_metadata(plain, tmp_path / "tuned.onnx", {"postprocess": {"nms_iou": 0.2}})
    assert main(["bench", str(tuned), "--runs", "2", "--warmup", "0", "--json"]) == 0
    measured = json.loads(capsys.readouterr().out)
    assert measured["postprocess"]["nms_iou"] == 0.2
    assert len(measured["repeat_medians_ms"]) == 3  # by default the lowest median of 3 repeats, as lpdet design
    assert main(["bench", str(tuned), "--runs", "2", "--warmup", "0", "--json", "--nms-iou", "0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["postprocess"] == {"score_threshold": 0.01, "nms_iou": 0.5,
                                                                   "top_k": 100, "pre_nms_top_k": 100}
    assert main(["bench", str(tuned), "--nms-iou", "1.5"]) == 2
    assert "--nms-iou 1.5: must be in (0, 1]" in capsys.readouterr().err
    assert main(["bench", str(tuned), "--repeats", "0"]) == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("argv, hint", [(["design", "--data", "synth", "--budget-ms", "5", "--out", "d"], "run the same command again"),
                                        (["train", "--out", "runs/x"], "lpdet train --resume runs/x")])
def test_interrupt_says_how_to_continue(capsys, monkeypatch, argv, hint):
    import lpdet.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(func=interrupted)
    assert main(argv) == 130
    assert hint in capsys.readouterr().err


def _subparsers(parser):
    """Every parser under `parser` (itself included)."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _subparsers(child)
    return found


def test_every_option_and_argument_says_what_it_is():
    missing = [f"{p.prog} {a.option_strings or a.dest}" for p in _subparsers(build_parser()) for a in p._actions
               if not isinstance(a, argparse._SubParsersAction) and not a.help]
    assert missing == []


@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_a_reader_that_stops_reading_ends_the_command_quietly(unbuffered):
    # `lpdet model info | head -1`: the reader is gone before lpdet writes (its read end closed at once)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PYTHONUNBUFFERED": unbuffered}
    argv = ["model", "info", "--width", "0.25", "--resolution", "96"]
    proc = subprocess.Popen([sys.executable, "-m", "lpdet", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait() == 141 and stderr == ""


def test_train_flags_fill_the_train_config_with_its_defaults():
    assert train_config_from_args(build_parser().parse_args(["train"])) == TrainConfig()
    cfg = train_config_from_args(build_parser().parse_args(
        ["train", "--arch", "mobilenet_v1_ssd", "--resolution", "128", "--lr", "0.02", "--qat", "--freeze-bn-after", "3"]))
    assert (cfg.model.arch, cfg.model.resolution, cfg.lr, cfg.qat) == ("mobilenet_v1_ssd", 128, 0.02,
                                                                        QatConfig(freeze_bn_after=3))
