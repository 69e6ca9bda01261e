"""Insert QuantizeLinear/DequantizeLinear pairs into an FP32 ONNX model (PTQ).

Symmetric INT8 everywhere (zero point 0, as TensorRT requires; weights use [-127, 127]),
per-channel weights stored as INT8 initializers behind a DequantizeLinear, per-tensor
activations from our calibrated amax, placement from `quantpipe.quantize.placement`.
Mixed precision uses the same graph with narrower grids (quantpipe/quantize/bits.py).
Biases stay float: TensorRT fuses them itself and rejects an INT32 DequantizeLinear, and
ONNX Runtime (>= 1.21, BiasQuantization) turns a float bias into INT32 on load.

Why our own graph pass rather than onnxruntime.quantization's QDQQuantizer (measured on
resnet18, onnxruntime 1.32, with our symmetric ranges passed as TensorsData, per-channel,
ActivationSymmetric/WeightSymmetric):

- its placement (Q/DQ on every op output, one pair shared by all consumers) has no TensorRT
  residual-Add or pooling rules and no exclusion by reason;
- its DedicatedQDQPair option writes duplicate node names (an invalid model);
- ``quantize_static`` with its defaults runs no faster than FP32 on ONNX Runtime's CPU
  provider (1.00-1.22x FP32 latency over four runs of tests/bench/bench_ptq.py on an AVX2
  EPYC, 2 threads; 1.06-1.26x on a Xeon with AVX-512 VNNI), and its symmetric INT8
  activations lose ~1.7 points on cifar10-resnet20 to the saturation of AVX2 u8s8 kernels.

This module writes the portable model (what TensorRT builds from); for ONNX Runtime's CPU
provider `quantpipe.quantize.ort_cpu` rewrites it (same scales) so that every Conv and
residual Add runs as an integer kernel: 0.53-0.58x FP32 on the same EPYC. One Q/DQ pair
per consumer, with distinct scale initializers per pair (ONNX Runtime would otherwise merge
identical pairs back into a shared one), keeps ORT's INT8 -> UINT8 conversion applicable
where the portable model itself runs on ORT.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quantpipe.errors import QuantpipeError
from quantpipe.quantize.bits import INT8, BitWidths, qmax
from quantpipe.quantize.graph import GraphIndex, drop_unused_initializers, with_unique_node_names
from quantpipe.quantize.placement import (
    ActivationQuant,
    FloatNode,
    QDQConfig,
    QDQPlan,
    WeightQuant,
    plan_qdq,
)

MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (axis attribute)


@dataclass
class QDQResult:
    """The quantized model and what was done to it."""

    model: onnx.ModelProto
    plan: QDQPlan

    @property
    def float_nodes(self) -> list[FloatNode]:
        return self.plan.float_nodes


def quantize_qdq(
    model: onnx.ModelProto,
    amax: Mapping[str, float],
    config: QDQConfig | None = None,
    bits: BitWidths = INT8,
) -> QDQResult:
    """Return a copy of ``model`` with Q/DQ pairs placed by `plan_qdq` and scaled by ``amax``.

    Args:
        model: FP32 model (BatchNorm folded), opset >= 13.
        amax: calibrated amax per activation tensor; must cover ``plan.calibration_tensors``.
        config: placement options.
        bits: weight widths per node and the activation width (quantpipe/quantize/bits.py);
            below 8 bits the values lie on the narrower grid, still stored as INT8.

    Raises:
        QuantpipeError: opset too old, or an amax missing or invalid.
    """
    _check_opset(model)
    model = with_unique_node_names(model)
    plan = plan_qdq(model, config)
    return QDQResult(apply_plan(model, plan, amax, bits), plan)


def apply_plan(
    model: onnx.ModelProto, plan: QDQPlan, amax: Mapping[str, float], bits: BitWidths = INT8
) -> onnx.ModelProto:
    """Copy of ``model`` with the Q/DQ pairs of ``plan`` inserted."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    index = GraphIndex(out)
    names = _NameSource(out)
    rewires: dict[tuple[str, int], str] = {}
    after: dict[str, list[onnx.NodeProto]] = {}
    head: list[onnx.NodeProto] = []
    for act in plan.activations:
        scale = _scale_of(act, amax, bits.activations)
        nodes = _activation_qdq(out, act, scale, bits.activations, names, rewires)
        producer = index.producer.get(act.tensor)
        (after.setdefault(producer.name, []) if producer is not None else head).extend(nodes)
    weight_nodes: dict[tuple[str, int | None, int], str] = {}
    for w in plan.weights:
        width = bits.weight(w.node)
        head.extend(_weight_dq(out, index, w, width, names, rewires, weight_nodes))
    _rebuild_nodes(out, head, after, rewires)
    drop_unused_initializers(out)  # the float weights now replaced by INT8 ones
    return out


