"""The ONNX Runtime CPU build of a Q/DQ model: same scales, integer kernels end to end.

`quantize_qdq` writes the model TensorRT wants: symmetric INT8 on every activation. ONNX
Runtime's CPU execution provider, given that model, fuses only part of it (resnet18: 11 of
20 Conv run as QLinearConv, the rest as float Conv on dequantized values, 1.07-1.30x the
FP32 latency). Three rewrites, none of which changes an activation scale, let it fuse
everything (20/20 QLinearConv, 8/8 QLinearAdd, 1 QuantizeLinear left; 0.53-0.58x FP32
over four runs of tests/bench/bench_ptq.py on an AVX2 CPU):

1. **UINT8, zero point 0, on tensors that cannot be negative** (Relu outputs, and pools,
   reshapes and Concats of them). ONNX Runtime removes a Relu in front of a QuantizeLinear
   whose zero point is the type's minimum (0 for UINT8, never for symmetric INT8), so
   Conv -> Relu -> Q becomes one QLinearConv, and its x86 kernels take UINT8 activations
   directly instead of shifting INT8 ones by 128. Values up to amax are the INT8 model's
   (0..127, same scale); above amax the INT8 model clips at 127 and this one at 255.
   It also keeps the AVX2 u8s8 kernels exact: they add pairs of u8*s8 products in int16
   (vpmaddubsw), which 2*127*127 fits but the shifted INT8 range (up to 255) does not; the
   saturation cost cifar10-resnet20 1.8 points with INT8 activations fused on an AVX2 CPU.
   Signed tensors get UINT8 with zero point 128 at the same scale: the INT8 grid and
   clipping range exactly, as ONNX Runtime's own INT8 -> UINT8 conversion makes it, but
   also where a tensor has several readers, which that conversion skips.
2. **One QuantizeLinear per tensor and scale.** `quantize_qdq` gives each consumer its own
   pair (ONNX Runtime converts an INT8 pair to UINT8 only where one Q feeds one DQ); a fused
   QLinearConv/QLinearAdd needs its output to feed a single Q, so the UINT8 copies merge
   (MobileNetV2: the projection convs and Adds whose output feeds two blocks).
   Where the tensor also feeds data-movement ops left in float (the Slice/Pad shortcut of a
   CIFAR ResNet), those read its dequantized copy instead (slicing, padding with zeros and
   reshaping commute with quantization): the Q must be the tensor's only reader for the
   Relu to fold. Their output is quantized anyway when it feeds an INT8 op.
3. **7-bit weights where the input is signed** (the first Conv of a CNN, a Gemm/MatMul
   after a signed tensor). Its UINT8 values with zero point 128 reach 255, and on CPUs
   without VNNI pairs of up to 255*127 saturate int16 (measured: the
   tiny residual CNN of the unit tests doubled its error against FP32). Weights in
   [-63, 63] keep 2*255*63 below 32767 (ONNX Runtime's own answer is `reduce_range`, 7-bit
   weights everywhere); only these layers pay the lost bit.

TensorRT accepts no UINT8 Q/DQ: this build is for ONNX Runtime's CPU provider only, and
the INT8 Q/DQ model stays the portable artifact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from quantpipe.quantize.graph import READS_SHAPE, SHAPE_OPS, GraphIndex, drop_unused_initializers
from quantpipe.quantize.ort_cpu_hard import integer_hard_activations

# Ops that only select, copy or reorder values (Pad: with zeros, checked where it matters).
_MOVES_DATA = SHAPE_OPS | {"Identity", "Pad", "MaxPool", "GlobalMaxPool", "Concat"}
# Ops whose output is >= 0 wherever their (first, or every for Concat) input is.
_SIGN_PRESERVING = _MOVES_DATA | {"AveragePool", "GlobalAveragePool"}
UINT8_ZERO = "ort_cpu_uint8_zero_point"
UINT8_MIDDLE = "ort_cpu_uint8_zero_point_128"  # for signed tensors: the INT8 range shifted


@dataclass
class OrtCpuBuild:
    """The rewritten model and what changed."""

    model: onnx.ModelProto
    uint8_tensors: list[str]  # non-negative activations now UINT8 with zero point 0 (rule 1)
    merged_quantize: int  # QuantizeLinear nodes removed as duplicates (rule 2)
    seven_bit_weights: list[str]  # the nodes whose weights were narrowed (rules 3, 4)
    clip_ranges: list[str] = field(default_factory=list)  # Clip outputs given c/255 (rule 4)
    integer_hard: list[str] = field(default_factory=list)  # Hardswish/HardSigmoid (rule 6)


def build_for_ort_cpu(model: onnx.ModelProto) -> OrtCpuBuild:
    """Copy of the Q/DQ ``model`` rewritten for ONNX Runtime's CPU kernels (see module doc).

    What changes: per-tensor QuantizeLinear nodes with an INT8 zero point of 0, all of whose
    consumers are DequantizeLinear nodes of the same scale (rules 1, 2), and
    the constant INT8 weights of Conv/Gemm/MatMul reading a signed INT8 tensor (rule 3).
    Anything else (asymmetric or foreign Q/DQ, float ops) is left as it is.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    hard = integer_hard_activations(out)
    index = GraphIndex(out)
    signs = _NonNegative(index)
    lowered = [q for q in out.graph.node if _lowerable(q, index)]
    non_negative = {q.name for q in lowered if signs.of(q.input[0])}
    if lowered:
        out.graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(0, np.uint8), UINT8_ZERO),
                numpy_helper.from_array(np.array(128, np.uint8), UINT8_MIDDLE),
            ]
        )
    for q in lowered:
        zero_point = UINT8_ZERO if q.name in non_negative else UINT8_MIDDLE
        q.input[2] = zero_point
        for use in index.consumers(q.output[0]):
            if len(use.node.input) < 3:  # zero point left out: 0 of the input's type
                use.node.input.append(zero_point)
            else:
                use.node.input[2] = zero_point
    merged = _merge_duplicates(out, lowered, index)
    _movers_read_dequantized(out, non_negative)
    _shapes_read_quantized(out)
    # The rewrites above rebuilt the node list (protobuf copies the nodes): find the
    # lowered Qs again by name, not by the objects collected before.
    names = {q.name for q in lowered} - {""}
    remaining = [n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.name in names]
    clipped = _fit_clip_ranges(out, remaining, GraphIndex(out))
    seven_bit = _seven_bit_weights(out, GraphIndex(out), set(clipped))
    drop_unused_initializers(out)
    uint8 = sorted({q.input[0] for q in lowered if q.name in non_negative})
    return OrtCpuBuild(out, uint8, merged, seven_bit, clipped, hard)


