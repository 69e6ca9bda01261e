"""ONNX Runtime's own census of a model: which ops its CPU provider actually runs in integer
arithmetic, which compute ops it leaves in float, and the conversions left between them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx

from quantpipe.engines.ort_session import OrtConfig, make_session
from quantpipe.quantize.graph import READS_SHAPE

# What ONNX Runtime's CPU provider runs in integer arithmetic, and what it leaves in float.
INTEGER_OPS = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "QLinearAdd",
        "QLinearMul",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearConcat",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearSoftmax",
        "QGemm",
        "ConvInteger",
        "MatMulInteger",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
    }
)
# Float ops worth naming when they remain: the heavy ones, and the elementwise ones of modern
# blocks (each a pass over a whole feature map with its conversions).
FLOAT_COMPUTE_OPS = frozenset(
    {"Conv", "FusedConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "Add"}
    | {"Mul", "Sigmoid", "HardSigmoid", "HardSwish", "Softmax", "Resize"}
)


def ort_cpu_kernels(path: Path, optimized_path: Path) -> dict[str, dict[str, int]]:
    """Census of the ops ONNX Runtime's CPU provider actually runs for the model at ``path``.

    ONNX Runtime writes its optimised graph to ``optimized_path`` (a scratch file). Returns
    the integer ops, the float compute ops (Conv/Gemm/MatMul/Add left in float) and the
    Quantize/DequantizeLinear nodes that remain as separate conversions.
    """
    make_session(path, OrtConfig(optimized_model_path=str(optimized_path)))
    graph = onnx.load(str(optimized_path)).graph
    shape_work = _shape_computations(graph)
    ops = Counter(n.op_type for n in graph.node if n.name not in shape_work)
    conversions = ("QuantizeLinear", "DequantizeLinear")
    return {
        "integer": {op: n for op, n in sorted(ops.items()) if op in INTEGER_OPS},
        "float": {op: n for op, n in sorted(ops.items()) if op in FLOAT_COMPUTE_OPS},
        "conversions": {op: ops[op] for op in conversions if ops[op]},
    }


def _shape_computations(graph: onnx.GraphProto) -> set[str]:
    """Nodes that compute on shapes (a ShuffleNet's reshape sizes from x.size()): every
    run-time input comes from Shape/Size or another such node. Not model compute."""
    constants = {t.name for t in graph.initializer}
    derived: set[str] = set()
    names = set()
    for node in graph.node:  # ONNX Runtime writes its graph in topological order
        if node.op_type == "Constant":
            constants.update(node.output)
            continue
        inputs = [i for i in node.input if i and i not in constants]
        if node.op_type in READS_SHAPE or (inputs and all(i in derived for i in inputs)):
            derived.update(node.output)
            names.add(node.name)
    return names
