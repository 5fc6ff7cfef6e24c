"""scripts/table_11_1.py's recorded recipes (the script's end-to-end run trains 14 models; not a unit test)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "table_11_1.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("table_11_1_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _option(argv: list[str], name: str) -> str:
    return argv[len(argv) - 1 - argv[::-1].index(name) + 1]  # the last one wins, as in argparse


def test_schedule_gives_the_asked_steps(script):
    for steps, images, batch in ((3, 40, 32), (300, 5000, 32), (400, 4000, 16), (1000, 100, 32)):
        argv = script.schedule(steps, images, batch)
        epochs, per_epoch = int(_option(argv, "--epochs")), int(_option(argv, "--limit-train-batches"))
        assert per_epoch <= -(-images // batch)  # never more batches than an epoch has
        assert steps <= epochs * per_epoch < steps + epochs


def test_recipes(script):
    args = script.parse_args(["--float-steps", "300", "--qat-steps", "60", "--collapse-recipe"])
    rows = {row.name: row for row in script.ROWS}
    assert {(r.arch, r.quant_friendly) for r in script.ROWS} >= {
        ("plain_conv_classifier", False), ("mobilenet_v1_classifier", True), ("mobilenet_v2_classifier", False),
        ("mobilenet_v1_ssd", False), ("mobilenet_v1_ssd", True)}
    qf_float, qf_qat = script.recipe(rows["mnv2_cls_qf"], args, "float"), script.recipe(rows["mnv2_cls_qf"], args, "qat")
    assert "--quant-friendly" in qf_float and "--quant-friendly" in qf_qat and "--qat" in qf_qat
    assert _option(qf_qat, "--lr") == "0.005" and _option(qf_float, "--lr") == "1.0"  # the collapse recipe's
    assert _option(qf_float, "--depthwise-weight-decay") == "0"
    assert _option(script.recipe(rows["mnv2_cls"], args, "float"), "--lr") == "1.0"  # both variants the same way
    detector = script.recipe(rows["mnv1_ssd"], args, "float")
    assert "--depthwise-weight-decay" not in detector and _option(detector, "--resolution") == "160"
    plain = script.recipe(rows["plain_conv"], script.parse_args([]), "float")
    assert _option(plain, "--lr") == "0.05" and "--quant-friendly" not in plain


def test_two_phase_collapse_recipe(script):
    """--collapse-steps N: the classifiers get a run of N steps at lr 1.0 first, then the float run at the
    usual rate (still no depthwise decay); detectors and runs without the recipe keep two stages."""
    args = script.parse_args(["--collapse-recipe", "--collapse-steps", "60", "--float-steps", "300"])
    rows = {row.name: row for row in script.ROWS}
    assert script.stages(rows["mnv2_cls"], args) == ["collapse", "float", "qat"]
    assert script.stages(rows["mnv1_ssd"], args) == ["float", "qat"]
    assert script.stages(rows["mnv2_cls"], script.parse_args([])) == ["float", "qat"]
    collapse, float_run = script.recipe(rows["mnv2_cls"], args, "collapse"), script.recipe(rows["mnv2_cls"], args, "float")
    assert _option(collapse, "--lr") == "1.0" and _option(float_run, "--lr") == "0.05"
    assert _option(float_run, "--depthwise-weight-decay") == "0"
    epochs, per_epoch = int(_option(collapse, "--epochs")), int(_option(collapse, "--limit-train-batches"))
    assert 60 <= epochs * per_epoch < 60 + epochs
