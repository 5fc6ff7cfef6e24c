"""Classifiers through the shared code path: training (the loop's classification task), checkpoints,
QAT, fully int8 export with onnxruntime parity, evaluation and a detector initialised from a
classifier's backbone."""

from __future__ import annotations

import collections
import csv

import numpy as np
import onnx
import pytest
import torch

from lpdet.data.classification import ImageFolderDataset, load_classification_yaml
from lpdet.data.synth import generate_synthetic_classification
from lpdet.data.transforms import eval_transforms
from lpdet.deploy.export import export_onnx
from lpdet.deploy.runtime import load_detector, load_model, onnx_session
from lpdet.errors import LpdetError
from lpdet.eval.accuracy import evaluate_accuracy, topk_correct
from lpdet.models.checkpoint_format import load_checkpoint, save_checkpoint
from lpdet.models.config import ModelConfig
from lpdet.models.registry import build_detector, load_backbone_weights
from lpdet.quant.fake_quant import QConv2d
from lpdet.quant.qat import calibrate, prepare_qat
from lpdet.train.loop import train

from tests.helpers import tiny_train_config

R = 32


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_cls")
    return generate_synthetic_classification(root / "data", n_train=40, n_val=20, seed=0, progress=False, workers=1)


def _config(data_yaml, out, arch="mobilenet_v2_classifier", quant_friendly=False, **overrides):
    cfg = tiny_train_config(data_yaml, out, arch=arch, resolution=R, epochs=1, batch_size=8, augment="light",
                            **overrides)
    cfg.model.quant_friendly = quant_friendly
    return cfg


