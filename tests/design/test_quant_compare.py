import json

import pytest
import torch

from lpdet.data.coco import CocoDetection
from lpdet.data.spec import resolve_dataset
from lpdet.data.synth import generate_synthetic_coco
from lpdet.errors import LpdetError
from lpdet.design.quant_compare import QAT_HINT, compare_quantization, format_compare
from tests.deploy.tiny import tiny_checkpoint, tiny_detector



@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    data = generate_synthetic_coco(root / "data", 8, 4, seed=0, progress=False)
    spec = resolve_dataset(str(data))
    val = CocoDetection(spec.val.annotations, spec.val.images)
    names = [val.coco.cats[c]["name"] for c in val.category_ids]
    detector = tiny_detector(num_classes=len(names))
    ckpt = tiny_checkpoint(root / "float", detector, class_names=names, category_ids=val.category_ids)
    return root, str(data), ckpt, detector, names, val.category_ids


def _check_outputs(result, out_dir, rows_run):
    assert [r.name for r in result.rows] == ["float", "naive 8-bit", "calibrated PTQ", "QAT"]
    assert [r.ran for r in result.rows] == rows_run
    markdown = (out_dir / "quant_compare.md").read_text()
    data = json.loads((out_dir / "quant_compare.json").read_text())
    assert len(data["rows"]) == 4 and markdown == format_compare(result) + "\n"
    for name in ("float", "naive 8-bit", "calibrated PTQ", "QAT"):
        assert f"| {name} |" in markdown
    for row in result.rows:
        if row.ran:
            assert set(row.metrics) >= {"AP", "AP50", "AP_small", "AP_medium", "AP_large"}
            assert row.latency_ms > 0 and row.size_mb > 0 and row.latency_ratio > 0
    float_row, naive_row, ptq_row = result.rows[:3]
    assert float_row.latency_ratio == 1.0 and float_row.quantization == "fp32"
    assert (naive_row.quantization, ptq_row.quantization) == ("int8-naive", "int8-ptq")
    assert ptq_row.size_mb < float_row.size_mb / 2  # int8 weights
    assert result.images == 4
    # the folded weight spread of the float model explains the naive row
    assert data["weight_spread"]["depthwise"]["max"] >= data["weight_spread"]["depthwise"]["median"] >= 1
    assert "Why naive 8-bit holds or drops: folded weight range spread" in markdown


def test_compare_without_qat(setup, tmp_path):
    _, data, ckpt, *_ = setup
    result = compare_quantization(ckpt, data, tmp_path / "out", qat_ckpt=None, calibration_images=4, runs=2,
                                  progress=False)
    _check_outputs(result, tmp_path / "out", [True, True, True, False])
    assert result.rows[3].status == QAT_HINT and QAT_HINT in format_compare(result)


def test_compare_with_qat(setup, tmp_path):
    from lpdet.quant.qat import calibrate, prepare_qat

    root, data, ckpt, detector, names, category_ids = setup
    qat = prepare_qat(tiny_detector(num_classes=len(names)))
    calibrate(qat, [torch.rand(2, 3, 96, 96)])
    qat_ckpt = tiny_checkpoint(root / "qat", qat.eval(), class_names=names, category_ids=category_ids)
    result = compare_quantization(ckpt, data, tmp_path / "out", qat_ckpt=qat_ckpt, calibration_images=4, runs=2,
                                  progress=False)
    _check_outputs(result, tmp_path / "out", [True, True, True, True])
    assert result.rows[3].quantization == "int8-qat"
    with pytest.raises(LpdetError, match="is a QAT checkpoint"):
        compare_quantization(qat_ckpt, data, tmp_path / "bad", qat_ckpt=None, runs=1, progress=False)
