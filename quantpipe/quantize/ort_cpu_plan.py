"""Where the ONNX Runtime CPU build quantizes beyond the portable plan.

The portable plan follows TensorRT's rules: the inputs of weighted ops and residual Adds are
quantized, and TensorRT fuses each Conv with the float activation behind it. ONNX Runtime's
CPU provider fuses a Q/DQ group into an integer kernel only where the op's inputs come
from DequantizeLinear nodes *and its output feeds a QuantizeLinear*. On modern blocks the
output of a Conv feeds Hardswish, SiLU (Sigmoid, Mul) or an SE gate, not a Q, so in the
portable model those Convs ran in float on dequantized values: a MobileNetV3-small ran 24
of 52 Convs as QLinearConv, with 30 Q and 60 DQ left as conversions, 2.4-3.0x slower
than FP32 (tests/bench/bench_ptq.py, Xeon AVX-512 VNNI, 2 threads).

This plan widens the portable one for that provider:

1. The output of every op ONNX Runtime has an integer kernel for (``ORT_INTEGER_OPS``) is
   quantized, unless it is a graph output. When the output's only reader is a Relu or a
   Clip, that activation's output is quantized instead: ONNX Runtime folds the activation
   into the QuantizeLinear (see quantize/ort_cpu.py).
2. The run-time inputs of those ops are quantized too (Mul: both, so an SE gate runs as
   QLinearMul; Sigmoid: its input).
3. A quantized tensor is quantized for every reader, so its QuantizeLinear is its
   producer's only reader (the fusion needs that). Nodes named in ``exclude`` keep reading
   the float tensor and their own outputs are not quantized.
4. What shape ops (but Slice) and MaxPool make of a quantized tensor is quantized at its
   scale, so the data moves in UINT8 (ONNX Runtime drops a DQ -> Reshape -> Q of one scale).

Ops with no integer kernel (Hardswish, HardSigmoid, Clip elsewhere, Resize, Softmax here)
run in float between a DequantizeLinear and a QuantizeLinear: one cheap elementwise pass
each, while every Conv, Gemm, MatMul, Add, Mul and pool around them runs in integers.

The tensors this plan adds need their own amax, so the calibration pass collects them too
(``calibration_tensors`` of this plan is a superset of the portable one's). A table that
lacks one (a TensorRT cache imported from elsewhere) leaves that tensor unquantized.
"""

from __future__ import annotations

from collections.abc import Collection

import onnx

from quantpipe.quantize.graph import GraphIndex, Use, with_unique_node_names
from quantpipe.quantize.placement import (
    ActivationQuant,
    QDQConfig,
    QDQPlan,
    amax_source,
    is_data_move,
    plan_qdq,
)

# ONNX Runtime's CPU provider fuses DQ -> op -> Q into an integer kernel for these ops
# (its QDQ selector-action transformer: Conv, Gemm, MatMul; Add, Mul; Sigmoid, LeakyRelu,
# AveragePool, GlobalAveragePool; Concat).
ORT_INTEGER_OPS = frozenset(
    {
        "Conv",
        "Gemm",
        "MatMul",
        "Add",
        "Mul",
        "Sigmoid",
        "LeakyRelu",
        "AveragePool",
        "GlobalAveragePool",
        "Concat",
    }
)
# Data moves ONNX Runtime does not run on quantized data (it keeps DQ -> Slice -> Q as
# three ops): quantizing their output only adds a conversion.
_KEPT_QDQ = frozenset({"Slice"})
# Activations ONNX Runtime removes in front of a QuantizeLinear whose range they contain.
_FOLDED_INTO_Q = frozenset({"Relu", "Clip"})


