"""An ONNX model run as a torch module, with fake quantization at its Q/DQ plan's points.

Why not ModelOpt's quantized modules: QAT must train exactly the graph `ptq` quantized and
export to the same Q/DQ graph shape. ModelOpt quantizes torch modules (each Conv/Linear's
input and weight), not quantpipe's TensorRT placement (residual Add inputs, pooling), and
its own export is not that graph (see README, "QAT and mixed precision"). Running the ONNX
graph itself makes the correspondence exact by construction: the float initializers are the
Parameters, a node's input is fake-quantized exactly where the plan puts a Q/DQ pair on that
edge, and after training the Parameters are written back into the same initializers, which
`quantize_qdq` then turns into the same Q/DQ graph as `model.int8.qdq.onnx`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from quantpipe.errors import QuantpipeError
from quantpipe.qat.fake_quant import fake_quant_activation, fake_quant_learned, fake_quant_weight
from quantpipe.qat.ops import OPS
from quantpipe.quantize.bits import INT8, BitWidths
from quantpipe.quantize.graph import with_unique_node_names
from quantpipe.quantize.placement import QDQPlan


@dataclass(frozen=True)
class QuantSpec:
    """What to fake-quantize: the plan's points, the activation ranges, and the bit widths
    (weights per node, default 8; activations one width for all)."""

    plan: QDQPlan
    amax: Mapping[str, float]
    bits: BitWidths = INT8
    learn_ranges: bool = False  # train the activation ranges too (LSQ)


class OnnxGraphModule(torch.nn.Module):
    """Runs `model`'s nodes in graph order with torch ops. Float initializers are trainable
    Parameters (named by a safe form of their ONNX names); without a QuantSpec it computes
    the float model (the FP32 reference)."""

    def __init__(self, model: onnx.ModelProto, quant: QuantSpec | None = None) -> None:
        super().__init__()
        self.graph = with_unique_node_names(model).graph
        self.quant = quant
        self.inputs = [i.name for i in self.graph.input if not _is_initializer(self.graph, i.name)]
        self.outputs = [o.name for o in self.graph.output]
        self.weights = torch.nn.ParameterDict()
        self._load_initializers()
        self._attrs = {n.name: _attributes(n) for n in self.graph.node}
        self._check_ops()
        self._points = _points(quant)
        self.ranges = torch.nn.ParameterDict()
        if quant is not None and quant.learn_ranges:
            # Sorted: DDP matches parameters across processes by their order, and a set's
            # order of strings changes with each process's hash seed.
            for key in sorted({arg for kind, arg in self._points.values() if kind == "activation"}):
                amax = float(quant.amax[key]) or 1.0
                self.ranges[_safe(key)] = torch.nn.Parameter(torch.tensor([amax]))

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor | None] = dict(zip(self.inputs, args, strict=True))
        values[""] = None  # an absent optional input
        for node in self.graph.node:
            inputs = [self._input(node, i, name, values) for i, name in enumerate(node.input)]
            outputs = OPS[node.op_type](inputs, self._attrs[node.name])
            values.update(zip(node.output, outputs, strict=False))
        out = values[self.outputs[0]]
        assert out is not None
        return out

    def parameter(self, initializer: str) -> torch.nn.Parameter:
        """The trainable Parameter of a float initializer, by its ONNX name."""
        return self.weights[_safe(initializer)]

    def float_weights(self) -> dict[str, np.ndarray]:
        """The trained float initializers, by their ONNX names."""
        return {_onnx_name(k): v.detach().cpu().numpy() for k, v in self.weights.items()}

    def activation_ranges(self) -> dict[str, float]:
        """The activation ranges to export: the calibrated ones, or the learned ones."""
        assert self.quant is not None
        learned = {_onnx_name(k): float(v.detach().abs()) for k, v in self.ranges.items()}
        return {**self.quant.amax, **learned}

    def _input(
        self, node: onnx.NodeProto, index: int, name: str, values: dict[str, torch.Tensor | None]
    ) -> torch.Tensor | None:
        value = values[name] if name in values else self._initializer(name)
        point = self._points.get((node.name, index))
        if point is None or value is None or self.quant is None:
            return value
        kind, arg = point
        bits = self.quant.bits.activations
        if kind == "weight":
            return fake_quant_weight(value, arg, self.quant.bits.weight(node.name))
        if _safe(arg) in self.ranges:
            return fake_quant_learned(value, self.ranges[_safe(arg)], bits)
        return fake_quant_activation(value, float(self.quant.amax[arg]), bits)

    def _initializer(self, name: str) -> torch.Tensor:
        key = _safe(name)
        return self.weights[key] if key in self.weights else self.get_buffer(_constant(name))

    def _load_initializers(self) -> None:
        for init in self.graph.initializer:
            value = torch.from_numpy(numpy_helper.to_array(init).copy())
            if value.is_floating_point():
                self.weights[_safe(init.name)] = torch.nn.Parameter(value)
            else:
                # Integer constants (shapes, axes) as buffers, so that .to(device) moves
                # them; not persistent: checkpoints hold what training changes.
                self.register_buffer(_constant(init.name), value, persistent=False)
        for node in self.graph.node:
            if node.op_type == "Constant":
                raise QuantpipeError(
                    f"node {node.name} is a Constant node: QAT needs constants as initializers "
                    "(re-export the model with quantpipe export, which folds them)"
                )

    def _check_ops(self) -> None:
        unknown = sorted({n.op_type for n in self.graph.node} - set(OPS))
        if unknown:
            raise QuantpipeError(
                f"QAT cannot run ops {', '.join(unknown)} of this model yet: use ptq's INT8 "
                "model, or add the ops to quantpipe/qat/ops.py"
            )


def _points(quant: QuantSpec | None) -> dict[tuple[str, int], tuple[str, Any]]:
    """(node, input index) → ("activation", amax key) or ("weight", channel axis)."""
    if quant is None:
        return {}
    points: dict[tuple[str, int], tuple[str, Any]] = {}
    for act in quant.plan.activations:
        missing = act.amax_from not in quant.amax
        if missing:
            raise QuantpipeError(
                f"no calibrated amax for tensor {act.amax_from!r}: the calibration table does "
                "not match this model; rerun ptq"
            )
        for use in act.uses:
            points[use] = ("activation", act.amax_from)
    for w in quant.plan.weights:
        points[(w.node, w.index)] = ("weight", w.axis)
    return points


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _is_initializer(graph: onnx.GraphProto, name: str) -> bool:
    return any(i.name == name for i in graph.initializer)


def _safe(name: str) -> str:
    """ParameterDict keys may not contain dots."""
    return name.replace(".", "\x1f")


def _constant(name: str) -> str:
    return "constant\x1f" + _safe(name)


def _onnx_name(key: str) -> str:
    return key.replace("\x1f", ".")
