import collections
import copy
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from lpdet.deploy.export import export_onnx
from lpdet.deploy.int8_graph import pad_stem_channels
from tests.deploy.tiny import tiny_detector

R = 64


@pytest.fixture(scope="module")
def unpadded(tmp_path_factory):
    """An fp32 export and its plain onnxruntime static QDQ quantization (what lpdet quantizes
    before padding the stem)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    folder = tmp_path_factory.mktemp("int8-graph")
    fp32 = export_onnx(tiny_detector(resolution=R), folder / "fp32.onnx")
    images = [np.random.default_rng(i).random((1, 3, R, R), dtype=np.float32) for i in range(4)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"images": x} for x in images])

        def get_next(self):
            return next(self.items, None)

    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    quantize_static(str(fp32), str(folder / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    return fp32, onnx.load(str(folder / "int8.onnx"))


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})


def test_padding_the_stem_changes_no_output(unpadded):
    _, model = unpadded
    padded = copy.deepcopy(model)
    assert pad_stem_channels(padded)
    onnx.checker.check_model(padded, full_check=True)

    inits = {t.name: numpy_helper.to_array(t) for t in padded.graph.initializer}
    producer = {out: n for n in padded.graph.node for out in n.output}
    stem = next(n for n in padded.graph.node if n.op_type == "Conv")
    weight = inits[producer[stem.input[1]].input[0]]
    assert weight.shape[1] == 4 and not weight[:, 3].any() and weight.dtype == np.int8
    pad = producer[producer[stem.input[0]].input[0]]
    quantize = producer[pad.input[0]]
    assert pad.op_type == "Pad" and inits[pad.input[1]].tolist() == [0, 0, 0, 0, 0, 1, 0, 0]
    assert quantize.op_type == "QuantizeLinear"  # the uint8 image is padded, not the float one
    assert inits[pad.input[2]].dtype == np.uint8 and inits[pad.input[2]] == inits[quantize.input[2]]

    x = np.random.default_rng(7).random((1, 3, R, R), dtype=np.float32)
    before, after = _run(model, x), _run(padded, x)
    assert before[0].max() > 0.3  # informative scores, not all background
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)  # bit for bit: a padded value is exactly 0.0


def test_graphs_without_a_quantized_stem_are_left_alone(unpadded):
    fp32, _ = unpadded
    model = onnx.load(str(fp32))
    untouched = model.SerializeToString()
    assert not pad_stem_channels(model)
    assert model.SerializeToString() == untouched


def test_lpdet_int8_exports_carry_the_padded_stem(tmp_path):
    from lpdet.quant.qat import calibrate, prepare_qat

    detector = prepare_qat(tiny_detector(resolution=R))
    calibrate(detector, [torch.rand(2, 3, R, R)])
    model = onnx.load(str(export_onnx(detector, tmp_path / "qat.onnx")))
    ops = collections.Counter(n.op_type for n in model.graph.node)
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    assert ops["Pad"] == 1 and pad.input[0] == next(n for n in model.graph.node if n.op_type == "QuantizeLinear").output[0]


def test_int8_initializers_are_unshared_without_changing_outputs(tmp_path):
    """The exporter shares one int8 zero point among many convolutions; onnxruntime's exact x86
    kernels (session.x64quantprecision, set by onnx_session on CPUs without VNNI) refuse such a graph."""
    from lpdet.deploy.int8_graph import unshare_int8_initializers
    from lpdet.deploy.runtime import onnx_session
    from lpdet.quant.qat import calibrate, prepare_qat

    detector = prepare_qat(tiny_detector())
    calibrate(detector, [torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))])
    detector.eval()
    model = onnx.load(str(export_onnx(detector, tmp_path / "int8.onnx")))
    shared = copy.deepcopy(model)
    int8 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    readers = collections.Counter(i for n in model.graph.node for i in n.input if i in int8)
    assert int8 and max(readers.values()) == 1  # lpdet's export is already unshared
    # share them again as the exporter writes them, then undo it
    first = {}
    for t in shared.graph.initializer:
        if t.data_type == onnx.TensorProto.INT8:
            first.setdefault((tuple(t.dims), t.raw_data), t.name)
    by_name = {t.name: (tuple(t.dims), t.raw_data) for t in shared.graph.initializer}
    for node in shared.graph.node:
        node.input[:] = [first.get(by_name.get(i), i) if i in int8 else i for i in node.input]
    assert unshare_int8_initializers(shared) > 0  # (onnxruntime 1.32 refused to load it before this)
    x = np.random.default_rng(0).random((1, 3, 96, 96), dtype=np.float32)
    exact = [onnx_session(m, exact_int8_kernels=True) for m in (shared, model)]  # (the option that refused it)
    for got, want in zip(exact[0].run(None, {"images": x}), exact[1].run(None, {"images": x})):
        np.testing.assert_array_equal(got, want)
