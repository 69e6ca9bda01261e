"""Hardswish and HardSigmoid in integer kernels for ONNX Runtime's CPU build.

ONNX Runtime has no integer kernel for either; between a DequantizeLinear and a
QuantizeLinear it runs them in float, and it splits Hardswish into a HardSigmoid and a Mul.
On a MobileNetV3-small (batch 32, Xeon AVX-512 VNNI, 2 threads) those float passes and their
conversions took 67 ms of 130, more than all 52 integer convolutions together.

Both are a clipped line, and a UINT8 QuantizeLinear clips for free:

    HardSigmoid(x) = clip(alpha·x + beta, 0, 1) = clip(x + beta/alpha, 0, 1/alpha) · alpha

so ``Add(x, beta/alpha)`` quantized to UINT8 with scale (1/alpha)/255 holds exactly the
clipped value, and dequantizing those codes with scale 1/255 instead multiplies by alpha:
the DequantizeLinear gives HardSigmoid(x) on a grid of 1/255. Hardswish(x) is x times that
(alpha 1/6, beta 1/2). ONNX Runtime runs the Add as QLinearAdd and the product as
QLinearMul, on the UINT8 tensors around them.

The rewrite applies where the activation reads a per-tensor DequantizeLinear and only
QuantizeLinear nodes read its output: what the ONNX Runtime CPU plan makes of every such
activation between two integer ops.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quantpipe.quantize.graph import GraphIndex

# ONNX's defaults; Hardswish has no attributes and is HardSigmoid(1/6, 1/2) times x.
_HARD_SIGMOID = {"HardSigmoid": (0.2, 0.5), "HardSwish": (1 / 6, 0.5)}
_LEVELS = 255  # UINT8 codes 0..255 over [0, 1/alpha]


def integer_hard_activations(model: onnx.ModelProto) -> list[str]:
    """Rewrite, in place, each eligible Hardswish/HardSigmoid (module doc); returns their
    names."""
    index = GraphIndex(model)
    taken = {v for n in model.graph.node for v in (*n.input, *n.output, n.name)}
    taken |= {t.name for t in model.graph.initializer}
    replaced: dict[int, list[onnx.NodeProto]] = {}
    names = []
    for node in model.graph.node:
        alpha_beta = _eligible(node, index)
        if alpha_beta is not None:
            replaced[id(node)] = _replacement(model, node, *alpha_beta, taken)
            names.append(node.name)
    nodes = [new for n in model.graph.node for new in replaced.get(id(n), [n])]
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)
    return names


def _eligible(node: onnx.NodeProto, index: GraphIndex) -> tuple[float, float] | None:
    if node.op_type not in _HARD_SIGMOID or node.domain not in ("", "ai.onnx"):
        return None
    alpha, beta = _HARD_SIGMOID[node.op_type]
    for attr in node.attribute:
        if attr.name == "alpha":
            alpha = attr.f
        elif attr.name == "beta":
            beta = attr.f
    if not (alpha > 0 and beta > 0):
        return None  # no clipped line this Q can hold
    dq = index.producer.get(node.input[0])
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    scale = index.constant(dq.input[1])
    readers = index.consumers(node.output[0])
    if scale is None or scale.size != 1 or not readers or node.output[0] in index.outputs:
        return None
    if not all(u.node.op_type == "QuantizeLinear" for u in readers):
        return None
    return float(alpha), float(beta)


def _replacement(
    model: onnx.ModelProto, node: onnx.NodeProto, alpha: float, beta: float, taken: set[str]
) -> list[onnx.NodeProto]:
    """Add(x, beta/alpha) -> Q(UINT8, (1/alpha)/255) -> DQ(1/255) [-> Mul(x, .)]."""

    def fresh(suffix: str) -> str:
        name, k = f"{node.name}_{suffix}", 1
        while name in taken:
            name, k = f"{node.name}_{suffix}_{k}", k + 1
        taken.add(name)
        return name

    x, out = node.input[0], node.output[0]
    names = {key: fresh(key) for key in ("offset", "offset_scale", "zero", "shifted")}
    names |= {key: fresh(key) for key in ("clip_scale", "gate_scale", "offset_dq", "codes")}
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(1, np.uint8), names["offset"]),
            numpy_helper.from_array(np.array(beta / alpha, np.float32), names["offset_scale"]),
            numpy_helper.from_array(np.array(0, np.uint8), names["zero"]),
            numpy_helper.from_array(np.array(1 / alpha / _LEVELS, np.float32), names["clip_scale"]),
            numpy_helper.from_array(np.array(1 / _LEVELS, np.float32), names["gate_scale"]),
        ]
    )
    gate = out if node.op_type == "HardSigmoid" else fresh("gate")
    nodes = [
        helper.make_node(
            "DequantizeLinear",
            [names["offset"], names["offset_scale"], names["zero"]],
            [names["offset_dq"]],
            name=names["offset_dq"],
        ),
        helper.make_node("Add", [x, names["offset_dq"]], [names["shifted"]], name=fresh("Add")),
        helper.make_node(
            "QuantizeLinear",
            [names["shifted"], names["clip_scale"], names["zero"]],
            [names["codes"]],
            name=fresh("Q"),
        ),
        helper.make_node(
            "DequantizeLinear",
            [names["codes"], names["gate_scale"], names["zero"]],
            [gate],
            name=fresh("DQ"),
        ),
    ]
    if node.op_type == "HardSwish":
        nodes.append(helper.make_node("Mul", [x, gate], [out], name=fresh("Mul")))
    return nodes
