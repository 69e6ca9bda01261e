"""Where Q/DQ pairs go: TensorRT's placement rules.

Rules (TensorRT "Q/DQ layer-placement recommendations"):

1. The inputs of weighted ops (Conv, ConvTranspose, Gemm, MatMul) are quantized: activations
   per tensor, constant weights per output channel (Conv axis 0, ConvTranspose axis 1, Gemm
   axis 0 with transB=1 else 1, MatMul constant B axis -1).
2. Both inputs of a residual Add (two run-time tensors) are quantized, so TensorRT can fuse
   the Add into the producing convolution.
3. MaxPool, AveragePool, GlobalAveragePool and Concat get Q/DQ on their inputs and output only
   where their output is consumed in INT8 (every use, looking through Flatten/Reshape/
   Squeeze/Unsqueeze/Transpose/Slice, is a quantized input); otherwise they stay float.
   MaxPool and the shape ops keep their input's scale (ONNX Runtime only drops a DQ -> op -> Q
   whose scales match; max and reshaping commute with quantization anyway).

What ONNX Runtime's CPU kernels need on top (UINT8 after each Relu, one Q per tensor) is
`quantpipe.quantize.ort_cpu`'s rewrite of the finished model, not a placement rule: the
portable model stays what TensorRT expects.

Nothing is placed after the graph outputs, nodes named in ``exclude`` stay float, and every
other computing op stays float and is listed in the plan's ``float_nodes``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import onnx

from quantpipe.errors import QuantpipeError
from quantpipe.quantize.graph import (
    SHAPE_OPS,
    GraphIndex,
    Use,
    attribute,
    with_unique_node_names,
)

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
INT8_PASSTHROUGH_OPS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "Concat"})
# Ops that cost nothing worth reporting when they stay float.
_TRANSPARENT_OPS = SHAPE_OPS | {"Relu", "Clip", "Identity", "Constant"}


@dataclass(frozen=True)
class QDQConfig:
    """Q/DQ placement options.

    Attributes:
        per_channel: per-output-channel weight scales (else one scale per weight tensor).
        exclude: names of nodes kept in float.
    """

    per_channel: bool = True
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.exclude, tuple | list) or not all(
            isinstance(n, str) for n in self.exclude
        ):
            raise QuantpipeError(f"exclude={self.exclude!r}: allowed values are node-name lists")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if not isinstance(self.per_channel, bool):
            raise QuantpipeError(f"per_channel={self.per_channel!r}: allowed values are True/False")


@dataclass(frozen=True)
class ActivationQuant:
    """A Q -> DQ pair on ``tensor``, read by ``uses``; its scale comes from ``amax_from``."""

    tensor: str
    amax_from: str
    uses: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class WeightQuant:
    """A constant input quantized to INT8 behind a DequantizeLinear (axis None: per tensor)."""

    node: str
    index: int
    tensor: str
    axis: int | None


@dataclass(frozen=True)
class FloatNode:
    name: str
    op_type: str
    reason: str


@dataclass
class QDQPlan:
    activations: list[ActivationQuant] = field(default_factory=list)
    weights: list[WeightQuant] = field(default_factory=list)
    float_nodes: list[FloatNode] = field(default_factory=list)

    @property
    def calibration_tensors(self) -> list[str]:
        """The tensors whose amax the plan needs (what the calibration pass must collect)."""
        return sorted({a.amax_from for a in self.activations})


def plan_qdq(model: onnx.ModelProto, config: QDQConfig | None = None) -> QDQPlan:
    """Decide every Q/DQ pair for ``model`` (no graph change)."""
    config = config or QDQConfig()
    model = with_unique_node_names(model)
    require_node_names(model, config.exclude)
    return _Planner(GraphIndex(model), config).plan()


def require_node_names(model: onnx.ModelProto, exclude: tuple[str, ...]) -> None:
    names = {n.name for n in model.graph.node}
    missing = [n for n in exclude if n not in names]
    if missing:
        raise QuantpipeError(f"exclude names node {missing[0]!r}, which the model does not have")


class _Planner:
    def __init__(self, index: GraphIndex, config: QDQConfig) -> None:
        self.g = index
        self.config = config
        self.edges: dict[str, set[tuple[str, int]]] = {}  # tensor -> quantized (node, slot)
        self.weights: list[WeightQuant] = []
        self.float_nodes: list[FloatNode] = []

    def plan(self) -> QDQPlan:
        nodes = list(self.g.graph.node)
        for node in nodes:
            self._weighted_and_add(node)
        for node in reversed(nodes):  # downstream first: Pool -> Concat -> Conv chains
            self._passthrough(node)
        self._list_float(nodes)
        return QDQPlan(self._activations(nodes), self.weights, self.float_nodes)

    def _quantize(self, tensor: str, use: Use) -> None:
        self.edges.setdefault(tensor, set()).add((use.node.name, use.index))

    def _excluded(self, node: onnx.NodeProto) -> bool:
        return node.name in self.config.exclude

    def _weighted_and_add(self, node: onnx.NodeProto) -> None:
        if self._excluded(node):
            return
        if node.op_type in WEIGHTED_OPS:
            for k in (0, 1):
                self._weighted_input(node, k)
        elif node.op_type == "Add" and all(self.g.is_activation(n) for n in node.input):
            for k, name in enumerate(node.input):
                self._quantize(name, Use(node, k))

    def _weighted_input(self, node: onnx.NodeProto, k: int) -> None:
        name = node.input[k]
        if self.g.is_activation(name):
            self._quantize(name, Use(node, k))
        elif k == 1:
            axis = weight_axis(node, self.g) if self.config.per_channel else None
            self.weights.append(WeightQuant(node.name, k, name, axis))

    def _passthrough(self, node: onnx.NodeProto) -> None:
        if node.op_type not in INT8_PASSTHROUGH_OPS or self._excluded(node):
            return
        out = node.output[0]
        if not self._int8_consumed(out):
            return
        for k, name in enumerate(node.input):
            if self.g.is_activation(name):
                self._quantize(name, Use(node, k))
        self._quantize_chain(out)

    def _int8_consumed(self, tensor: str) -> bool:
        """Every use of ``tensor``, through shape ops, is a quantized input."""
        uses = self.g.consumers(tensor)
        if tensor in self.g.outputs or not uses:
            return False
        for use in uses:
            quantized = (use.node.name, use.index) in self.edges.get(tensor, set())
            passes = is_data_move(use) and not self._excluded(use.node)
            if not quantized and not (passes and self._int8_consumed(use.node.output[0])):
                return False
        return True

    def _quantize_chain(self, tensor: str) -> None:
        """Q/DQ on ``tensor`` for all its uses, and on down through shape ops."""
        for use in self.g.consumers(tensor):
            self._quantize(tensor, use)
            if is_data_move(use):
                self._quantize_chain(use.node.output[0])

    def _activations(self, nodes: list[onnx.NodeProto]) -> list[ActivationQuant]:
        order = [i.name for i in self.g.graph.input] + [o for n in nodes for o in n.output]
        return [
            ActivationQuant(t, amax_source(self.g, t, self.edges), tuple(sorted(self.edges[t])))
            for t in order
            if t in self.edges
        ]

    def _list_float(self, nodes: list[onnx.NodeProto]) -> None:
        quantized_nodes = {name for uses in self.edges.values() for name, _ in uses}
        quantized_nodes |= {w.node for w in self.weights}
        for node in nodes:
            if node.name in quantized_nodes or node.op_type in _TRANSPARENT_OPS:
                continue
            self.float_nodes.append(FloatNode(node.name, node.op_type, self._why_float(node)))

    def _why_float(self, node: onnx.NodeProto) -> str:
        if self._excluded(node):
            return "excluded"
        if node.op_type == "Add":
            return "Add with a constant input"
        if node.op_type in INT8_PASSTHROUGH_OPS:
            return "output not consumed in INT8"
        return "unsupported op"


def is_data_move(use: Use) -> bool:
    """``use`` is the data input of a shape op (not a Reshape's shape, a Slice's bounds)."""
    return use.node.op_type in SHAPE_OPS and use.index == 0


def amax_source(index: GraphIndex, tensor: str, quantized: Collection[str]) -> str:
    """Tensor whose amax sets ``tensor``'s scale: a shape op's or MaxPool's output takes its
    quantized input's (see rule 3)."""
    node = index.producer.get(tensor)
    carries = node is not None and (node.op_type in SHAPE_OPS or node.op_type == "MaxPool")
    if node is not None and carries and node.input[0] in quantized:
        return amax_source(index, node.input[0], quantized)
    return tensor


def weight_axis(node: onnx.NodeProto, index: GraphIndex) -> int:
    """Output-channel axis of the weight (input 1) of a weighted op."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if attribute(node, "transB", 0) else 1
    value = index.constant(node.input[1])
    return (value.ndim - 1) if value is not None else 1
