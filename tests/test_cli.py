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
    assert measured["models"][0]["postprocess"]["nms_iou"] == 0.2 and measured["rounds"] == 2
    assert main(["bench", str(tuned), "--runs", "2", "--warmup", "0", "--json", "--nms-iou", "0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["models"][0]["postprocess"] == {
        "score_threshold": 0.01, "nms_iou": 0.5, "top_k": 100, "pre_nms_top_k": 100, "class_agnostic": False}
    assert main(["bench", str(tuned), "--nms-iou", "1.5"]) == 2
    assert "--nms-iou 1.5: must be in (0, 1]" in capsys.readouterr().err
    assert main(["bench", str(tuned), "--runs", "0"]) == 2
    assert "--runs must be >= 1" in capsys.readouterr().err


def test_bench_compares_several_models_on_images(capsys, tmp_path):
    from PIL import Image

    from lpdet.deploy.export import export_onnx
    from tests.deploy.tiny import CLASS_NAMES, tiny_detector

    a = export_onnx(tiny_detector(), tmp_path / "a.onnx", metadata={"class_names": CLASS_NAMES})
    b = export_onnx(tiny_detector(resolution=64), tmp_path / "b.onnx", metadata={"class_names": CLASS_NAMES})
    Image.new("RGB", (50, 40), (10, 200, 30)).save(tmp_path / "img.png")
    argv = ["bench", str(a), str(b), "--images", str(tmp_path / "img.png"), "--runs", "8", "--warmup", "0"]
    assert main(argv + ["--cpus", "0"]) == 0
    out = capsys.readouterr().out
    assert "a.onnx" in out and "b.onnx" in out and "baseline" in out and "median ms [95%]" in out
    assert "pinned to CPUs 0" in out and "1 real image(s)" in out
    assert main(["bench", str(a), "--cpus", "0,x"]) == 2
    assert "--cpus 0,x" in capsys.readouterr().err


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


def test_export_nms_in_graph_runs_in_eval_predict_and_bench(capsys, tmp_path):
    import json

    from lpdet.deploy.runtime import load_model
    from tests.deploy.tiny import tiny_checkpoint
    from tests.helpers import tiny_synth

    data = tiny_synth(tmp_path / "data", n_train=1, n_val=3)
    ckpt = tiny_checkpoint(tmp_path / "ckpt", class_names=[f"c{i}" for i in range(10)], category_ids=list(range(1, 11)),
                           num_classes=10)
    model = tmp_path / "nms.onnx"
    assert main(["export", str(ckpt), "--format", "onnx", "--nms-in-graph", "--top-k", "20", "-o", str(model)]) == 0
    assert "NMS in the graph" in capsys.readouterr().out
    assert load_model(model).postprocess.top_k == 20
    assert main(["eval", str(model), "--data", str(data), "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["top_k"] == 20
    assert main(["predict", str(model), str(data.parent / "images" / "val"), "--out", str(tmp_path / "drawn")]) == 0
    assert "detections" in capsys.readouterr().out
    assert main(["bench", str(model), "--runs", "2", "--warmup", "0", "--json"]) == 0
    measured = json.loads(capsys.readouterr().out)["models"][0]
    assert measured["postprocess_ms"] == 0 and measured["median_ms"] > 0  # all of it inside the graph
    _fails_cleanly(capsys, ["eval", str(model), "--data", str(data), "--nms-iou", "0.3"], "NMS in its graph", "nms_iou 0.3")
    agnostic = tmp_path / "agnostic.onnx"
    assert main(["export", str(ckpt), "--format", "onnx", "--nms-in-graph", "--class-agnostic-nms", "-o",
                 str(agnostic)]) == 0
    assert load_model(agnostic).postprocess.class_agnostic
    _fails_cleanly(capsys, ["export", str(ckpt), "--format", "tflite", "--nms-in-graph", "-o", str(tmp_path / "m.tflite")],
                   "--nms-in-graph")


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


def test_export_refuses_to_overwrite_without_force_and_writes_atomically(capsys, tmp_path, monkeypatch):
    import hashlib

    import lpdet.cli.model_commands as model_commands
    from lpdet.deploy.runtime import load_model
    from tests.deploy.tiny import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    model = tmp_path / "out" / "model.onnx"
    assert main(["export", str(ckpt), "--format", "onnx", "-o", str(model)]) == 0
    first = hashlib.sha256(model.read_bytes()).hexdigest()
    _fails_cleanly(capsys, ["export", str(ckpt), "--format", "onnx", "-o", str(model)],
                   f"-o {model}: the file already exists; pass --force to overwrite it")
    assert hashlib.sha256(model.read_bytes()).hexdigest() == first

    def export_failing_half_way(detector, path, **kwargs):
        path.write_bytes(b"half an onnx file")
        raise RuntimeError("the exporter crashed")

    monkeypatch.setattr(model_commands, "export_onnx", export_failing_half_way)
    with pytest.raises(RuntimeError, match="crashed"):
        main(["export", str(ckpt), "--format", "onnx", "-o", str(model), "--force"])
    assert hashlib.sha256(model.read_bytes()).hexdigest() == first  # the old file, whole
    monkeypatch.undo()
    assert main(["export", str(ckpt), "--format", "onnx", "--nms-in-graph", "-o", str(model), "--force"]) == 0
    assert load_model(model).postprocess is not None and hashlib.sha256(model.read_bytes()).hexdigest() != first
    assert sorted(p.name for p in model.parent.iterdir()) == ["model.onnx"]  # no temporary files left