@pytest.fixture(scope="module")
def float_run(data_yaml, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "float"
    return train(_config(data_yaml, out), progress=False)


def test_classifier_trains_validates_and_checkpoints(float_run, data_yaml):
    ckpt = load_checkpoint(float_run)
    assert ckpt.model_config.arch == "mobilenet_v2_classifier" and ckpt.model_config.num_classes == 10
    assert len(ckpt.class_names) == 10 and ckpt.train_state["best_epoch"] == 1
    rows = list(csv.DictReader((float_run.parent / "val.csv").open()))
    assert list(rows[0]) == ["epoch", "step", "top1", "top5", "seconds"]
    steps = list(csv.DictReader((float_run.parent / "metrics.csv").open()))
    assert len(steps) == 5 and all(np.isfinite(float(r["loss"])) for r in steps)
    # the best checkpoint's recorded top-1 is what evaluating it gives
    model = load_model(float_run)
    val = ImageFolderDataset(load_classification_yaml(data_yaml).val, eval_transforms(R))
    result = evaluate_accuracy(model.forward, val)
    assert result.num_images == 20 and result.metrics["top1"] == pytest.approx(float(rows[0]["top1"]))


def test_fp32_onnx_gives_the_checkpoint_scores(float_run, data_yaml, tmp_path):
    classifier, ckpt = load_detector(float_run)
    path = export_onnx(classifier, tmp_path / "fp32.onnx", metadata={"class_names": ckpt.class_names})
    images = torch.rand(4, 3, R, R)
    np.testing.assert_allclose(load_model(path).forward(images).numpy(), load_model(float_run).forward(images).numpy(),
                               atol=1e-5)


def test_topk_against_a_plain_reference():
    scores = torch.tensor(np.random.default_rng(0).random((50, 7)), dtype=torch.float32)
    labels = torch.tensor(np.random.default_rng(1).integers(0, 7, 50))
    for k in (1, 5):
        reference = [int(labels[i]) in np.argsort(-scores[i].numpy())[:k] for i in range(50)]
        assert topk_correct(scores, labels, k).tolist() == reference
    assert topk_correct(scores[:, :3], labels.clamp(max=2), 5).all()  # fewer than 5 classes: all correct


def _qat_from_the_loop(data_yaml, float_run, tmp_path):
    """The standard MobileNetV2 classifier fine-tuned with QAT by the training loop (--qat --init)."""
    best = train(_config(data_yaml, tmp_path / "qat", qat=True, init=float_run), progress=False)
    classifier, ckpt = load_detector(best)
    assert classifier.config.quantization == "qat"
    return classifier, ckpt.class_names


def _quant_friendly_qat(arch):
    """A quantization-friendly classifier prepared for QAT, after one SGD step through the fake quantization."""
    torch.manual_seed(0)
    classifier = prepare_qat(build_detector(ModelConfig(arch, 10, width=0.25, resolution=R, quant_friendly=True)))
    optimizer = torch.optim.SGD(classifier.parameters(), lr=0.01, momentum=0.9)
    loss = torch.nn.functional.cross_entropy(classifier(torch.rand(8, 3, R, R)), torch.arange(8))
    loss.backward()
    optimizer.step()
    assert np.isfinite(loss.item())
    return classifier, [f"c{i}" for i in range(10)]


@pytest.mark.parametrize("variant", ["mobilenet_v2 standard (loop)", "mobilenet_v2_classifier", "mobilenet_v1_classifier"])
def test_qat_classifier_exports_fully_int8_and_agrees_with_onnxruntime(data_yaml, float_run, tmp_path, variant):
    classifier, class_names = (_qat_from_the_loop(data_yaml, float_run, tmp_path) if "loop" in variant
                               else _quant_friendly_qat(variant))
    val = ImageFolderDataset(load_classification_yaml(data_yaml).val, eval_transforms(R))
    images = torch.stack([val[i][0] for i in range(len(val))] + [torch.rand(3, R, R) for _ in range(80)])
    calibrate(classifier, [images[:20], images[20:40]])
    classifier.eval()
    path = export_onnx(classifier, tmp_path / "int8.onnx", metadata={"class_names": class_names})
    session = onnx_session(path, threads=1, optimized_model=tmp_path / "opt.onnx")
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["QLinearConv"] == sum(isinstance(m, QConv2d) for m in classifier.modules())
    assert not [op for op in ops if "Conv" in op and op != "QLinearConv"], ops
    assert ops["QLinearGlobalAveragePool"] == 1 and ops["QuantizeLinear"] == 1, ops  # int8 from input to logits
    with torch.no_grad():
        logits = classifier(images)
    ours = torch.softmax(logits, -1).numpy()
    theirs = np.concatenate([session.run(None, {"images": images[i:i + 1].numpy()})[0] for i in range(len(images))])
    step = float(classifier.fc.act_quant.qparams()[0])
    assert np.mean(np.abs(ours - theirs) <= step) >= 0.99  # probabilities within one logit step
    # top-1 agreement; a flip needs a near tie (within two logit steps) in the fake-quant model
    agree = ours.argmax(1) == theirs.argmax(1)
    assert agree.mean() >= 0.95, agree.mean()
    top2 = logits.sort(dim=1).values[:, -2:].numpy()
    assert all(top2[i, 1] - top2[i, 0] <= 2 * step + 1e-6 for i in np.flatnonzero(~agree))


def test_classifier_backbone_initialises_a_detector(float_run):
    detector = build_detector(ModelConfig("mobilenet_v2_ssdlite", 3, width=0.25, resolution=64))
    loaded, _ = load_backbone_weights(detector, float_run)
    state = load_checkpoint(float_run).model_state
    own = detector.backbone.state_dict()
    assert loaded == len(own)  # the same body: every backbone tensor
    assert all(torch.equal(own[k], state[f"backbone.{k}"]) for k in own)
    wider = build_detector(ModelConfig("mobilenet_v2_ssdlite", 3, width=0.5, resolution=64))
    assert load_backbone_weights(wider, float_run)[0] < len(wider.backbone.state_dict()) // 2  # shapes must fit
    qat_detector = prepare_qat(build_detector(ModelConfig("mobilenet_v2_ssdlite", 3, width=0.25, resolution=64)))
    with pytest.raises(LpdetError, match="QAT"):  # a QAT checkpoint is not a starting point
        save_checkpoint(float_run.parent / "qat_ckpt", model=qat_detector, model_config=qat_detector.config,
                        class_names=["a", "b", "c"], category_ids=[1, 2, 3])
        load_backbone_weights(detector, float_run.parent / "qat_ckpt")


def test_plain_conv_classifier_has_no_depthwise_layer_and_rejects_quant_friendly():
    model = build_detector(ModelConfig("plain_conv_classifier", 10, width=0.25, resolution=R))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 11 and all(m.groups == 1 for m in convs)
    assert model(torch.rand(2, 3, R, R)).shape == (2, 10)
    with pytest.raises(LpdetError, match="no separable convolutions"):
        build_detector(ModelConfig("plain_conv_classifier", 10, width=0.25, resolution=R, quant_friendly=True))


def test_eval_agree_with_counts_same_top1_predictions(float_run, data_yaml, tmp_path, capsys):
    import json

    from lpdet.cli import main

    onnx_path = tmp_path / "fp32.onnx"
    assert main(["classify", "export", str(float_run), "--format", "onnx", "-o", str(onnx_path)]) == 0
    capsys.readouterr()
    assert main(["classify", "eval", str(onnx_path), "--data", str(data_yaml), "--agree-with", str(float_run),
                 "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["agreeing_images"] == report["images"] == 20 and report["top1_agreement"] == 1.0
    # the share is counted image by image: a model predicting one class everywhere agrees only there
    ckpt = load_checkpoint(float_run)
    constant = build_detector(ckpt.model_config)
    constant.load_state_dict(ckpt.model_state)
    with torch.no_grad():
        constant.fc.weight.zero_()
        constant.fc.bias.copy_(torch.arange(len(ckpt.class_names), dtype=torch.float32))  # always the last class
    save_checkpoint(tmp_path / "constant", model=constant, model_config=ckpt.model_config,
                    class_names=ckpt.class_names, category_ids=ckpt.category_ids)
    assert main(["classify", "eval", str(onnx_path), "--data", str(data_yaml), "--agree-with",
                 str(tmp_path / "constant"), "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    float_predictions = evaluate_accuracy(load_model(onnx_path).forward,
                                          ImageFolderDataset(load_classification_yaml(data_yaml).val,
                                                             eval_transforms(R))).predictions
    assert report["agreeing_images"] == sum(p == len(ckpt.class_names) - 1 for p in float_predictions)
    assert report["other_top1"] == pytest.approx(1 / len(ckpt.class_names), abs=0.2)
