import collections

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from lpdet.data.coco import CocoDetection
from lpdet.data.transforms import eval_transforms
from lpdet.deploy.export import export_onnx
from lpdet.deploy.runtime import load_model, onnx_session
from lpdet.errors import LpdetError
from lpdet.deploy.ptq import calibration_batch, quantize_calibrated, quantize_naive
from tests.deploy.tiny import CATEGORY_IDS, CLASS_NAMES, tiny_detector



@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    root = tmp_path_factory.mktemp("ptq")
    fp32 = export_onnx(tiny_detector(), root / "fp32.onnx",
                       metadata={"class_names": CLASS_NAMES, "category_ids": CATEGORY_IDS})
    calibration = torch.rand(6, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    return (fp32, quantize_calibrated(fp32, root / "ptq.onnx", calibration),
            quantize_naive(fp32, root / "naive.onnx", calibration))


def _optimized_ops(path, tmp_path) -> collections.Counter:
    out = tmp_path / (path.stem + ".opt.onnx")
    onnx_session(path, threads=1, optimized_model=out)
    return collections.Counter(node.op_type for node in onnx.load(str(out)).graph.node)


def _weight_scales(path) -> list[np.ndarray]:
    """Scales of the DequantizeLinear nodes that dequantize int8 weight initializers."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    scales = []
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            if numpy_helper.to_array(inits[node.input[0]]).dtype == np.int8 and node.input[1] in inits:
                scales.append(numpy_helper.to_array(inits[node.input[1]]))
    return scales


def test_every_conv_runs_as_qlinearconv(quantized, tmp_path):
    fp32, *int8 = quantized
    convs = _optimized_ops(fp32, tmp_path)
    n_conv = sum(1 for node in onnx.load(str(fp32)).graph.node if node.op_type == "Conv")
    assert n_conv > 0 and convs["QLinearConv"] == 0
    for path in int8:
        ops = _optimized_ops(path, tmp_path)
        assert ops["QLinearConv"] == n_conv and ops["Conv"] == 0
        assert ops["QLinearAdd"] > 0  # the residual adds
        assert ops["Softmax"] == 1 and ops["Exp"] == 1  # the decode tail stays float


def test_weight_granularity(quantized):
    _, ptq, naive = quantized
    per_channel, per_tensor = _weight_scales(ptq), _weight_scales(naive)
    assert per_channel and per_tensor
    assert all(s.ndim == 0 or s.size == 1 for s in per_tensor)  # one scale per weight tensor
    assert sum(s.size > 1 for s in per_channel) >= len(per_channel) // 2  # per output channel


def test_metadata_and_scores(quantized):
    fp32, ptq, naive = quantized
    float_model = load_model(fp32)
    images = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(5))
    reference, _ = float_model.forward(images)
    for path, label in ((ptq, "int8-ptq"), (naive, "int8-naive")):
        model = load_model(path)
        assert (model.kind, model.quantization) == ("onnx-int8", label)
        assert model.class_names == CLASS_NAMES and model.resolution == 96
        scores, boxes = model.forward(images)
        assert scores.shape == reference.shape and boxes.shape[-1] == 4
        assert np.corrcoef(scores.flatten(), reference.flatten())[0, 1] > 0.95
        assert model.metadata["calibration"]["weights"] == ("per-channel" if label == "int8-ptq" else "per-tensor")
    assert load_model(naive).metadata["calibration"]["images"] == 2


def test_refuses_bad_inputs(quantized, tmp_path):
    fp32, ptq, _ = quantized
    with pytest.raises(LpdetError, match="already quantized"):
        quantize_calibrated(ptq, tmp_path / "x.onnx", torch.rand(2, 3, 96, 96))
    with pytest.raises(LpdetError, match=r"\[N, 3, 96, 96\]"):
        quantize_calibrated(fp32, tmp_path / "x.onnx", torch.rand(2, 3, 64, 64))
    with pytest.raises(LpdetError, match="nothing.onnx: no such"):
        quantize_naive(tmp_path / "nothing.onnx", tmp_path / "x.onnx", torch.rand(2, 3, 96, 96))


def test_calibration_batch(tmp_path):
    from lpdet.data.spec import resolve_dataset
    from lpdet.data.synth import generate_synthetic_coco

    spec = resolve_dataset(str(generate_synthetic_coco(tmp_path / "d", 6, 2, seed=0, progress=False)))
    dataset = CocoDetection(spec.train.annotations, spec.train.images, transform=eval_transforms(64))
    batch = calibration_batch(dataset, 4)
    assert batch.shape == (4, 3, 64, 64) and batch.dtype == torch.float32
    assert 0 <= batch.min() and batch.max() <= 1
    assert torch.equal(batch, calibration_batch(dataset, 4))  # seeded
    assert calibration_batch(dataset, 100).shape[0] == 6
