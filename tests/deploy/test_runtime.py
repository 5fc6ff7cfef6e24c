import json

import onnx
import pytest
import torch

from lpdet.deploy.export import export_onnx
from lpdet.deploy.runtime import DeployedModel, load_model, model_size_bytes
from lpdet.errors import LpdetError
from lpdet.models.postprocess import PostprocessConfig
from tests.deploy.tiny import CATEGORY_IDS, CLASS_NAMES, tiny_checkpoint, tiny_detector



@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime")
    detector = tiny_detector()
    ckpt = tiny_checkpoint(root / "ckpt", detector)
    onnx_path = export_onnx(detector, root / "model.onnx",
                            metadata={"class_names": CLASS_NAMES, "category_ids": CATEGORY_IDS})
    return ckpt, onnx_path


def test_checkpoint_and_onnx_give_the_same_detections(models):
    ckpt, onnx_path = models
    torch_model, onnx_model = load_model(ckpt), load_model(onnx_path, threads=1)
    assert isinstance(torch_model, DeployedModel)
    assert (torch_model.kind, onnx_model.kind) == ("torch-fp32", "onnx-fp32")
    for model in (torch_model, onnx_model):
        assert model.resolution == 96
        assert model.class_names == CLASS_NAMES and model.category_ids == CATEGORY_IDS
    assert torch_model.path == ckpt and onnx_model.path == onnx_path

    images = torch.rand(3, 3, 96, 96, generator=torch.Generator().manual_seed(1))  # batch 3 through a batch-1 graph
    scores_t, boxes_t = torch_model.forward(images)
    scores_o, boxes_o = onnx_model.forward(images)
    assert scores_o.shape == scores_t.shape and scores_t.shape[0] == 3 and scores_t.shape[2] == 3
    assert torch.allclose(scores_o, scores_t, atol=1e-4)
    assert torch.allclose(boxes_o.clamp(0, 1), boxes_t, atol=1e-4)

    cfg = PostprocessConfig(score_threshold=0.3)
    dets_t, dets_o = torch_model.predict(images, cfg), onnx_model.predict(images, cfg)
    assert len(dets_t) == len(dets_o) == 3
    assert sum(len(d["scores"]) for d in dets_t) > 0  # not a trivial all-background comparison
    for a, b in zip(dets_t, dets_o):
        assert torch.equal(a["labels"], b["labels"])
        assert torch.allclose(a["scores"], b["scores"], atol=1e-4)
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-4)
        assert a["labels"].min() >= 1 and a["labels"].max() <= 3


def test_run_directory_and_size(models, tmp_path):
    ckpt, onnx_path = models
    run = tmp_path / "run"
    tiny_checkpoint(run / "best")
    assert load_model(run).path == run / "best"
    assert model_size_bytes(onnx_path) == onnx_path.stat().st_size
    assert model_size_bytes(ckpt) > 0


def test_wrong_input_size_names_the_model(models):
    _, onnx_path = models
    with pytest.raises(LpdetError, match=r"model\.onnx.*\[B, 3, 96, 96\]"):
        load_model(onnx_path).forward(torch.rand(1, 3, 64, 64))


def test_qat_checkpoint_is_torch_qat(tmp_path):
    from lpdet.quant.qat import calibrate, prepare_qat

    detector = prepare_qat(tiny_detector())
    calibrate(detector, [torch.rand(2, 3, 96, 96)])
    model = load_model(tiny_checkpoint(tmp_path / "qat", detector.eval()))
    assert model.kind == "torch-qat"
    scores, boxes = model.forward(torch.rand(1, 3, 96, 96))
    assert scores.shape[-1] == 3 and boxes.shape[-1] == 4


def _bad(tmp_path, name, content=b"\x00\x01garbage" * 100):
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("name, message", [
    ("random.onnx", "not a loadable ONNX model"),
    ("model.tflite", "pip install"),
    ("model.pt", "never unpickles"),
    ("model.pth", "never unpickles"),
    ("model.xyz", "unknown model format"),
])
def test_bad_files(tmp_path, name, message):
    path = _bad(tmp_path, name)
    with pytest.raises(LpdetError, match=message) as info:
        load_model(path)
    assert name in str(info.value) and "\n" not in str(info.value)


def test_missing_files(tmp_path):
    for name in ("nothing.onnx", "nothing"):
        with pytest.raises(LpdetError, match=f"{name}: no such"):
            load_model(tmp_path / name)


def test_onnx_without_lpdet_metadata(models, tmp_path):
    _, onnx_path = models
    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    with pytest.raises(LpdetError, match="foreign.onnx: was not exported by lpdet export"):
        load_model(tmp_path / "foreign.onnx")
    entry = proto.metadata_props.add()
    entry.key, entry.value = "lpdet", "{not json"
    onnx.save(proto, str(tmp_path / "broken.onnx"))
    with pytest.raises(LpdetError, match="broken.onnx: .*not valid JSON"):
        load_model(tmp_path / "broken.onnx")
    assert json.loads(next(p.value for p in onnx.load(str(onnx_path)).metadata_props if p.key == "lpdet"))


def test_embedded_postprocess_settings_are_the_default(models, tmp_path):
    """A model carrying tuned NMS settings (as `lpdet design` writes them) uses them unless told otherwise."""
    from lpdet.deploy.export import update_metadata
    from lpdet.deploy.model import read_onnx_metadata

    _, onnx_path = models
    assert load_model(onnx_path).postprocess == PostprocessConfig()  # none embedded: the defaults
    tuned = update_metadata(onnx_path, tmp_path / "tuned.onnx", {"postprocess": {"nms_iou": 0.15, "top_k": 7}})
    assert read_onnx_metadata(tuned)["class_names"] == CLASS_NAMES  # the rest of the metadata is kept
    model = load_model(tuned)
    assert model.postprocess == PostprocessConfig(nms_iou=0.15, top_k=7)
    images = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    loose = PostprocessConfig(score_threshold=0.0, nms_iou=0.15)
    assert max(len(d["scores"]) for d in model.predict(images, loose)) > 7  # the cap below is a real cut
    assert [len(d["scores"]) for d in model.predict(images)] == [
        min(7, len(d["scores"])) for d in model.predict(images, PostprocessConfig(nms_iou=0.15, top_k=100))]