def _check_opset(model: onnx.ModelProto) -> None:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise QuantpipeError(
            f"model opset {opset}: Q/DQ insertion needs opset >= {MIN_OPSET}; re-export it"
        )


def _scale_of(act: ActivationQuant, amax: Mapping[str, float], bits: int) -> np.float32:
    if act.amax_from not in amax:
        raise QuantpipeError(
            f"no calibrated amax for tensor {act.amax_from!r}: the calibration table does not "
            "match this model or placement; recalibrate"
        )
    return activation_scale(float(amax[act.amax_from]), act.amax_from, bits)


def activation_scale(amax: float, name: str, bits: int = 8) -> np.float32:
    """Scale amax/qmax (amax/127 at 8 bits) as float32; a tensor that was always 0 gets
    scale 1/qmax."""
    if not np.isfinite(amax) or amax < 0:
        raise QuantpipeError(f"amax of tensor {name!r} is {amax!r}: must be finite and >= 0")
    # amax/127 in float64 then float32: for an amax imported from a TensorRT cache
    # (scale * 127) this gives back the cached float32 scale bit for bit.
    limit = qmax(bits)
    return np.float32(amax / limit) if amax > 0 else np.float32(1.0 / limit)


def _activation_qdq(
    model: onnx.ModelProto,
    act: ActivationQuant,
    scale: np.float32,
    bits: int,
    names: _NameSource,
    rewires: dict[tuple[str, int], str],
) -> list[onnx.NodeProto]:
    """One Q -> DQ pair per use of the tensor, sharing scale and zero point; below 8 bits
    one Clip to the grid's range before them (an INT8 Q would saturate only at ±127).

    Why not one pair for all uses: ONNX Runtime converts INT8 Q/DQ pairs to UINT8 for its
    x86 kernels only where a Q feeds a single DQ; a shared pair keeps the INT8 type and the
    Conv/Add behind it fall back to float (resnet18: 8 of 20 Conv ran in float).
    """
    base = names.new(act.tensor, len(act.uses))
    nodes, source = [], act.tensor
    if bits < 8:
        nodes.append(_clip(model, act.tensor, base, scale, bits))
        source = nodes[0].output[0]
    for k, use in enumerate(act.uses):
        tag = base if k == 0 else f"{base}_{k}"
        scale_name, zp_name = f"{tag}_scale", f"{tag}_zero_point"
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(scale, dtype=np.float32), scale_name),
                numpy_helper.from_array(np.array(0, dtype=np.int8), zp_name),
            ]
        )
        q_out, dq_out = f"{tag}_quantized", f"{tag}_dequantized"
        nodes.append(
            helper.make_node(
                "QuantizeLinear", [source, scale_name, zp_name], [q_out], name=f"{tag}_Q"
            )
        )
        nodes.append(
            helper.make_node(
                "DequantizeLinear", [q_out, scale_name, zp_name], [dq_out], name=f"{tag}_DQ"
            )
        )
        rewires[use] = dq_out
    return nodes


def _clip(
    model: onnx.ModelProto, tensor: str, base: str, scale: np.float32, bits: int
) -> onnx.NodeProto:
    """Clip `tensor` to ±qmax(bits) · scale, the range an A-bit code can hold."""
    bound = np.float32(qmax(bits) * scale)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(-bound, dtype=np.float32), f"{base}_clip_min"),
            numpy_helper.from_array(np.array(bound, dtype=np.float32), f"{base}_clip_max"),
        ]
    )
    return helper.make_node(
        "Clip",
        [tensor, f"{base}_clip_min", f"{base}_clip_max"],
        [f"{base}_clipped"],
        name=f"{base}_Clip",
    )


