"""Table 11.1 with all kinds of rows (`lpdet table-11-1`): built from saved comparison results."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from lpdet.cli import main as lpdet
from lpdet.data.synth import SYNTH_CLASSES, generate_synthetic_classification, generate_synthetic_coco
from lpdet.design.classify_compare import ClassifierRows, ClassifyCompareResult
from lpdet.design.quant_compare import CompareResult, CompareRow, compare_to_dict
from lpdet.design.table_11_1 import combine_results, format_table_11_1, write_table_11_1
from lpdet.errors import LpdetError
from lpdet.models.checkpoint_format import save_checkpoint
from lpdet.models.config import ModelConfig
from lpdet.models.registry import build_detector
from tests.deploy.tiny import tiny_checkpoint

SPREAD_DW = {"depthwise": {"layers": 13, "median": 2.5, "max": 11.0, "worst_layer": "a"},
             "other": {"layers": 15, "median": 1.5, "max": 3.0, "worst_layer": "b"}}
SPREAD_PLAIN = {"other": {"layers": 11, "median": 1.4, "max": 2.0, "worst_layer": "c"}}


def _rows(metric: str, values: list, latencies: list) -> list[CompareRow]:
    rows = []
    for name, value, ms in zip(("float", "naive 8-bit", "calibrated PTQ", "QAT"), values, latencies):
        rows.append(CompareRow(name, metrics={metric: value}, latency_ms=ms) if value is not None
                    else CompareRow(name, status="not run: pass --qat"))
    return rows


def _saved_results(tmp_path):
    classifiers = ClassifyCompareResult(data="synth-cls", images=1000, calibration_images=100, threads=1, runs=30,
                                        device="cpu A", models=[
        ClassifierRows("qf", "mobilenet_v2_classifier", "quant-friendly", 0.5, 96,
                       _rows("top1", [0.8, 0.79, 0.8, 0.81], [2.0, 1.0, 1.0, 1.0]), SPREAD_DW),
        ClassifierRows("v2", "mobilenet_v2_classifier", "standard", 0.5, 96,
                       _rows("top1", [0.82, 0.40, 0.81, None], [2.1, 1.1, 1.0, None]), SPREAD_DW),
        ClassifierRows("plain", "plain_conv_classifier", "standard", 0.5, 96,
                       _rows("top1", [0.7, 0.69, 0.7, 0.7], [5.0, 2.0, 2.0, 2.0]), SPREAD_PLAIN)])
    detector = CompareResult(checkpoint="det", data="synth", split="val", images=500,
                             rows=_rows("AP", [0.3, 0.1, 0.29, 0.3], [9.7, 4.9, 4.9, 4.7]), calibration_images=100,
                             threads=1, runs=30, device="cpu A", arch="mobilenet_v1_ssd", resolution=300,
                             weight_spread=SPREAD_DW, variant="standard", width=0.5)
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "classify_compare.json").write_text(json.dumps(asdict(classifiers)))
    (tmp_path / "det.json").write_text(json.dumps(compare_to_dict(detector)))
    return [tmp_path / "det.json", tmp_path / "cls"]  # a file and a folder that holds one


def test_one_table_from_both_comparisons(tmp_path):
    table = combine_results(_saved_results(tmp_path))
    # the seed's order: standard-convolution classifier, MobileNet classifiers (standard first), detector
    assert [(r.network, r.variant, r.metric) for r in table.rows] == [
        ("plain_conv_classifier", "standard", "top-1"), ("mobilenet_v2_classifier", "standard", "top-1"),
        ("mobilenet_v2_classifier", "quant-friendly", "top-1"), ("mobilenet_v1_ssd", "standard", "AP")]
    v2 = table.rows[1]
    assert v2.values == {"float": 0.82, "naive 8-bit": 0.40, "calibrated PTQ": 0.81, "QAT": None}
    assert v2.latency_ms["naive 8-bit"] == 1.1 and v2.separable and not table.rows[0].separable
    assert table.rows[3].weight_spread == SPREAD_DW and table.rows[3].data == "synth"
    text = format_table_11_1(table)
    assert "| mobilenet_v2_classifier (standard w0.5, 96) | top-1 % (synth-cls) | 82.0 / 2.10 ms | 40.0 / 1.10 ms " \
           "| 81.0 / 1.00 ms | — | -42.0 | 2.5 / 11.0 | 1.5 / 3.0 | mainly separable convolution |" in text
    assert "| mobilenet_v1_ssd (standard w0.5, 300) | AP % (synth) | 30.0 / 9.70 ms | 10.0 / 4.90 ms" in text
    assert "| — | 1.4 / 2.0 | standard convolution only |" in text
    md, js = write_table_11_1(table, tmp_path / "out")
    assert md.read_text() == text + "\n" and len(json.loads(js.read_text())["rows"]) == 4


def test_bad_inputs_name_the_file(tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(LpdetError, match="other.json: not a comparison result"):
        combine_results([tmp_path / "other.json"])
    with pytest.raises(LpdetError, match="holds neither"):
        combine_results([tmp_path])
    with pytest.raises(LpdetError, match="missing.json: no such file"):
        combine_results([tmp_path / "missing.json"])


@pytest.mark.filterwarnings("ignore")
def test_cli_end_to_end_on_tiny_models(tmp_path, capsys):
    """The real comparisons (tiny random models, a few images), then `lpdet table-11-1` over their folders:
    each table row carries its own comparison's numbers."""
    det_data = generate_synthetic_coco(tmp_path / "det_data", 4, 2, seed=0, progress=False)
    cls_data = generate_synthetic_classification(tmp_path / "cls_data", n_train=10, n_val=10, progress=False, workers=1)
    det = tiny_checkpoint(tmp_path / "det", arch="mobilenet_v1_ssd", num_classes=len(SYNTH_CLASSES),
                          class_names=sorted(SYNTH_CLASSES), category_ids=list(range(1, len(SYNTH_CLASSES) + 1)))
    torch.manual_seed(0)
    classifier = build_detector(ModelConfig("plain_conv_classifier", len(SYNTH_CLASSES), width=0.25, resolution=32))
    names = sorted(SYNTH_CLASSES)
    cls = save_checkpoint(tmp_path / "cls", model=classifier, model_config=classifier.config, class_names=names,
                          category_ids=list(range(len(names))))
    fast = ["--calibration-images", "2", "--runs", "1", "--quiet"]
    assert lpdet(["compare-quant", str(det), "--data", str(det_data), "--out", str(tmp_path / "c_det"), *fast]) == 0
    assert lpdet(["classify", "compare-quant", str(cls), "--data", str(cls_data), "--out", str(tmp_path / "c_cls"),
                  *fast]) == 0
    capsys.readouterr()
    assert lpdet(["table-11-1", str(tmp_path / "c_det"), str(tmp_path / "c_cls"), "--out", str(tmp_path / "t")]) == 0
    assert "wrote" in capsys.readouterr().out
    saved = json.loads((tmp_path / "t" / "table_11_1.json").read_text())["rows"]
    source_det = json.loads((tmp_path / "c_det" / "quant_compare.json").read_text())
    source_cls = json.loads((tmp_path / "c_cls" / "classify_compare.json").read_text())
    assert [(r["network"], r["variant"], r["metric"]) for r in saved] == [
        ("plain_conv_classifier", "standard", "top-1"), ("mobilenet_v1_ssd", "standard", "AP")]
    assert saved[0]["values"]["naive 8-bit"] == source_cls["models"][0]["rows"][1]["metrics"]["top1"]
    assert saved[1]["values"]["calibrated PTQ"] == source_det["rows"][2]["metrics"]["AP"]
    assert saved[1]["values"]["QAT"] is None and saved[1]["weight_spread"] == source_det["weight_spread"]
    assert lpdet(["table-11-1", str(tmp_path / "nowhere"), "--out", str(tmp_path / "t2")]) == 2