def plan_ort_cpu(
    model: onnx.ModelProto,
    config: QDQConfig | None = None,
    amax: Collection[str] | None = None,
    float_convs: Collection[str] = (),
) -> QDQPlan:
    """The portable plan of ``model`` widened for ONNX Runtime's CPU kernels (module doc).

    ``amax``: the tensors a calibration table has; added tensors outside it stay float.
    ``float_convs``: Convs the tactic pass keeps in float (quantize/cpu_tactics.py): their
    weights stay float and a graph input reaches them unquantized; a quantized input is
    read through its DequantizeLinear and their output is quantized as before, so the ops
    around them still run integer kernels.
    """
    config = config or QDQConfig()
    model = with_unique_node_names(model)
    portable = plan_qdq(model, config)
    index = GraphIndex(model)
    excluded = set(config.exclude)
    floats = _float_tensors(model)
    tensors = [a.tensor for a in portable.activations]
    for node in model.graph.node:
        if node.op_type not in ORT_INTEGER_OPS or node.name in excluded:
            continue
        if not _integer_capable(node, index) or node.output[0] not in floats:
            continue
        tensors += [t for t in node.input if index.is_activation(t) and t in floats]
        tensors.append(_output_site(node, index, excluded))
    portable_amax = {a.tensor: a.amax_from for a in portable.activations}
    chosen = _with_moved_copies(model, index, _in_order(model, index, tensors), excluded)
    activations = []
    for tensor in chosen:
        uses = tuple(
            sorted(
                (u.node.name, u.index)
                for u in index.consumers(tensor)
                if u.node.name not in excluded
                and not (u.node.name in float_convs and tensor in index.inputs)
            )
        )
        source = portable_amax.get(tensor) or amax_source(index, tensor, chosen)
        if uses and (amax is None or source in amax):
            activations.append(ActivationQuant(tensor, source, uses))
    # A weighted op writing a graph output (the classifier) keeps INT8 weights although ONNX
    # Runtime cannot fuse it (no Q follows) and dequantizes them on every run: float weights
    # were 1.2 ms faster on resnet18 at batch 1 but made a small MLP's INT8 build larger
    # than its FP32 model. Size is what the user asked INT8 for.
    weights = [w for w in portable.weights if w.node not in float_convs]
    return QDQPlan(activations, weights, portable.float_nodes)


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """The float32 tensors of ``model``, by ONNX shape inference (a shape computation's
    Concat or Mul of int64 values is no candidate)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name for v in infos if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


def _integer_capable(node: onnx.NodeProto, index: GraphIndex) -> bool:
    """The op as ONNX Runtime fuses it: Add and Mul of two run-time tensors (a constant
    operand would need its own quantized initializer), Concat of run-time tensors."""
    if node.op_type in ("Add", "Mul", "Concat"):
        return all(index.is_activation(t) for t in node.input)
    return True


def _output_site(node: onnx.NodeProto, index: GraphIndex, excluded: set[str]) -> str:
    """The tensor to quantize behind ``node``: its output, or the output of the Relu/Clip
    that is its only reader."""
    out = node.output[0]
    uses = index.consumers(out)
    if len(uses) == 1 and out not in index.outputs:
        reader = uses[0].node
        if reader.op_type in _FOLDED_INTO_Q and reader.name not in excluded:
            return str(reader.output[0])
    return str(out)


def _with_moved_copies(
    model: onnx.ModelProto, index: GraphIndex, tensors: list[str], excluded: set[str]
) -> list[str]:
    """``tensors`` plus what shape ops and MaxPool make of them, transitively (rule 4): at
    the input's scale, so ONNX Runtime drops the Q/DQ around them and moves UINT8 data (a
    ShuffleNet's channel shuffle: Reshape, Transpose, Reshape; not Slice, see _KEPT_QDQ)."""
    chosen = set(tensors)
    for node in model.graph.node:  # graph order: a copy's copy comes later
        if not node.input or node.name in excluded or node.input[0] not in chosen:
            continue
        moves = is_data_move(Use(node, 0)) or node.op_type == "MaxPool"
        if moves and node.op_type not in _KEPT_QDQ:
            chosen.add(node.output[0])
    return _in_order(model, index, list(chosen))


def _in_order(model: onnx.ModelProto, index: GraphIndex, tensors: list[str]) -> list[str]:
    """``tensors`` without repeats or graph outputs, in graph order."""
    wanted = set(tensors) - index.outputs
    order = [i.name for i in model.graph.input] + [o for n in model.graph.node for o in n.output]
    return [t for t in order if t in wanted]
