"""Read-only index of an ONNX graph: producers, consumers, constants."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

# Ops that only move, reshape or select data: INT8 flows through them unchanged, and ONNX
# Runtime drops a DQ -> op -> Q around them when both share one scale. (Slice: ShuffleNetV2's
# channel split; without it the shuffled Concats stayed float.)
SHAPE_OPS = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Slice"})
# Ops that read only the shape of their input, never its values.
READS_SHAPE = frozenset({"Shape", "Size"})


@dataclass(frozen=True)
class Use:
    """One input slot of a node reading a tensor."""

    node: onnx.NodeProto
    index: int


class GraphIndex:
    """Producers, consumers and constant values of the tensors of one graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.graph = graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.outputs = {o.name for o in graph.output}
        self.inputs = {i.name for i in graph.input if i.name not in self.initializers}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.uses: dict[str, list[Use]] = defaultdict(list)
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
            for k, name in enumerate(node.input):
                if name:
                    self.uses[name].append(Use(node, k))

    def constant_source(self, name: str) -> str | None:
        """The initializer or Constant node output that ``name`` is, directly or through
        Identity nodes, else None. (The PyTorch exporter writes Clip bounds as Constant
        nodes.)"""
        seen = 0
        while name not in self.initializers:
            node = self.producer.get(name)
            if node is not None and _tensor_constant(node) is not None:
                return name
            if node is None or node.op_type != "Identity" or seen > 64:
                return None
            name, seen = node.input[0], seen + 1
        return name

    def constant(self, name: str) -> np.ndarray | None:
        """Value of ``name`` if it is a constant (initializer or Constant node, maybe behind
        Identity)."""
        source = self.constant_source(name)
        if source is None:
            return None
        if source in self.initializers:
            return numpy_helper.to_array(self.initializers[source])
        tensor = _tensor_constant(self.producer[source])
        assert tensor is not None  # constant_source checked it
        return numpy_helper.to_array(tensor)

    def is_activation(self, name: str) -> bool:
        """A float tensor computed at run time (not a constant, not empty)."""
        return bool(name) and self.constant_source(name) is None

    def consumers(self, name: str) -> list[Use]:
        return self.uses.get(name, [])


def _tensor_constant(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor of a Constant node that holds one in ``value``, else None."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    value = next((a for a in node.attribute if a.name == "value"), None)
    return value.t if value is not None and value.type == onnx.AttributeProto.TENSOR else None


def attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    """Integer attribute ``name`` of ``node``, or ``default``."""
    for attr in node.attribute:
        if attr.name == name:
            return int(onnx.helper.get_attribute_value(attr))
    return default


def with_unique_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself if every node has a unique name, else a copy where each does.

    Placement refers to nodes by name; unnamed nodes get ``<op_type>_<position>``.
    """
    names = [n.name for n in model.graph.node]
    if all(names) and len(set(names)) == len(names):
        return model
    named = onnx.ModelProto()
    named.CopyFrom(model)
    taken = set(names)
    seen: set[str] = set()
    for k, node in enumerate(named.graph.node):
        if not node.name or node.name in seen:
            candidate = f"{node.op_type}_{k}"
            while candidate in taken:
                candidate += "_"
            node.name = candidate
            taken.add(candidate)
        seen.add(node.name)
    return named


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Remove initializers that no node reads and no output names (and their input entries)."""
    used = {name for n in model.graph.node for name in n.input}
    used |= {o.name for o in model.graph.output}
    dropped = {t.name for t in model.graph.initializer if t.name not in used}
    if not dropped:
        return
    kept = [t for t in model.graph.initializer if t.name not in dropped]
    inputs = [i for i in model.graph.input if i.name not in dropped]
    model.graph.ClearField("initializer")
    model.graph.initializer.extend(kept)
    model.graph.ClearField("input")
    model.graph.input.extend(inputs)
