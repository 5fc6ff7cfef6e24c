"""`--arch-config` (lpdet train, lpdet model info) and `lpdet search-space sample`."""

from __future__ import annotations

import json

import yaml

from lpdet.cli import build_parser, main
from lpdet.cli.data_commands import train_config_from_args
from lpdet.deploy.runtime import load_detector
from lpdet.models.arch_space import SearchSpace, check_in_space, load_candidate, to_model_config
from lpdet.models.profile import profile_model
from lpdet.train.config import load_train_config

from tests.helpers import tiny_synth


def _sample(tmp_path, *extra):
    assert main(["search-space", "sample", "--n", "3", "--seed", "5", "--out", str(tmp_path / "space"), *extra]) == 0
    return tmp_path / "space"


def test_sample_writes_reproducible_valid_candidates(tmp_path, capsys):
    folder = _sample(tmp_path)
    assert "940,369,969,152 distinct networks" in capsys.readouterr().out
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["cand_000.yaml", "cand_001.yaml", "cand_002.yaml", "largest.yaml", "smallest.yaml"]
    for path in folder.iterdir():
        check_in_space(load_candidate(path), SearchSpace())
    again = _sample(tmp_path / "again")
    assert (again / "cand_002.yaml").read_text() == (folder / "cand_002.yaml").read_text()
    assert len({(folder / n).read_text() for n in names}) == len(names)


def test_model_info_profiles_the_candidate(tmp_path, capsys):
    path = _sample(tmp_path) / "cand_001.yaml"
    capsys.readouterr()
    assert main(["model", "info", "--arch-config", str(path), "--num-classes", "3", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["params"] == profile_model(to_model_config(load_candidate(path), 3)).params
    assert printed["config"]["detail"]["stages"][1]["expansion"] in (3, 4, 6)


def test_arch_config_fills_the_model_config_and_excludes_the_arch_flags(tmp_path, capsys):
    path = _sample(tmp_path) / "smallest.yaml"
    cfg = train_config_from_args(build_parser().parse_args(["train", "--arch-config", str(path)]))
    assert cfg.model == to_model_config(load_candidate(path), num_classes=0)
    assert main(["train", "--arch-config", str(path), "--width", "0.5", "--out", str(tmp_path / "run")]) == 2
    assert "error: --arch-config" in capsys.readouterr().err and not (tmp_path / "run").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("arch: mobilenet_v2_ssdlite\nresolution: 320\ndetail: {stages: [{}, {kernel: 9}]}\n")
    assert main(["model", "info", "--arch-config", str(bad)]) == 2
    assert "has 7 stages" in capsys.readouterr().err


def test_train_from_a_candidate_file_and_reload_its_checkpoint(tmp_path):
    data = tiny_synth(tmp_path / "data", n_train=8, n_val=2)
    candidate = yaml.safe_load((_sample(tmp_path) / "cand_000.yaml").read_text())
    candidate["resolution"] = 96
    path = tmp_path / "cand.yaml"
    path.write_text(yaml.safe_dump(candidate))
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--arch-config", str(path), "--epochs", "1", "--batch-size", "4",
            "--workers", "0", "--threads", "1", "--precision", "fp32", "--warmup-steps", "1", "--out", str(run), "-q"]
    assert main(argv) == 0
    expected = to_model_config(load_candidate(path), num_classes=0)
    assert load_train_config(run / "config.yaml").model == expected
    detector, _ = load_detector(run / "best")
    assert detector.config.detail == expected.detail and detector.config.resolution == 96