def _lowerable(node: onnx.NodeProto, index: GraphIndex) -> bool:
    """A per-tensor INT8 Q with zero point 0 whose output only DequantizeLinear nodes read."""
    if node.op_type != "QuantizeLinear" or len(node.input) < 3:
        return False
    if any(a.name == "output_dtype" for a in node.attribute):
        return False  # the type is pinned by an attribute (opset 21): leave it
    zero_point, scale = index.constant(node.input[2]), index.constant(node.input[1])
    if zero_point is None or scale is None or zero_point.size != 1 or scale.size != 1:
        return False
    if zero_point.dtype != np.int8 or zero_point.item() != 0:
        return False
    uses = index.consumers(node.output[0])
    return (
        bool(uses)
        and node.output[0] not in index.outputs
        and all(u.node.op_type == "DequantizeLinear" and u.index == 0 for u in uses)
        and all(_same_scale(u.node, scale, index) for u in uses)
    )


def _same_scale(dq: onnx.NodeProto, scale: np.ndarray, index: GraphIndex) -> bool:
    other = index.constant(dq.input[1])
    return other is not None and other.size == 1 and other.item() == scale.item()


def _fit_clip_ranges(
    model: onnx.ModelProto, lowered: list[onnx.NodeProto], index: GraphIndex
) -> list[str]:
    """Rule 4: give the UINT8 Q behind a Clip(low >= 0, high) the scale high/255 where its
    range 255·scale overshoots high, so that ONNX Runtime folds the Clip into it.

    Returns the quantized Clip outputs (their codes now reach 255: see rule 3)."""
    fitted = []
    for q in lowered:
        clip = index.producer.get(q.input[0])
        zero_point = index.constant(q.input[2])
        if clip is None or clip.op_type != "Clip" or zero_point is None or zero_point.any():
            continue
        high = index.constant(clip.input[2]) if len(clip.input) > 2 and clip.input[2] else None
        scale = index.constant(q.input[1])
        if high is None or high.size != 1 or scale is None or not float(high.item()) > 0:
            continue
        fitted_scale = np.float32(float(high.item()) / 255)
        if float(scale.item()) * 255 <= float(high.item()) or fitted_scale <= 0:
            continue  # ONNX Runtime folds it already
        name = _fresh(f"{q.input[1]}_clip_range", {t.name for t in model.graph.initializer})
        model.graph.initializer.append(numpy_helper.from_array(np.array(fitted_scale), name))
        q.input[1] = name
        for use in index.consumers(q.output[0]):
            use.node.input[1] = name
        fitted.append(q.output[0])
    return fitted


