"""NMS inside the ONNX graph gives the same detections as select_detections on the graph's raw outputs."""

from dataclasses import asdict

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from lpdet.deploy.export import export_onnx
from lpdet.deploy.model import read_onnx_metadata as read_metadata
from lpdet.deploy.nms_graph import NMS_OUTPUTS, append_nms, append_nms_to_file
from lpdet.deploy.runtime import load_model, onnx_session
from lpdet.errors import LpdetError
from lpdet.models.postprocess import PostprocessConfig, select_detections
from lpdet.quant.qat import calibrate, prepare_qat
from tests.helpers import overfit_detector

R = 128  # the checked-in fixture detector's resolution
SETTINGS = [PostprocessConfig(), PostprocessConfig(class_agnostic=True),
            PostprocessConfig(score_threshold=0.2, nms_iou=0.4, top_k=7, pre_nms_top_k=5)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """fp32 and int8 (QAT) exports of a small model overfitted on real (synthetic-dataset) images."""
    root = tmp_path_factory.mktemp("nms_graph")
    detector, dataset, images = overfit_detector(root, R, n_images=12)
    meta = {"class_names": dataset.class_names}
    fp32 = export_onnx(detector, root / "fp32.onnx", metadata=meta)
    prepare_qat(detector)
    calibrate(detector, [images[:4], images[4:8]] * 5)
    detector.eval()
    int8 = export_onnx(detector, root / "int8.onnx", metadata=meta)
    return {"fp32": fp32, "int8": int8}, images


def _assert_same(got: dict, want: dict):
    assert torch.equal(got["labels"], want["labels"])
    assert torch.equal(got["scores"], want["scores"])
    assert torch.equal(got["boxes"], want["boxes"])


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("cfg", SETTINGS, ids=["default", "class_agnostic", "tight"])
def test_in_graph_nms_matches_python_on_real_images(exported, tmp_path, precision, cfg):
    paths, images = exported
    raw = load_model(paths[precision], threads=1)
    with_nms = load_model(append_nms_to_file(paths[precision], tmp_path / "nms.onnx", cfg), threads=1)
    assert with_nms.postprocess == cfg and with_nms.kind == raw.kind
    detections = 0
    for image in images:
        want = raw.predict(image[None], cfg)[0]
        got = with_nms.predict(image[None])[0]
        _assert_same(got, want)
        detections += len(want["scores"])
    assert detections > len(images)  # not a comparison of empty results


def _identity_graph(anchors: int, classes: int) -> onnx.ModelProto:
    """A graph passing `scores [1, A, K]` and `boxes [1, A, 4]` inputs through, to feed NMS chosen values."""
    nodes = [helper.make_node("Identity", ["scores_in"], ["scores"]), helper.make_node("Identity", ["boxes_in"], ["boxes"])]
    graph = helper.make_graph(
        nodes, "passthrough",
        [helper.make_tensor_value_info("scores_in", TensorProto.FLOAT, [1, anchors, classes]),
         helper.make_tensor_value_info("boxes_in", TensorProto.FLOAT, [1, anchors, 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, anchors, classes]),
         helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, anchors, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("cfg", SETTINGS + [PostprocessConfig(score_threshold=0.0, nms_iou=0.7, top_k=300,
                                                              pre_nms_top_k=40)])
def test_ties_duplicates_and_empty_boxes_match_python(tmp_path, cfg):
    anchors, classes = 150, 20
    generator = torch.Generator().manual_seed(3)
    # Scores on a coarse grid, as from an int8 graph: ties at every cut-off.
    scores = torch.randint(0, 10, (1, anchors, classes), generator=generator).float() / 16
    centre = torch.rand(1, anchors, 2, generator=generator) * 0.6
    size = torch.rand(1, anchors, 2, generator=generator) * 0.4
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1)
    boxes[0, ::3] = boxes[0, 1::3][: len(boxes[0, ::3])]  # duplicated boxes: ties in NMS
    boxes[0, ::7] = torch.tensor([1.2, 0.1, 1.5, 0.3])  # wholly outside: empty once clipped ...
    scores[0, ::7, :10] += 0.25  # ... and scoring high: they take places in half the classes' pre-NMS top-k
    scores[0, -1] = 0.0  # an anchor without any candidate
    session = onnx_session_of(append_nms(_identity_graph(anchors, classes), cfg), tmp_path)
    got_boxes, got_scores, got_labels, count = session.run(None, {"scores_in": scores.numpy(),
                                                                  "boxes_in": boxes.numpy()})
    want = select_detections(scores, boxes, cfg)[0]
    assert count.tolist() == [len(want["scores"])] and len(want["scores"]) > 5
    _assert_same({"boxes": torch.from_numpy(got_boxes[0]), "scores": torch.from_numpy(got_scores[0]),
                  "labels": torch.from_numpy(got_labels[0])}, want)


def test_nothing_above_the_threshold_gives_no_detections(tmp_path):
    session = onnx_session_of(append_nms(_identity_graph(10, 3), PostprocessConfig()), tmp_path)
    outputs = session.run(None, {"scores_in": np.zeros((1, 10, 3), np.float32),
                                 "boxes_in": np.random.rand(1, 10, 4).astype(np.float32)})
    assert [o.shape for o in outputs] == [(1, 0, 4), (1, 0), (1, 0), (1,)] and outputs[3].tolist() == [0]


def onnx_session_of(model: onnx.ModelProto, tmp_path):
    onnx.checker.check_model(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return onnx_session(path, threads=1)


def test_metadata_outputs_and_errors(exported, tmp_path):
    paths, _ = exported
    cfg = PostprocessConfig(nms_iou=0.5)
    out = append_nms_to_file(paths["int8"], tmp_path / "nms.onnx", cfg)
    meta = read_metadata(out)
    assert meta["nms_in_graph"] is True and meta["postprocess"] == asdict(cfg)
    assert meta["outputs"] == list(NMS_OUTPUTS) and meta["quantization"] == "int8-qat"
    assert [o.name for o in onnx.load(str(out)).graph.output] == list(NMS_OUTPUTS)
    assert read_metadata(paths["int8"]).get("nms_in_graph") is None  # the source is untouched
    with pytest.raises(LpdetError, match="already has NMS"):
        append_nms_to_file(out, tmp_path / "twice.onnx")
    model = load_model(out, threads=1)
    with pytest.raises(LpdetError, match="NMS in its graph"):
        model.predict(torch.rand(1, 3, R, R), PostprocessConfig(nms_iou=0.7))
    with pytest.raises(LpdetError, match="NMS in its graph"):
        model.forward(torch.rand(1, 3, R, R))
