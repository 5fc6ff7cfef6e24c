"""TFLite export / LiteRT runtime (lpdet.deploy.tflite): only with the optional extra lpdet[tflite]."""

from __future__ import annotations

import collections
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from torchvision.ops import batched_nms, box_iou  # noqa: E402

from lpdet.deploy.runtime import load_model  # noqa: E402
from lpdet.deploy.tflite import export_tflite, read_tflite_metadata  # noqa: E402
from lpdet.errors import LpdetError  # noqa: E402
from lpdet.models.box_coder import decode  # noqa: E402
from lpdet.models.config import ModelConfig  # noqa: E402
from lpdet.models.registry import build_detector  # noqa: E402
from tests.helpers import overfit_detector  # noqa: E402

R = 128
SCORE_THRESHOLD = 0.3
NMS_IOU = 0.6


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A float detector overfitted on 4 synthetic images (detections that mean something), and
    its fp32 and int8 (PTQ calibrated on all 8 images) TFLite exports."""
    root = tmp_path_factory.mktemp("tflite")
    detector, dataset, images = overfit_detector(root, R)
    meta = {"class_names": dataset.class_names, "category_ids": dataset.category_ids}
    fp32 = export_tflite(detector, root / "fp32.tflite", metadata=meta)
    int8 = export_tflite(detector, root / "int8.tflite", calibration_images=images, metadata=meta)
    return detector, images, fp32, int8, dataset


def _torch_outputs(detector, images):
    with torch.no_grad():
        cls_logits, box_deltas = detector(images)
    return torch.softmax(cls_logits, -1)[..., 1:], decode(box_deltas, detector.anchors)


def _detections(scores, boxes):
    out = []
    for image_scores, image_boxes in zip(scores, boxes):
        anchor, label = (image_scores > SCORE_THRESHOLD).nonzero(as_tuple=True)
        b, s = image_boxes[anchor].clamp(0, 1), image_scores[anchor, label]
        keep = batched_nms(b, s, label, NMS_IOU)
        out.append((b[keep], label[keep]))
    return out


def _matched(ours, theirs, iou_min=0.5):
    """(matched, total) detections of `ours` that have a same-class box in `theirs` with IoU >= iou_min."""
    matched = total = 0
    for (b1, l1), (b2, l2) in zip(ours, theirs):
        total += len(b1)
        if len(b1) and len(b2):
            iou = box_iou(b1, b2)
            iou[l1[:, None] != l2[None, :]] = 0
            matched += int((iou.max(dim=1).values >= iou_min).sum())
    return matched, total


def test_fp32_tflite_matches_torch(exported):
    detector, images, fp32, _, dataset = exported
    model = load_model(fp32, threads=1)
    assert model.kind == "tflite-fp32" and model.quantization == "fp32" and model.resolution == R
    assert model.class_names == dataset.class_names and model.category_ids == dataset.category_ids
    scores, boxes = model.forward(images[:3])  # a batch runs image by image
    ref_scores, ref_boxes = _torch_outputs(detector, images[:3])
    assert scores.shape == ref_scores.shape and boxes.shape == ref_boxes.shape
    assert (scores - ref_scores).abs().max() < 1e-4 and (boxes - ref_boxes).abs().max() < 1e-4
    meta = read_tflite_metadata(fp32)
    assert meta["arch"] == "mobilenet_v2_ssdlite" and meta["outputs"] == ["scores", "boxes"]


def test_int8_tflite_is_int8_and_detects_like_torch(exported):
    detector, images, fp32, int8, _ = exported
    model = load_model(int8, threads=1)
    assert model.kind == "tflite-int8" and model.quantization == "int8-ptq"
    assert read_tflite_metadata(int8)["calibration_images"] == len(images)
    assert int8.stat().st_size < 0.4 * fp32.stat().st_size  # int8 weights

    # every conv / depthwise conv / residual add runs in int8; softmax and box decoding in float
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(int8), num_threads=1)
    tensors = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    kinds = collections.Counter((op["op_name"], np.dtype(tensors[op["inputs"][0]]).name)
                                for op in interpreter._get_ops_details() if op["inputs"][0] in tensors)
    assert kinds[("CONV_2D", "int8")] > 0 and kinds[("DEPTHWISE_CONV_2D", "int8")] > 0
    assert kinds[("CONV_2D", "float32")] == kinds[("DEPTHWISE_CONV_2D", "float32")] == 0
    assert kinds[("ADD", "int8")] >= 10  # MobileNetV2's residual adds
    assert kinds[("SOFTMAX", "float32")] == 1

    # detections after threshold + NMS agree with the float torch model
    scores, boxes = model.forward(images)
    ref_scores, ref_boxes = _torch_outputs(detector, images)
    assert (scores - ref_scores).abs().median() < 0.01
    ours, theirs = _detections(scores, boxes), _detections(ref_scores, ref_boxes)
    m1, t1 = _matched(theirs, ours)
    m2, t2 = _matched(ours, theirs)
    assert t1 >= 20, t1  # a meaningful comparison
    assert m1 / t1 >= 0.8 and m2 / max(t2, 1) >= 0.8, (m1, t1, m2, t2)


def test_resolution_and_input_checks(exported):
    _, _, fp32, _, _ = exported
    with pytest.raises(LpdetError, match="fixed input size 128"):
        load_model(fp32, resolution=160)
    model = load_model(fp32)
    with pytest.raises(LpdetError, match=r"\[B, 3, 128, 128\]"):
        model.forward(torch.rand(1, 3, 96, 96))


@pytest.mark.parametrize("content", [b"\x00\x01garbage" * 100, b""])
def test_bad_tflite_file(tmp_path, content):
    path = tmp_path / "model.tflite"
    path.write_bytes(content)
    with pytest.raises(LpdetError, match="not a readable TFLite model") as info:
        load_model(path)
    assert "model.tflite" in str(info.value) and "\n" not in str(info.value)


def test_calibration_images_must_fit(tmp_path):
    detector = build_detector(ModelConfig("mobilenet_v2_ssdlite", 3, width=0.5, resolution=R)).eval()
    with pytest.raises(LpdetError, match=r"calibration images: need \[N, 3, 128, 128\]"):
        export_tflite(detector, tmp_path / "x.tflite", calibration_images=torch.rand(2, 3, 96, 96))
    detector.config = replace(detector.config, quantization="qat")
    with pytest.raises(LpdetError, match="QAT detector"):
        export_tflite(detector, tmp_path / "x.tflite")
