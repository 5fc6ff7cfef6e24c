"""Table 11.1 for classifiers (`lpdet classify compare-quant`): the four rows per classifier, side by side."""

from __future__ import annotations

import json

import pytest
import torch

from lpdet.data.classification import ImageFolderDataset, load_classification_yaml
from lpdet.data.synth import SYNTH_CLASSES, generate_synthetic_classification
from lpdet.data.transforms import eval_transforms
from lpdet.deploy.runtime import load_model
from lpdet.design.classify_compare import compare_classifiers
from lpdet.eval.accuracy import evaluate_accuracy
from lpdet.models.checkpoint_format import save_checkpoint
from lpdet.models.config import ModelConfig
from lpdet.models.registry import build_detector

R = 32


def _checkpoint(path, arch, quant_friendly=False):
    torch.manual_seed(0)
    model = build_detector(ModelConfig(arch, len(SYNTH_CLASSES), width=0.25, resolution=R,
                                       quant_friendly=quant_friendly))
    with torch.no_grad():  # informative outputs: the default init makes every class equally likely
        torch.nn.init.normal_(model.fc.weight, std=0.5)
    names = sorted(SYNTH_CLASSES)
    return save_checkpoint(path, model=model, model_config=model.config, class_names=names,
                           category_ids=list(range(len(names))))


@pytest.mark.filterwarnings("ignore")
def test_compare_rows_side_by_side(tmp_path):
    data = generate_synthetic_classification(tmp_path / "data", n_train=10, n_val=10, progress=False, workers=1)
    ckpts = [_checkpoint(tmp_path / "qf", "mobilenet_v2_classifier", quant_friendly=True),
             _checkpoint(tmp_path / "plain", "plain_conv_classifier")]
    result = compare_classifiers(ckpts, str(data), tmp_path / "out", calibration_images=4, runs=2, progress=False)
    assert [(m.arch, m.variant) for m in result.models] == [("mobilenet_v2_classifier", "quant-friendly"),
                                                            ("plain_conv_classifier", "standard")]
    for model in result.models:
        assert [r.name for r in model.rows] == ["float", "naive 8-bit", "calibrated PTQ", "QAT"]
        assert [r.quantization for r in model.rows[:3]] == ["fp32", "int8-naive", "int8-ptq"]
        assert not model.rows[3].ran and "classify train --qat" in model.rows[3].status
        assert all(r.latency_ms > 0 for r in model.rows[:3])
    assert set(result.models[0].weight_spread) == {"depthwise", "other"}
    assert set(result.models[1].weight_spread) == {"other"}  # no separable convolution in the plain network
    # the float row's top-1 is the checkpoint's own, evaluated independently of the comparison
    val = ImageFolderDataset(load_classification_yaml(data).val, eval_transforms(R))
    own = evaluate_accuracy(load_model(ckpts[1]).forward, val).metrics["top1"]
    assert result.models[1].rows[0].metrics["top1"] == pytest.approx(own)
    saved = json.loads((tmp_path / "out" / "classify_compare.json").read_text())
    assert len(saved["models"]) == 2
    table = (tmp_path / "out" / "classify_compare.md").read_text()
    assert "plain_conv_classifier (standard" in table and "mobilenet_v2_classifier (quant-friendly" in table
