"""Bad input through the command line: one `error:` line naming the problem, exit status 2, no traceback."""

import pytest

from lpdet.cli import main


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
