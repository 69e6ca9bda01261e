"""Placement rules for pools, Concat, shape ops, residual Adds and float fallbacks."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantpipe.errors import QuantpipeError
from quantpipe.quantize import QDQConfig, plan_qdq, quantize_qdq


def _model(nodes: list[onnx.NodeProto], inits: dict[str, tuple[int, ...]], outputs: dict[str, int]):  # type: ignore[no-untyped-def]
    """Graph of ``nodes`` from input x[N, 4, 8, 8]; ``outputs`` maps names to ranks."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [
            helper.make_tensor_value_info(o, TensorProto.FLOAT, [f"d{k}" for k in range(rank)])
            for o, rank in outputs.items()
        ],
        [
            numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
            for n, s in inits.items()
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _conv(name: str, x: str, w: str, y: str) -> onnx.NodeProto:
    return helper.make_node("Conv", [x, w], [y], name, pads=[1, 1, 1, 1])


def _uses(plan) -> dict[str, tuple[tuple[str, int], ...]]:  # type: ignore[no-untyped-def]
    return {a.tensor: a.uses for a in plan.activations}


def _sources(plan) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {a.tensor: a.amax_from for a in plan.activations}


def test_maxpool_and_concat_feeding_a_conv_stay_int8() -> None:
    nodes = [
        _conv("c1", "x", "w1", "a"),
        helper.make_node("MaxPool", ["a"], ["p"], "pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["x"], ["q"], "avg", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Concat", ["p", "q"], ["cat"], "cat", axis=1),
        _conv("c2", "cat", "w2", "y"),
    ]
    plan = plan_qdq(_model(nodes, {"w1": (4, 4, 3, 3), "w2": (2, 8, 3, 3)}, {"y": 4}))
    uses = _uses(plan)
    assert uses["a"] == (("pool", 0),)
    assert uses["p"] == (("cat", 0),) and uses["q"] == (("cat", 1),)
    assert uses["cat"] == (("c2", 0),)
    assert set(uses["x"]) == {("c1", 0), ("avg", 0)}
    sources = _sources(plan)
    assert sources["p"] == "a"  # MaxPool keeps its input's scale; AveragePool has its own
    assert sources["q"] == "q" and sources["cat"] == "cat"
    assert plan.calibration_tensors == ["a", "cat", "q", "x"]
    assert plan.float_nodes == []


def test_concat_stays_int8_through_a_channel_shuffle_and_slices() -> None:
    # ShuffleNetV2: concat -> reshape -> transpose -> reshape -> slice -> conv. Without
    # looking through Slice the Concat (and the Relus feeding it) stayed float.
    shape = helper.make_tensor("shape", TensorProto.INT64, [5], [0, 2, 4, 8, 8])
    back = helper.make_tensor("back", TensorProto.INT64, [4], [0, 8, 8, 8])
    nodes = [
        _conv("c1", "x", "w1", "a"),
        helper.make_node("Relu", ["a"], ["r"], "relu"),
        helper.make_node("Concat", ["r", "x"], ["cat"], "cat", axis=1),
        helper.make_node("Constant", [], ["shape"], "k1", value=shape),
        helper.make_node("Constant", [], ["back"], "k2", value=back),
        helper.make_node("Reshape", ["cat", "shape"], ["s1"], "reshape1"),
        helper.make_node("Transpose", ["s1"], ["s2"], "shuffle", perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["s2", "back"], ["s3"], "reshape2"),
        helper.make_node(
            "Constant",
            [],
            ["st"],
            "k3",
            value=helper.make_tensor("st", TensorProto.INT64, [1], [4]),
        ),
        helper.make_node(
            "Constant",
            [],
            ["en"],
            "k4",
            value=helper.make_tensor("en", TensorProto.INT64, [1], [8]),
        ),
        helper.make_node(
            "Constant",
            [],
            ["ax"],
            "k5",
            value=helper.make_tensor("ax", TensorProto.INT64, [1], [1]),
        ),
        helper.make_node("Slice", ["s3", "st", "en", "ax"], ["half"], "slice"),
        _conv("c2", "half", "w2", "y"),
    ]
    model = _model(nodes, {"w1": (4, 4, 3, 3), "w2": (2, 4, 3, 3)}, {"y": 4})
    plan = plan_qdq(model)
    uses = _uses(plan)
    assert uses["r"] == (("cat", 0),) and uses["half"] == (("c2", 0),)
    assert _sources(plan)["half"] == "cat"  # the shuffle and the slice keep the scale
    assert plan.float_nodes == []
    amax = dict.fromkeys(plan.calibration_tensors, 1.0)
    onnx.checker.check_model(quantize_qdq(model, amax).model, full_check=True)


def test_pool_feeding_a_float_op_or_the_output_stays_float() -> None:
    nodes = [
        _conv("c1", "x", "w1", "a"),
        helper.make_node("GlobalAveragePool", ["a"], ["g"], "gap"),
        helper.make_node("Sigmoid", ["g"], ["s"], "sig"),
        helper.make_node("MaxPool", ["a"], ["y"], "pool", kernel_shape=[2, 2]),
    ]
    plan = plan_qdq(_model(nodes, {"w1": (4, 4, 3, 3)}, {"s": 4, "y": 4}))
    assert set(_uses(plan)) == {"x"}
    reasons = {f.name: f.reason for f in plan.float_nodes}
    assert reasons == {
        "gap": "output not consumed in INT8",
        "sig": "unsupported op",
        "pool": "output not consumed in INT8",
    }


def test_add_with_a_constant_is_not_a_residual() -> None:
    nodes = [
        _conv("c1", "x", "w1", "a"),
        helper.make_node("Add", ["a", "bias"], ["b"], "add"),
        _conv("c2", "b", "w2", "y"),
    ]
    inits = {"w1": (4, 4, 3, 3), "bias": (1, 4, 1, 1), "w2": (4, 4, 3, 3)}
    plan = plan_qdq(_model(nodes, inits, {"y": 4}))
    assert ("add", 0) not in {u for uses in _uses(plan).values() for u in uses}
    assert [(f.name, f.reason) for f in plan.float_nodes] == [("add", "Add with a constant input")]


def test_activation_times_activation_matmul_quantizes_both_inputs_per_tensor() -> None:
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"], "reshape"),
        helper.make_node("MatMul", ["r", "r"], ["y"], "mm"),
    ]
    model = _model(nodes, {}, {"y": 3})
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1, 8, 8]), "shape"))
    plan = plan_qdq(model)
    assert _uses(plan) == {"r": (("mm", 0), ("mm", 1))}
    assert plan.weights == []
    result = quantize_qdq(model, {"r": 2.0})
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("QuantizeLinear") == 2  # one dedicated pair per use
    onnx.checker.check_model(result.model, full_check=True)


def test_unnamed_nodes_get_stable_names() -> None:
    nodes = [helper.make_node("Conv", ["x", "w1"], ["y"], pads=[1, 1, 1, 1])]
    model = _model(nodes, {"w1": (4, 4, 3, 3)}, {"y": 4})
    plan = plan_qdq(model)
    assert plan.weights[0].node == "Conv_0"
    result = quantize_qdq(model, {"x": 1.0})
    onnx.checker.check_model(result.model, full_check=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"exclude": "conv1"}, "exclude='conv1'"),
        ({"per_channel": 1}, "per_channel=1: allowed values are True/False"),
    ],
)
def test_bad_config_values(kwargs, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(QuantpipeError, match=message):
        QDQConfig(**kwargs)


def test_exclude_list_may_be_a_list() -> None:
    assert QDQConfig(exclude=["a", "b"]).exclude == ("a", "b")  # type: ignore[arg-type]
