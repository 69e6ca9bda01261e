"""A mixed-precision Q/DQ ONNX model's weights in the packed file (quantpipe/mixed/packed.py),
and back.

The Q/DQ model stores every weight as INT8 (what ONNX Runtime and TensorRT execute); the
packed file stores the same codes at their real bit widths, one float32 scale per channel,
and the model's other float initializers (biases, activation scales) raw. `restore` writes
them back into the model's graph: a model restored from the file is the exported model,
initializer for initializer, so the file is a complete store of its weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from quantpipe.errors import CorruptArtifactError
from quantpipe.mixed.packed import PackedAccounting, read_packed, write_packed
from quantpipe.mixed.packed_tensor import QuantizedTensor
from quantpipe.quantize.bits import BitWidths
from quantpipe.quantize.graph import GraphIndex, attribute


def pack_qdq_weights(
    model: onnx.ModelProto, bits: BitWidths, path: Path, metadata: dict[str, Any]
) -> PackedAccounting:
    """Write `model`'s weights to `path` (atomically): each weight DequantizeLinear's INT8
    codes at the width `bits` gives the node reading it, its scales, the rest raw."""
    quantized = weight_tensors(model, bits)
    scales = {_scale_name(model, name) for name in quantized}
    raw = {
        init.name: numpy_helper.to_array(init)
        for init in model.graph.initializer
        if init.name not in quantized
        and init.name not in scales
        and init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)
    }
    return write_packed(path, quantized, raw, metadata)


def weight_tensors(model: onnx.ModelProto, bits: BitWidths) -> dict[str, QuantizedTensor]:
    """The INT8 weight initializers behind DequantizeLinear nodes, by initializer name, each
    at the widest width of the nodes that read it."""
    index = GraphIndex(model)
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        codes = numpy_helper.to_array(inits[node.input[0]])
        if codes.dtype != np.int8 or codes.ndim < 2:
            continue
        axis = attribute(node, "axis", 1) % codes.ndim
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        per_channel = scale if scale.ndim else np.full(codes.shape[axis], scale, np.float32)
        width = max(bits.weight(use.node.name) for use in index.consumers(node.output[0]))
        out[node.input[0]] = QuantizedTensor(codes, per_channel, width, axis, node.input[0])
    return out


def restore(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """A copy of `model` whose weights, weight scales and float initializers come from the
    packed file at `path`; a clear error when the file does not belong to this graph."""
    quantized, raw, _, _ = read_packed(path)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    values: dict[str, np.ndarray] = dict(raw)
    for name, q in quantized.items():
        values[name] = q.codes
        values[_scale_name(out, name)] = q.scales
    inits = {i.name: i for i in out.graph.initializer}
    missing = sorted(set(values) - set(inits))
    if missing:
        raise CorruptArtifactError(
            f"packed weights {path} do not belong to this model: it has no tensor "
            f"{missing[0]!r}; export the model and its packed file together"
        )
    for name, value in values.items():
        old = numpy_helper.to_array(inits[name])
        if old.ndim == 0:  # a per-tensor scale, stored once per channel
            value = value.reshape(-1)[:1]
        value = value.reshape(old.shape).astype(old.dtype)
        inits[name].CopyFrom(numpy_helper.from_array(value, name))
    return out


def _scale_name(model: onnx.ModelProto, codes: str) -> str:
    node = next(
        n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == codes
    )
    return node.input[1]
