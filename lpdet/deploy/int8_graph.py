"""Rewrites of an int8 QDQ graph that change how fast onnxruntime runs it, never what it computes.

`pad_stem_channels`: the first convolution sees the 3-channel image. onnxruntime's int8
convolution (u8 activations, s8 weights, NHWC) gathers each output pixel's 3x3x3 input window
3 bytes at a time, and on the AVX-512 VNNI CPU we measured it ran the stem at about half the speed
of the fp32 convolution (0.51 ms against 0.28 ms for MobileNetV2 @300): the one layer where int8
was slower than float. Padding the quantized input to 4 channels with zeros (and the stem's weights
with a zero input channel) lets it gather 4-byte groups: the padded stem is about 0.35 ms faster
there. The padding is done on the quantized uint8 image (QuantizeLinear -> Pad -> DequantizeLinear;
onnxruntime's QLinearConv reads the padded bytes), not on the float one. The result is bit for bit
the same: a padded value is the zero point, i.e. exactly 0.0, and it meets zero weights, whose
per-output-channel scales do not change.

`unshare_int8_initializers`: gives each node its own copy of an int8 initializer that several
nodes read (the exporter stores one all-zero weight zero point for many convolutions).
onnxruntime's exact-kernel option for x86 CPUs without VNNI (`session.x64quantprecision`, set by
`lpdet.deploy.runtime.onnx_session`) rewrites each convolution's s8 weights and zero point to u8,
and fails to load a graph where one int8 initializer feeds several of them ("Attempt to replace
the existing tensor", onnxruntime 1.32). Same values, a few bytes more.

`finish_int8_graph` applies both; every int8 graph lpdet writes goes through it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["finish_int8_graph", "pad_stem_channels", "unshare_int8_initializers", "STEM_CHANNELS"]

STEM_CHANNELS = 4


def _consumers(graph) -> dict[str, list]:
    result: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            result.setdefault(name, []).append(node)
    return result


def _stem(graph, producer: dict, consumers: dict, initializers: dict):
    """(input QuantizeLinear, its DequantizeLinear, int8 weight initializer) of the first group-1 Conv
    over a 3-channel quantized input, when each link feeds that Conv alone; None otherwise."""
    for conv in graph.node:
        if conv.op_type != "Conv" or any(a.name == "group" and a.i != 1 for a in conv.attribute):
            continue
        act_dq, weight_dq = producer.get(conv.input[0]), producer.get(conv.input[1])
        if act_dq is None or weight_dq is None or act_dq.op_type != "DequantizeLinear" \
                or weight_dq.op_type != "DequantizeLinear":
            continue
        act_q = producer.get(act_dq.input[0])
        weight = initializers.get(weight_dq.input[0])
        if act_q is None or act_q.op_type != "QuantizeLinear" or weight is None or len(weight.dims) != 4 \
                or weight.dims[1] != 3:
            continue
        axis = next((a.i for a in weight_dq.attribute if a.name == "axis"), 1)
        exclusive = all(len(consumers.get(name, [])) == 1 for name in
                        (act_q.output[0], act_dq.output[0], weight_dq.output[0], weight.name))
        per_tensor_input = all(numpy_helper.to_array(initializers[name]).size == 1
                               for name in act_q.input[1:] if name in initializers)
        if exclusive and per_tensor_input and \
                (axis == 0 or numpy_helper.to_array(initializers[weight_dq.input[1]]).size == 1):
            return act_q, act_dq, weight
        return None
    return None


def pad_stem_channels(proto: onnx.ModelProto, channels: int = STEM_CHANNELS) -> bool:
    """Pad the quantized input of `proto`'s stem convolution to `channels` channels (in place; see
    the module docstring). Returns False, leaving the graph alone, when it has no such stem."""
    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    initializers = {t.name: t for t in graph.initializer}
    found = _stem(graph, producer, _consumers(graph), initializers)
    if found is None:
        return False
    quantize, dequantize, weight = found
    quantized = quantize.output[0]
    pads_name, value_name, padded_name = (f"{quantized}_stem_pads", f"{quantized}_stem_pad_value",
                                          f"{quantized}_stem_padded")
    graph.initializer.append(numpy_helper.from_array(
        np.array([0, 0, 0, 0, 0, channels - 3, 0, 0], dtype=np.int64), pads_name))
    # The padding is the zero point (a uint8 0 when the QuantizeLinear has none): it dequantizes to 0.0.
    zero_point = initializers.get(quantize.input[2]) if len(quantize.input) > 2 and quantize.input[2] else None
    value = numpy_helper.to_array(zero_point).reshape(()) if zero_point is not None else np.array(0, np.uint8)
    graph.initializer.append(numpy_helper.from_array(np.asarray(value), value_name))
    # Padded after the QuantizeLinear: 1-byte values instead of float32 ones, and the quantization of
    # the image has 3 channels to do, not 4 (measured: 0.2 ms of a 4 ms int8 graph went to padding floats).
    pad = onnx.helper.make_node("Pad", [quantized, pads_name, value_name], [padded_name], mode="constant",
                                name=f"{quantize.name}_stem_pad")
    dequantize.input[0] = padded_name
    nodes = list(graph.node)
    nodes.insert(nodes.index(dequantize), pad)
    del graph.node[:]
    graph.node.extend(nodes)

    values = numpy_helper.to_array(weight)
    padded = np.zeros((values.shape[0], channels, *values.shape[2:]), dtype=values.dtype)
    padded[:, :3] = values
    weight.CopyFrom(numpy_helper.from_array(padded, weight.name))
    # Shapes recorded for the rewired tensors are stale now (3 channels): let runtimes infer them.
    stale = {dequantize.output[0]}
    kept = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return True


def unshare_int8_initializers(model: onnx.ModelProto) -> int:
    """Give every node its own copy of each int8 initializer it shares with other nodes (in
    place); returns how many copies were added."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    consumers = _consumers(graph)
    added = 0
    for name, tensor in initializers.items():
        for k, node in enumerate(consumers.get(name, [])[1:], start=1):
            copy = onnx.TensorProto()
            copy.CopyFrom(tensor)
            copy.name = f"{name}__{k}"
            graph.initializer.append(copy)
            node.input[:] = [copy.name if i == name else i for i in node.input]
            added += 1
    return added


def finish_int8_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The exact rewrites every int8 graph lpdet writes gets (in place): a 4-channel stem and
    unshared int8 initializers."""
    pad_stem_channels(model)
    unshare_int8_initializers(model)
    return model
