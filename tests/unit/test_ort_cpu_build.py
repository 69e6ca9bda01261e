"""The ONNX Runtime CPU build of a Q/DQ model (quantpipe.quantize.ort_cpu).

On the tiny residual CNN of test_qdq_insert: which tensors turn UINT8, which Qs merge, what
ONNX Runtime then fuses, and that the outputs stay those of the INT8 Q/DQ model.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantpipe.quantize import quantize_qdq
from quantpipe.quantize.ort_census import ort_cpu_kernels
from quantpipe.quantize.ort_cpu import (
    UINT8_MIDDLE,
    UINT8_ZERO,
    build_for_ort_cpu,
)
from tests.unit.test_qdq_insert import _amax, _feeds, residual_model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _zero_points(model: onnx.ModelProto) -> dict[str, tuple[str, int]]:
    """Input tensor of each QuantizeLinear -> (dtype name, value) of its zero point."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {
        n.input[0]: (inits[n.input[2]].dtype.name, int(inits[n.input[2]]))
        for n in model.graph.node
        if n.op_type == "QuantizeLinear"
    }


def _vector_model(
    nodes: list[onnx.NodeProto],
    extra: list[onnx.TensorProto] | None = None,
    output_type: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    """A graph on a float vector x of 4, with scale s = 0.05 and INT8 zero point z = 0."""
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
        *(extra or []),
    ]
    output = nodes[-1].output[0]
    graph = helper.make_graph(
        nodes,
        "vector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info(output, output_type, [4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _conv_graph(
    nodes: list[onnx.NodeProto],
    weights: dict[str, tuple[int, ...]],
    out_shape: list[int | str],
    seed: int,
    constants: dict[str, list[int]] | None = None,
) -> onnx.ModelProto:
    """A graph on x[N, 3, 8, 8] to ``out``: random float weights, INT64 constants."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.normal(size=shape) * 0.3).astype(np.float32), name)
        for name, shape in weights.items()
    ]
    inits += [
        numpy_helper.from_array(np.array(v, np.int64), name)
        for name, v in (constants or {}).items()
    ]
    graph = helper.make_graph(
        nodes,
        "convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def models() -> tuple[onnx.ModelProto, onnx.ModelProto, onnx.ModelProto]:
    fp32 = residual_model()
    qdq = quantize_qdq(fp32, _amax(fp32)).model
    return fp32, qdq, build_for_ort_cpu(qdq).model


def test_non_negative_tensors_get_zero_point_0_and_signed_ones_128(models) -> None:  # type: ignore[no-untyped-def]
    _, qdq, _ = models
    build = build_for_ort_cpu(qdq)
    # Relu outputs and the pool/flatten of one; x and conv2_out are signed: the INT8 range
    # shifted into UINT8, same scale.
    assert build.uint8_tensors == ["flat_out", "gap_out", "relu1_out", "relu2_out"]
    zero_points = _zero_points(build.model)
    assert zero_points["x"] == zero_points["conv2_out"] == ("uint8", 128)
    assert all(zero_points[t] == ("uint8", 0) for t in build.uint8_tensors)
    onnx.checker.check_model(build.model, full_check=True)


def test_the_two_quantize_nodes_of_relu1_merge(models) -> None:  # type: ignore[no-untyped-def]
    _, qdq, ort_model = models
    assert build_for_ort_cpu(qdq).merged_quantize == 1
    before = Counter(n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear")
    after = Counter(n.input[0] for n in ort_model.graph.node if n.op_type == "QuantizeLinear")
    assert before["relu1_out"] == 2 and after["relu1_out"] == 1
    assert sum(after.values()) == sum(before.values()) - 1
    # Every DequantizeLinear still reads a Q of the same scale and zero point.
    producer = {o: n for n in ort_model.graph.node for o in n.output}
    inits = {t.name: numpy_helper.to_array(t) for t in ort_model.graph.initializer}
    for dq in (n for n in ort_model.graph.node if n.op_type == "DequantizeLinear"):
        q = producer.get(dq.input[0])
        if q is not None:
            assert inits[q.input[1]] == inits[dq.input[1]] and q.input[2] == dq.input[2]


def test_weights_and_scales_are_unchanged_but_for_the_signed_input_conv(models) -> None:  # type: ignore[no-untyped-def]
    _, qdq, ort_model = models
    assert build_for_ort_cpu(qdq).seven_bit_weights == ["conv1"]  # it reads x, signed INT8
    old = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    new = {t.name: numpy_helper.to_array(t) for t in ort_model.graph.initializer}
    for name, value in new.items():
        if name not in (UINT8_ZERO, UINT8_MIDDLE) and not name.endswith("_7bit"):
            np.testing.assert_array_equal(value, old[name])
    assert "conv1.w_quantized" not in new and "conv2.w_quantized" in new
    q7, s7 = new["conv1.w_quantized_7bit"], new["conv1.w_scale_7bit"]
    assert q7.dtype == np.int8 and np.abs(q7).max() == 63
    w8 = old["conv1.w_quantized"] * old["conv1.w_scale"].reshape(-1, 1, 1, 1)
    w7 = q7 * s7.reshape(-1, 1, 1, 1)
    assert np.abs(w7 - w8).max() <= s7.max() / 2 + 1e-7
    # The input model is not modified.
    assert all(z == ("int8", 0) for z in _zero_points(qdq).values())
    assert "conv1.w_quantized_7bit" not in old


def test_onnxruntime_runs_every_quantized_op_on_integer_kernels(models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, qdq, ort_model = models
    onnx.save(qdq, tmp_path / "qdq.onnx")
    onnx.save(ort_model, tmp_path / "ort.onnx")
    portable = ort_cpu_kernels(tmp_path / "qdq.onnx", tmp_path / "opt1.onnx")
    built = ort_cpu_kernels(tmp_path / "ort.onnx", tmp_path / "opt2.onnx")
    assert built["integer"] == {"QLinearAdd": 1, "QLinearConv": 2, "QLinearGlobalAveragePool": 1}
    assert built["float"] == {"Gemm": 1}  # the classifier: nothing is quantized after it
    # The INT8 model leaves the Relu-followed ops in float on ONNX Runtime's CPU provider.
    assert portable["integer"].get("QLinearConv", 0) < 2 and "Add" in portable["float"]


def test_outputs_are_as_close_to_fp32_as_the_int8_models(models) -> None:  # type: ignore[no-untyped-def]
    fp32, qdq, ort_model = models
    x = _feeds(1, seed=9)[0]["x"]
    reference, int8, built = _run(fp32, x), _run(qdq, x), _run(ort_model, x)
    # Same scales, integer arithmetic instead of float on dequantized values (7-bit conv1
    # weights, against saturation): about as close to FP32. With 8-bit conv1 weights the
    # saturated u8s8 kernel of an AVX2 CPU made this error twice the INT8 model's.
    assert np.abs(built - reference).max() < 1.25 * np.abs(int8 - reference).max()
    assert np.array_equal(built.argmax(1), reference.argmax(1))
    assert not np.array_equal(built, int8)  # it is the integer path, not a copy


def test_clip_from_zero_counts_as_non_negative_and_from_below_zero_not() -> None:
    def model_with_clip(low: float) -> onnx.ModelProto:
        nodes = [
            helper.make_node("Clip", ["x", "low", "high"], ["c"], "clip"),
            helper.make_node("QuantizeLinear", ["c", "s", "z"], ["q"], "q"),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], "dq"),
        ]
        bounds = [
            numpy_helper.from_array(np.array(low, np.float32), "low"),
            numpy_helper.from_array(np.array(6, np.float32), "high"),
        ]
        return _vector_model(nodes, bounds)

    assert build_for_ort_cpu(model_with_clip(0.0)).uint8_tensors == ["c"]
    assert build_for_ort_cpu(model_with_clip(-1.0)).uint8_tensors == []


def test_a_zero_point_shared_with_a_signed_tensor_is_not_changed_in_place() -> None:
    # quantize_static style: one zero-point initializer read by several Q/DQ pairs.
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], "relu"),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"], "q_r"),
        helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["rd"], "dq_r"),
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], "q_x"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], "dq_x"),
        helper.make_node("Add", ["rd", "xd"], ["y"], "add"),
    ]
    model = _vector_model(nodes)
    build = build_for_ort_cpu(model)
    assert build.uint8_tensors == ["r"]
    zero_points = _zero_points(build.model)
    assert zero_points == {"r": ("uint8", 0), "x": ("uint8", 128)}
    x = np.array([-1.0, -0.2, 0.3, 2.0], np.float32)
    session = ort.InferenceSession(build.model.SerializeToString(), None, ["CPUExecutionProvider"])
    expected = np.maximum(x, 0) + x  # both exact multiples of the 0.05 scale... up to rounding
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, atol=0.05)


def test_a_dequantize_without_zero_point_input_gets_the_uint8_one() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], "relu"),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["q"], "q"),
        helper.make_node("DequantizeLinear", ["q", "s"], ["y"], "dq"),
    ]
    model = _vector_model(nodes)
    build = build_for_ort_cpu(model)
    assert build.uint8_tensors == ["r"]
    onnx.checker.check_model(build.model, full_check=True)
    x = np.array([-1.0, 0.0, 0.52, 3.0], np.float32)
    session = ort.InferenceSession(build.model.SerializeToString(), None, ["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], [0.0, 0.0, 0.5, 3.0], atol=1e-6)


def test_a_model_without_qdq_and_a_quantize_feeding_an_output_are_left_alone() -> None:
    fp32 = residual_model()
    build = build_for_ort_cpu(fp32)
    assert build.uint8_tensors == [] and build.merged_quantize == 0
    assert build.model == fp32
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], "relu"),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["q"], "q"),
    ]
    model = _vector_model(nodes, output_type=TensorProto.INT8)
    assert build_for_ort_cpu(model).uint8_tensors == []  # its INT8 type is the model's contract


def test_a_slice_and_pad_shortcut_reads_the_dequantized_copy(tmp_path: Path) -> None:
    # CIFAR ResNet option-A shortcut: relu -> {conv, slice -> pad(zeros) -> residual add}.
    # The Relu folds into the Q only if the Q is its sole reader.
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r"], "relu"),
        helper.make_node("Conv", ["r", "w2", "b2"], ["c2"], "conv2", pads=[1] * 4, strides=[2, 2]),
        helper.make_node("Slice", ["r", "starts", "ends", "axes", "steps"], ["s"], "slice"),
        helper.make_node("Pad", ["s", "pads"], ["p"], "pad"),
        helper.make_node("Add", ["c2", "p"], ["a"], "add"),
        helper.make_node("Relu", ["a"], ["y"], "relu2"),
        helper.make_node("Conv", ["y", "w3", "b3"], ["out"], "conv3"),
    ]
    weights = {
        "w1": (4, 3, 3, 3),
        "b1": (4,),
        "w2": (8, 4, 3, 3),
        "b2": (8,),
        "w3": (2, 8, 1, 1),
        "b3": (2,),
    }
    constants = {
        "starts": [0, 0],
        "ends": [8, 8],
        "axes": [2, 3],
        "steps": [2, 2],
        "pads": [0, 2, 0, 0, 0, 2, 0, 0],
    }
    fp32 = _conv_graph(nodes, weights, ["N", 2, 4, 4], seed=0, constants=constants)
    qdq = quantize_qdq(fp32, _amax(fp32)).model
    build = build_for_ort_cpu(qdq)
    assert {"r", "p", "y"} <= set(build.uint8_tensors)  # the zero-padded slice is >= 0 too
    producer = {o: n for n in build.model.graph.node for o in n.output}
    slice_input = producer[next(n for n in build.model.graph.node if n.name == "slice").input[0]]
    assert slice_input.op_type == "DequantizeLinear"
    onnx.checker.check_model(build.model, full_check=True)
    onnx.save(build.model, tmp_path / "ort.onnx")
    kernels = ort_cpu_kernels(tmp_path / "ort.onnx", tmp_path / "opt.onnx")
    assert kernels["integer"]["QLinearConv"] == 2 and kernels["integer"]["QLinearAdd"] == 1
    assert kernels["float"] == {"Conv": 1}  # conv3 makes the model's output: nothing after it
    x = _feeds(1, seed=3)[0]["x"]
    reference, built = _run(fp32, x), _run(build.model, x)
    assert np.abs(built - reference).max() < 0.1 * np.abs(reference).max()


def test_a_signed_tensor_with_two_readers_gets_one_quantize_and_fuses(tmp_path: Path) -> None:
    # MobileNetV2's linear bottleneck: a conv without Relu feeds the next conv and a
    # residual Add. ONNX Runtime's own INT8 -> UINT8 conversion skips a tensor with two
    # readers, which left such convs (and in MobileNetV2 such Adds) in float.
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1] * 4),
        helper.make_node("Conv", ["c1", "w2", "b2"], ["c2"], "conv2", pads=[1] * 4),
        helper.make_node("Add", ["c1", "c2"], ["a"], "add"),
        helper.make_node("Conv", ["a", "w3", "b3"], ["out"], "conv3"),
    ]
    weights = {
        "w1": (4, 3, 3, 3),
        "b1": (4,),
        "w2": (4, 4, 3, 3),
        "b2": (4,),
        "w3": (2, 4, 1, 1),
        "b3": (2,),
    }
    fp32 = _conv_graph(nodes, weights, ["N", 2, 8, 8], seed=1)
    qdq = quantize_qdq(fp32, _amax(fp32)).model
    build = build_for_ort_cpu(qdq)
    assert build.uint8_tensors == [] and build.merged_quantize == 1  # c1's two pairs
    assert _zero_points(build.model)["c1"] == ("uint8", 128)
    # Every Conv reading a signed tensor gets 7-bit weights (x, c1, a are all signed).
    assert build.seven_bit_weights == ["conv1", "conv2", "conv3"]
    onnx.save(qdq, tmp_path / "qdq.onnx")
    onnx.save(build.model, tmp_path / "ort.onnx")
    portable = ort_cpu_kernels(tmp_path / "qdq.onnx", tmp_path / "opt1.onnx")
    built = ort_cpu_kernels(tmp_path / "ort.onnx", tmp_path / "opt2.onnx")
    assert portable["float"] == {"Conv": 2}  # conv1 (two readers) and conv3
    assert built["integer"] == {"QLinearAdd": 1, "QLinearConv": 2}
    assert built["float"] == {"Conv": 1}  # conv3 makes the model's output
    x = _feeds(1, seed=4)[0]["x"]
    reference, int8, out = _run(fp32, x), _run(qdq, x), _run(build.model, x)
    assert np.abs(out - reference).max() < 1.5 * np.abs(int8 - reference).max()
