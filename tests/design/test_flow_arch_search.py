"""`lpdet design --search DIR`: a tiny search, then a tiny design on the same data that fine-tunes the
search's chosen candidate like the resolution-only model and compares them (report section, Table
11.4 row with its interval), all cached; a bad search folder is one clear error."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import yaml

import lpdet.design.trials as trials
from lpdet.cli import main
from lpdet.design.flow import design
from lpdet.design.search.driver import SearchOptions, run_search
from lpdet.design.search.folder import open_search_folder
from lpdet.errors import LpdetError
from tests.design.search.conftest import tiny_settings as tiny_search_settings
from tests.design.test_flow import tiny_settings
from tests.helpers import tiny_synth

ARCH_TRIALS = ("arch-search-init", "arch-search-finetune", "arch-search-export", "arch-search-eval",
               "arch-search-eval-select", "arch-search-latency")


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """(the dataset YAML, a finished tiny search folder, a tiny design with --search on the same data)."""
    root = tmp_path_factory.mktemp("arch")
    data = tiny_synth(root / "data", n_train=14, n_val=4)
    run_search(tiny_search_settings(root / "latency.lock"),
               SearchOptions(data=str(data), budget_ms=10_000.0, out=root / "search", progress=False))
    result = design(data, 10_000.0, root / "design", settings=replace(tiny_settings(), filtering=False),
                    search=root / "search", progress=False)
    return data, root / "search", result


def test_the_search_is_compared_with_the_resolution_only_model(searched):
    data, search, result = searched
    steps = {row["step"]: row for row in result.summary["steps"]}
    row, resolution = steps["architecture search"], steps["resolution"]
    assert result.summary["steps"][-1]["step"] == "architecture search"  # after the final row: a side branch
    # its gain is over the resolution-only model, in val AP, with the paired bootstrap interval
    assert row["delta_AP"] == pytest.approx(row["AP"] - resolution["AP"], abs=1e-12)
    assert row["delta_AP_interval"] and "[" in row["delta_AP_interval"]
    assert row["kept"] == ("kept by the rule" in row["note"]) and "final pick is unchanged" in row["note"]
    assert result.summary["architecture_search"]["AP"] == row["AP"]
    md = (result.out_dir / "report.md").read_text()
    assert "## Architecture search" in md and f"Search: {search}" in md
    # the supernet never saw val; the search's val is the design's (same data, compared by image file)
    assert "0 of its 4 val images among them" in md and "the search's val split is the same as the design's" in md
    assert "search's own Pareto front" in md and "on the search's selection split" in md
    assert "| architecture search |" in md
    # the same fine-tuning as the resolution-only model: as many steps
    ft = json.loads((result.out_dir / "trials" / "arch-search-finetune" / "result.json").read_text())
    chosen = json.loads((result.out_dir / "trials" / f"finetune-r{resolution['resolution']}" / "result.json").read_text())
    assert ft["steps"] == chosen["steps"] >= 1
    for name in ARCH_TRIALS:
        assert (result.out_dir / "trials" / name / "result.json").is_file(), name
    latency = json.loads((result.out_dir / "trials" / "arch-search-latency" / "result.json").read_text())
    assert len(latency["comparison"]["models"]) == 3  # base, resolution-only, search: one interleaved run


def test_a_rerun_redoes_nothing(searched, monkeypatch):
    data, search, result = searched

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(trials, "train", no_training)
    again = design(data, 10_000.0, result.out_dir, settings=replace(tiny_settings(), filtering=False), search=search,
                   progress=False)
    assert again.trials_run == [] and all(name in again.trials_cached for name in ARCH_TRIALS)


def test_a_bad_search_folder_is_one_clear_error(searched, tmp_path, capsys):
    data, search, result = searched
    evaluation = result.out_dir / "selection" / "data.yaml"
    with pytest.raises(LpdetError, match=r"--search .*missing: no such folder; run `lpdet search"):
        open_search_folder(tmp_path / "missing", arch="mobilenet_v2_ssdlite", data=evaluation)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LpdetError, match=r"empty: not a finished search"):
        open_search_folder(tmp_path / "empty", arch="mobilenet_v2_ssdlite", data=evaluation)
    with pytest.raises(LpdetError, match=r"it searched mobilenet_v2_ssdlite, the design is for mobilenet_v1_ssd"):
        open_search_folder(search, arch="mobilenet_v1_ssd", data=evaluation)
    copy = tmp_path / "moved"  # a search given --supernet CKPT, whose checkpoint is gone
    shutil.copytree(search, copy, ignore=shutil.ignore_patterns("trials", "candidates", "study.db"))
    front = json.loads((copy / "pareto.json").read_text())
    (copy / "pareto.json").write_text(json.dumps({**front, "supernet": str(tmp_path / "gone")}))
    with pytest.raises(LpdetError, match=r"its supernet .*gone.* is gone; rerun the search with --supernet"):
        open_search_folder(copy, arch="mobilenet_v2_ssdlite", data=evaluation)
    # another class set: the search's supernet does not know the design's classes
    train = json.loads((evaluation.parent / "annotations" / "instances_train.fit.json").read_text())
    train["categories"] = [{**c, "name": f"other-{c['name']}"} for c in train["categories"]]
    (tmp_path / "train.json").write_text(json.dumps(train))
    spec = yaml.safe_load(evaluation.read_text())
    for split in ("train", "select", "val"):
        spec[split] = {k: str((evaluation.parent / v).resolve()) for k, v in spec[split].items()}
    spec["train"]["annotations"] = str(tmp_path / "train.json")
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(LpdetError, match=r"its supernet was trained on classes .* pass a search run on this dataset"):
        open_search_folder(search, arch="mobilenet_v2_ssdlite", data=tmp_path / "other.yaml")
    assert main(["design", "--data", str(data), "--budget-ms", "5", "--out", str(tmp_path / "d"),
                 "--search", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "no such folder" in err