def _pads_with_non_negative(node: onnx.NodeProto, index: GraphIndex) -> bool:
    """A Pad whose fill value is >= 0 (constant mode), or that copies edge/reflect values."""
    mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "constant")
    if mode != "constant" or len(node.input) < 3 or not node.input[2]:
        return True  # no fill value: zeros
    value = index.constant(node.input[2])
    return value is not None and value.size == 1 and float(value.item()) >= 0


class _NonNegative:
    """Which tensors are provably >= 0 (memoised, cycle-safe)."""

    def __init__(self, index: GraphIndex) -> None:
        self.index = index
        self.memo: dict[str, bool] = {}

    def of(self, tensor: str) -> bool:
        if tensor not in self.memo:
            self.memo[tensor] = False  # a cycle or a repeat visit proves nothing
            self.memo[tensor] = self._compute(tensor)
        return self.memo[tensor]

    def _compute(self, tensor: str) -> bool:
        node = self.index.producer.get(tensor)
        if node is None:
            return False
        if node.op_type in ("Relu", "Sigmoid", "HardSigmoid"):
            return True
        if node.op_type == "Clip":
            low = self.index.constant(node.input[1]) if len(node.input) > 1 else None
            return low is not None and low.size == 1 and float(low.item()) >= 0
        if node.op_type == "Concat":
            return all(self.of(name) for name in node.input)
        if node.op_type == "Pad" and not _pads_with_non_negative(node, self.index):
            return False
        if node.op_type in _SIGN_PRESERVING:
            return self.of(node.input[0])
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            # Q/DQ with zero point 0 keep the sign; with another zero point they may not.
            # UINT8 codes dequantized with zero point 0 are >= 0 whatever they came from.
            zero_point = self.index.constant(node.input[2]) if len(node.input) > 2 else None
            if zero_point is None or zero_point.any():
                return False
            if node.op_type == "DequantizeLinear" and zero_point.dtype == np.uint8:
                return True
            return self.of(node.input[0])
        return False


def _merge_duplicates(
    model: onnx.ModelProto, lowered: list[onnx.NodeProto], index: GraphIndex
) -> int:
    """Keep one of the lowered Qs per (input, scale, zero point); rewire the others' readers."""
    kept: dict[tuple[str, float, str], onnx.NodeProto] = {}
    dropped: set[int] = set()
    for q in lowered:
        scale = index.constant(q.input[1])
        assert scale is not None  # checked by _lowerable
        key = (q.input[0], float(scale.item()), q.input[2])
        if key not in kept:
            kept[key] = q
            continue
        for use in index.consumers(q.output[0]):
            use.node.input[0] = kept[key].output[0]
            use.node.input[1] = kept[key].input[1]
        dropped.add(id(q))
    nodes = [n for n in model.graph.node if id(n) not in dropped]
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)
    return len(dropped)


def _movers_read_dequantized(model: onnx.ModelProto, lowered: set[str]) -> None:
    """Rewire the float data-movement readers of each UINT8 tensor to a DQ of its Q."""
    index = GraphIndex(model)
    taken = {v for n in model.graph.node for v in (*n.input, *n.output, n.name)}
    added = []
    for q in [n for n in model.graph.node if n.name in lowered]:
        tensor = q.input[0]
        others = [u for u in index.consumers(tensor) if u.node.op_type != "QuantizeLinear"]
        if not others or not all(u.node.op_type in _MOVES_DATA for u in others):
            continue  # a float op needs the exact values: the Relu stays, nothing gained
        copy = _fresh(f"{tensor}_dequantized_for_float", taken)
        added.append(
            onnx.helper.make_node(
                "DequantizeLinear", [q.output[0], q.input[1], q.input[2]], [copy], name=copy
            )
        )
        for use in others:
            use.node.input[use.index] = copy
    _insert_after_producers(model, added)


