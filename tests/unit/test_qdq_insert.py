"""Q/DQ insertion on a tiny residual CNN: structure, scales, axes, ONNX Runtime behaviour.

The model (BatchNorm already folded into conv1, as our exporter does):

    x -> conv1 -> relu1 -> conv2 -> add(conv2, relu1) -> relu2 -> gap -> flatten -> fc -> logits

Placement rules give:

    activation Q/DQ pairs: x (conv1), relu1_out x2 (conv2, residual add), conv2_out (add),
    relu2_out (gap), gap_out (flatten), flat_out (fc)  -> 7 QuantizeLinear, 7 DequantizeLinear
    weights: conv1.w, conv2.w, fc.w                     -> 3 DequantizeLinear
    calibrated tensors: x, relu1_out, conv2_out, relu2_out, gap_out (flat_out shares gap_out's)
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantpipe.calibration import (
    CollectConfig,
    EntropyConfig,
    MaxConfig,
    collect_statistics,
    compute_all,
)
from quantpipe.errors import QuantpipeError
from quantpipe.quantize import QDQConfig, plan_qdq, quantize_qdq, quantize_weight

C_IN, C, CLASSES = 3, 8, 5


def _init(name: str, shape: tuple[int, ...], seed: int, scale: float = 0.3) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array((rng.normal(size=shape) * scale).astype(np.float32), name)


def residual_model(trans_b: int = 1, extra: list[onnx.NodeProto] | None = None) -> onnx.ModelProto:
    fc_shape = (CLASSES, C) if trans_b else (C, CLASSES)
    nodes = [
        helper.make_node("Conv", ["x", "conv1.w", "conv1.b"], ["conv1_out"], "conv1", pads=[1] * 4),
        helper.make_node("Relu", ["conv1_out"], ["relu1_out"], "relu1"),
        helper.make_node(
            "Conv", ["relu1_out", "conv2.w", "conv2.b"], ["conv2_out"], "conv2", pads=[1] * 4
        ),
        helper.make_node("Add", ["conv2_out", "relu1_out"], ["add_out"], "add"),
        helper.make_node("Relu", ["add_out"], ["relu2_out"], "relu2"),
        helper.make_node("GlobalAveragePool", ["relu2_out"], ["gap_out"], "gap"),
        helper.make_node("Flatten", ["gap_out"], ["flat_out"], "flatten"),
        helper.make_node("Gemm", ["flat_out", "fc.w", "fc.b"], ["logits"], "fc", transB=trans_b),
        *(extra or []),
    ]
    inits = [
        _init("conv1.w", (C, C_IN, 3, 3), 1),
        _init("conv1.b", (C,), 2, 0.1),
        _init("conv2.w", (C, C, 3, 3), 3, 0.2),
        _init("conv2.b", (C,), 4, 0.1),
        _init("fc.w", fc_shape, 5),
        _init("fc.b", (CLASSES,), 6, 0.1),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])]
    graph = helper.make_graph(
        nodes,
        "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C_IN, 8, 8])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(n: int = 4, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(8, C_IN, 8, 8)).astype(np.float32)} for _ in range(n)]


def _amax(model: onnx.ModelProto, config: QDQConfig | None = None) -> dict[str, float]:
    plan = plan_qdq(model, config)
    stats = collect_statistics(model, _feeds(), plan.calibration_tensors, CollectConfig(threads=1))
    return compute_all(stats, [EntropyConfig()])[EntropyConfig()]


def _ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node)


def _run(model: onnx.ModelProto, x: np.ndarray, level: str = "all") -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if level == "basic":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def quantized() -> tuple[onnx.ModelProto, object]:
    model = residual_model()
    result = quantize_qdq(model, _amax(model))
    return model, result


def test_plan_calibrates_exactly_the_needed_tensors() -> None:
    plan = plan_qdq(residual_model())
    assert plan.calibration_tensors == ["conv2_out", "gap_out", "relu1_out", "relu2_out", "x"]
    borrowed = {a.tensor: a.amax_from for a in plan.activations if a.tensor != a.amax_from}
    assert borrowed == {"flat_out": "gap_out"}
    assert plan.float_nodes == []


def test_qdq_counts_follow_the_placement_rules(quantized) -> None:  # type: ignore[no-untyped-def]
    _, result = quantized
    ops = _ops(result.model)
    assert ops["QuantizeLinear"] == 7
    assert ops["DequantizeLinear"] == 10
    assert ops["Conv"] == 2 and ops["Add"] == 1 and ops["Gemm"] == 1  # the float graph stays
    onnx.checker.check_model(result.model, full_check=True)


def test_every_input_of_the_compute_ops_is_dequantized(quantized) -> None:  # type: ignore[no-untyped-def]
    _, result = quantized
    producer = {o: n for n in result.model.graph.node for o in n.output}
    for node in result.model.graph.node:
        if node.op_type in {"Conv", "Gemm", "Add", "GlobalAveragePool", "Flatten"}:
            activation_inputs = node.input[:2] if node.op_type in {"Conv", "Gemm"} else node.input
            for name in activation_inputs:
                assert producer[name].op_type == "DequantizeLinear", (node.name, name)
        if node.op_type in {"Conv", "Gemm"}:
            assert node.input[2] in {"conv1.b", "conv2.b", "fc.b"}  # bias stays float
    # Nothing after the final output.
    assert producer["logits"].op_type == "Gemm"


def test_zero_points_are_zero_and_int8(quantized) -> None:  # type: ignore[no-untyped-def]
    _, result = quantized
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    for node in result.model.graph.node:
        if node.op_type in {"QuantizeLinear", "DequantizeLinear"}:
            zp = inits[node.input[2]]
            assert zp.dtype == np.int8 and not zp.any()
            assert inits[node.input[1]].dtype == np.float32


def test_weights_are_per_channel_on_the_right_axis(quantized) -> None:  # type: ignore[no-untyped-def]
    model, result = quantized
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    dq = {n.output[0]: n for n in result.model.graph.node if n.op_type == "DequantizeLinear"}
    nodes = {n.name: n for n in result.model.graph.node}
    floats = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for layer, weight, channels in (
        ("conv1", "conv1.w", C),
        ("conv2", "conv2.w", C),
        ("fc", "fc.w", CLASSES),
    ):
        node = dq[nodes[layer].input[1]]
        axis = next(a.i for a in node.attribute if a.name == "axis")
        q, scale = inits[node.input[0]], inits[node.input[1]]
        assert axis == 0 and q.dtype == np.int8 and scale.shape == (channels,)
        # Each channel's largest weight maps to +-127, and dequantizing is within half a step.
        w = floats[weight]
        reduce = tuple(range(1, w.ndim))
        np.testing.assert_allclose(scale, np.abs(w).max(axis=reduce) / 127, rtol=1e-6)
        assert np.abs(q).max(axis=reduce).tolist() == [127] * channels
        shape = (-1,) + (1,) * (w.ndim - 1)
        assert np.abs(q * scale.reshape(shape) - w).max() <= scale.max() / 2 + 1e-7
    assert "conv1.w" not in inits  # the float weights are gone


def test_activation_scales_are_amax_over_127(quantized) -> None:  # type: ignore[no-untyped-def]
    model, result = quantized
    amax = _amax(model)
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    q_scales = {
        n.input[0]: float(inits[n.input[1]])
        for n in result.model.graph.node
        if n.op_type == "QuantizeLinear"
    }
    assert q_scales["x"] == np.float32(amax["x"] / 127)
    assert q_scales["relu1_out"] == np.float32(amax["relu1_out"] / 127)
    assert q_scales["flat_out"] == q_scales["gap_out"]


def test_onnxruntime_output_is_close_to_fp32(quantized) -> None:  # type: ignore[no-untyped-def]
    model, result = quantized
    x = _feeds(1, seed=9)[0]["x"]
    fp32, int8 = _run(model, x), _run(result.model, x)
    assert fp32.shape == int8.shape
    assert _cosine(fp32, int8) > 0.99
    assert not np.array_equal(fp32, int8)  # it really is quantized


def test_exclude_keeps_a_node_in_float() -> None:
    model = residual_model()
    config = QDQConfig(exclude=("conv2",))
    result = quantize_qdq(model, _amax(model, config), config)
    nodes = {n.name: n for n in result.model.graph.node}
    producer = {o: n for n in result.model.graph.node for o in n.output}
    assert nodes["conv2"].input[0] == "relu1_out" and nodes["conv2"].input[1] == "conv2.w"
    assert producer["relu1_out"].op_type == "Relu"
    assert [(f.name, f.reason) for f in result.float_nodes] == [("conv2", "excluded")]
    # conv2's input and weight lose their Q/DQ: 7 - 1 Q and 10 - 1 - 1 DQ.
    assert _ops(result.model)["QuantizeLinear"] == 6
    assert _ops(result.model)["DequantizeLinear"] == 8
    onnx.checker.check_model(result.model, full_check=True)


def test_unknown_exclude_name_is_an_error() -> None:
    with pytest.raises(QuantpipeError, match="'conv9', which the model does not have"):
        plan_qdq(residual_model(), QDQConfig(exclude=("conv9",)))


def test_unsupported_ops_stay_float_and_are_listed() -> None:
    extra = [helper.make_node("Sigmoid", ["logits"], ["probs"], "sigmoid")]
    model = residual_model(extra=extra)
    model.graph.output.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, None))
    plan = plan_qdq(model)
    assert [(f.name, f.op_type, f.reason) for f in plan.float_nodes] == [
        ("sigmoid", "Sigmoid", "unsupported op")
    ]


def test_gemm_without_trans_b_uses_axis_1() -> None:
    model = residual_model(trans_b=0)
    result = quantize_qdq(model, _amax(model))
    fc = next(n for n in result.model.graph.node if n.name == "fc")
    dq = next(n for n in result.model.graph.node if n.output[0] == fc.input[1])
    assert next(a.i for a in dq.attribute if a.name == "axis") == 1
    scale = next(t for t in result.model.graph.initializer if t.name == dq.input[1])
    assert list(scale.dims) == [CLASSES]
    x = _feeds(1)[0]["x"]
    assert _cosine(_run(model, x), _run(result.model, x)) > 0.99


def test_matmul_and_conv_transpose_axes() -> None:
    nodes = [
        helper.make_node("ConvTranspose", ["x", "ct.w"], ["up"], "ct", strides=[2, 2]),
        helper.make_node("Flatten", ["up"], ["flat"], "flat"),
        helper.make_node("MatMul", ["flat", "mm.w"], ["y"], "mm"),
    ]
    inits = [_init("ct.w", (C_IN, 4, 2, 2), 1), _init("mm.w", (4 * 16 * 16, 6), 2, 0.05)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C_IN, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = quantize_qdq(model, {"x": 3.0, "flat": 2.0})
    weights = {w.node: w.axis for w in result.plan.weights}
    assert weights == {"ct": 1, "mm": 1}
    scales = {t.name: list(t.dims) for t in result.model.graph.initializer}
    assert scales["ct.w_scale"] == [4] and scales["mm.w_scale"] == [6]
    onnx.checker.check_model(result.model, full_check=True)


def test_per_tensor_weights_when_asked() -> None:
    model = residual_model()
    result = quantize_qdq(model, _amax(model), QDQConfig(per_channel=False))
    dqs = [n for n in result.model.graph.node if n.op_type == "DequantizeLinear"]
    assert all(not n.attribute for n in dqs)
    scales = {t.name: list(t.dims) for t in result.model.graph.initializer}
    assert scales["conv1.w_scale"] == []


def test_weight_behind_identity_is_quantized_and_identity_dropped() -> None:
    model = residual_model()
    model.graph.node.insert(0, helper.make_node("Identity", ["conv2.w"], ["conv2.w_id"], "id"))
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    conv2.input[1] = "conv2.w_id"
    result = quantize_qdq(model, _amax(model))
    assert _ops(result.model)["Identity"] == 0
    assert _ops(result.model)["DequantizeLinear"] == 10
    onnx.checker.check_model(result.model, full_check=True)


def test_missing_amax_and_old_opset() -> None:
    model = residual_model()
    amax = _amax(model)
    del amax["relu2_out"]
    with pytest.raises(QuantpipeError, match="no calibrated amax for tensor 'relu2_out'"):
        quantize_qdq(model, amax)
    model.opset_import[0].version = 10
    with pytest.raises(QuantpipeError, match="opset 10"):
        quantize_qdq(model, _amax(residual_model()))


def test_zero_amax_gets_a_usable_scale() -> None:
    model = residual_model()
    amax = {**_amax(model), "x": 0.0}
    result = quantize_qdq(model, amax)
    q = next(
        n for n in result.model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x"
    )
    scale = next(t for t in result.model.graph.initializer if t.name == q.input[1])
    assert float(numpy_helper.to_array(scale)) == np.float32(1 / 127)


def test_quantize_weight_per_tensor_and_zero_channel() -> None:
    w = np.array([[0.0, 0.0], [1.0, -0.5]], dtype=np.float32)
    q, scales = quantize_weight(w, 0)
    assert q.tolist() == [[0, 0], [127, -64]]  # an all-zero channel gets scale 1, not 0
    assert scales.tolist() == [1.0, np.float32(1 / 127)]
    q, scale = quantize_weight(w, None)
    assert scale.shape == () and q.max() == 127


def test_max_calibration_also_runs() -> None:
    model = residual_model()
    plan = plan_qdq(model)
    stats = collect_statistics(model, _feeds(), plan.calibration_tensors)
    amax = compute_all(stats, [MaxConfig()])[MaxConfig()]
    result = quantize_qdq(model, amax)
    x = _feeds(1, seed=4)[0]["x"]
    assert _cosine(_run(model, x), _run(result.model, x, "basic")) > 0.99