def quantize_weight(
    value: np.ndarray, axis: int | None, bits: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric quantization of a weight to the `bits`-bit grid (scale amax/qmax, codes in
    ±qmax, stored as INT8), per channel along ``axis`` (None: per tensor).

    Returns:
        (int8 values, float32 scales: shape [channels], or [] per tensor).
    """
    w, limit = value.astype(np.float32), qmax(bits)
    if axis is None:
        scale = np.float32(np.abs(w).max(initial=0.0) / limit)
        scale = scale if scale > 0 else np.float32(1.0)  # zeros, or a subnormal amax / limit
        q = np.clip(np.rint(w / scale), -limit, limit).astype(np.int8)
        return q, np.array(scale, dtype=np.float32)
    reduce = tuple(d for d in range(w.ndim) if d != axis)
    amax = np.abs(w).max(axis=reduce, initial=0.0)
    scales = (amax / limit).astype(np.float32)
    # A zero channel, or one whose amax / limit underflows float32: any positive scale
    # codes it as zeros; 1 is what the fake quantization uses too.
    scales[~(scales > 0)] = 1.0
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scales.reshape(shape)), -limit, limit).astype(np.int8)
    return q, scales


def _weight_dq(
    model: onnx.ModelProto,
    index: GraphIndex,
    w: WeightQuant,
    bits: int,
    names: _NameSource,
    rewires: dict[tuple[str, int], str],
    done: dict[tuple[str, int | None, int], str],
) -> list[onnx.NodeProto]:
    source = index.constant_source(w.tensor)
    value = index.constant(w.tensor)
    if source is None or value is None or value.dtype != np.float32:
        return []  # not a float constant: left as it is
    key = (source, w.axis, bits)
    if key in done:  # a weight shared by several nodes gets one DequantizeLinear
        rewires[(w.node, w.index)] = done[key]
        return []
    base = names.new(source)
    q, scales = quantize_weight(value, w.axis, bits)
    node = _int8_constant(model, base, q, scales, w.axis)
    done[key] = rewires[(w.node, w.index)] = f"{base}_dequantized"
    return [node]


def _int8_constant(
    model: onnx.ModelProto, base: str, q: np.ndarray, scales: np.ndarray, axis: int | None
) -> onnx.NodeProto:
    """Add INT8 values, scales and zero points as initializers; return their DQ node."""
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(q, f"{base}_quantized"),
            numpy_helper.from_array(scales, f"{base}_scale"),
            numpy_helper.from_array(np.zeros(scales.shape, dtype=np.int8), f"{base}_zero_point"),
        ]
    )
    node = helper.make_node(
        "DequantizeLinear",
        [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
        [f"{base}_dequantized"],
        name=f"{base}_DQ",
    )
    if axis is not None:
        node.attribute.append(helper.make_attribute("axis", axis))
    return node


def _rebuild_nodes(
    model: onnx.ModelProto,
    head: list[onnx.NodeProto],
    after: dict[str, list[onnx.NodeProto]],
    rewires: dict[tuple[str, int], str],
) -> None:
    """Node list in topological order: weight DQs and input Q/DQs first, others after producers."""
    nodes: list[onnx.NodeProto] = list(head)
    for node in model.graph.node:
        for k in range(len(node.input)):
            if (node.name, k) in rewires:
                node.input[k] = rewires[(node.name, k)]
        nodes.append(node)
        nodes.extend(after.get(node.name, []))
    model.graph.ClearField("node")
    model.graph.node.extend(_without_dead_identity(nodes, model))


def _without_dead_identity(
    nodes: list[onnx.NodeProto], model: onnx.ModelProto
) -> list[onnx.NodeProto]:
    """Drop Identity nodes whose outputs nothing reads any more (weights now behind a DQ)."""
    outputs = {o.name for o in model.graph.output}
    while True:
        used = {name for n in nodes for name in n.input} | outputs
        kept = [n for n in nodes if n.op_type != "Identity" or n.output[0] in used]
        if len(kept) == len(nodes):
            return kept
        nodes = kept


class _NameSource:
    """Fresh, readable names that clash with nothing already in the graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.taken = {n.name for n in g.node} | {t.name for t in g.initializer}
        self.taken |= {v for n in g.node for v in (*n.input, *n.output)}
        self.taken |= {i.name for i in g.input} | {o.name for o in g.output}

    def new(self, base: str, copies: int = 1) -> str:
        """A stem such that stem (and stem_1 ... for extra copies) plus suffixes are free."""
        candidate, k = base, 1
        while self.taken & self._names(candidate, copies):
            candidate, k = f"{base}_v{k}", k + 1
        self.taken |= self._names(candidate, copies)
        return candidate

    @staticmethod
    def _names(stem: str, copies: int) -> set[str]:
        tags = [stem] + [f"{stem}_{j}" for j in range(1, copies)]
        suffixes = (
            *("_scale", "_zero_point", "_quantized", "_dequantized", "_Q", "_DQ"),
            *("_clip_min", "_clip_max", "_clipped", "_Clip"),
        )
        return {f"{tag}{suffix}" for tag in tags for suffix in suffixes}