def _shapes_read_quantized(model: onnx.ModelProto) -> None:
    """Rule 5: Shape and Size read the quantized tensor instead of its dequantized copy,
    which is then dropped if nothing else reads it. A ShuffleNet computes its reshapes
    from x.size(): 52 DequantizeLinear of whole feature maps ran just to give Shape a
    float tensor."""
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        dq = producer.get(node.input[0]) if node.op_type in READS_SHAPE else None
        if dq is not None and dq.op_type == "DequantizeLinear":
            node.input[0] = dq.input[0]
    read = {name for n in model.graph.node for name in n.input}
    read |= {o.name for o in model.graph.output}
    nodes = [n for n in model.graph.node if n.op_type != "DequantizeLinear" or n.output[0] in read]
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)


def _insert_after_producers(model: onnx.ModelProto, added: list[onnx.NodeProto]) -> None:
    """Put each node of ``added`` right after the node producing its first input."""
    after: dict[str, list[onnx.NodeProto]] = {}
    for node in added:
        after.setdefault(node.input[0], []).append(node)
    nodes = []
    for node in model.graph.node:
        nodes.append(node)
        for out in node.output:
            nodes.extend(after.get(out, []))
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)


SEVEN_BIT = 63
# Ops ONNX Runtime's CPU provider fuses into u8s8 integer kernels (weights: input 1).
_U8S8_OPS = frozenset({"Conv", "Gemm", "MatMul"})


def _seven_bit_weights(model: onnx.ModelProto, index: GraphIndex, wide: set[str]) -> list[str]:
    """Narrow to [-63, 63] the INT8 weights of ops whose activation input is signed INT8,
    or one of the ``wide`` quantized tensors whose UINT8 codes reach 255 (rule 4)."""
    narrowed, done = [], set()
    for node in model.graph.node:
        if node.op_type not in _U8S8_OPS:
            continue
        if not (_signed_int8_input(node, index) or _reads_wide(node, index, wide)):
            continue
        dq = index.producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.name in done:
            continue
        if _narrow(model, dq, index):
            done.add(dq.name)
            narrowed.append(node.name)
    return narrowed


def _reads_wide(node: onnx.NodeProto, index: GraphIndex, wide: set[str]) -> bool:
    dq = index.producer.get(node.input[0])
    return dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in wide


def _signed_int8_input(node: onnx.NodeProto, index: GraphIndex) -> bool:
    """The activation input is quantized with values that can reach 255 once in UINT8:
    INT8 (ONNX Runtime shifts it by 128) or UINT8 with a zero point other than 0."""
    dq = index.producer.get(node.input[0])
    if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
        return False
    zero_point = index.constant(dq.input[2])
    if zero_point is None:
        return False
    return zero_point.dtype == np.int8 or (zero_point.dtype == np.uint8 and bool(zero_point.any()))


def _narrow(model: onnx.ModelProto, dq: onnx.NodeProto, index: GraphIndex) -> bool:
    """Requantize the constant INT8 weight behind ``dq`` to 7 bits (new initializers)."""
    values, scale = index.constant(dq.input[0]), index.constant(dq.input[1])
    zero_point = index.constant(dq.input[2]) if len(dq.input) > 2 else None
    if values is None or scale is None or values.dtype != np.int8:
        return False
    if zero_point is not None and zero_point.any():
        return False
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    shape = [1] * values.ndim
    if scale.size > 1:
        shape[axis] = -1
    weights = values.astype(np.float32) * scale.reshape(shape)
    reduce = tuple(d for d in range(values.ndim) if scale.size == 1 or d != axis % values.ndim)
    amax = np.abs(weights).max(axis=reduce, initial=0.0).reshape(scale.shape)
    new_scale = np.where(amax > 0, amax / SEVEN_BIT, scale).astype(np.float32)
    narrowed = np.clip(np.rint(weights / new_scale.reshape(shape)), -SEVEN_BIT, SEVEN_BIT)
    taken = {t.name for t in model.graph.initializer}
    values_name, scale_name = (_fresh(f"{name}_7bit", taken) for name in dq.input[:2])
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(narrowed.astype(np.int8), values_name),
            numpy_helper.from_array(new_scale, scale_name),
        ]
    )
    dq.input[0], dq.input[1] = values_name, scale_name
    return True


def _fresh(name: str, taken: set[str]) -> str:
    candidate, k = name, 1
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    taken.add(candidate)
    return candidate
