"""The ONNX Runtime CPU build's widened plan (quantpipe.quantize.ort_cpu_plan) on a small
network of the blocks users bring: MobileNetV3 (Hardswish, a HardSigmoid SE gate), MobileNetV2
(ReLU6, which the PyTorch exporter writes as Clip with Constant-node bounds), EfficientNet
(SiLU as Sigmoid and Mul) and ShuffleNetV2 (a channel shuffle whose Reshape shape is
computed at run time from int64 values).

What counts is what ONNX Runtime then runs: every Conv as an integer kernel, conversions
only around the ops it has no integer kernel for, int64 shape values never quantized, and
outputs that stay close to the FP32 model's.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from quantpipe.calibration import CollectConfig, MaxConfig, collect_statistics, compute_all
from quantpipe.quantize import QDQConfig, plan_qdq
from quantpipe.quantize.ort_census import ort_cpu_kernels
from quantpipe.quantize.ort_cpu import build_for_ort_cpu
from quantpipe.quantize.ort_cpu_plan import plan_ort_cpu
from quantpipe.quantize.qdq import apply_plan


class _Modern(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.se_reduce, self.se_expand = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.pw = nn.Conv2d(16, 16, 1)
        self.silu_conv = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self.stem(x))
        x = nn.functional.hardswish(self.dw(x))
        gate = nn.functional.adaptive_avg_pool2d(x, 1)
        gate = nn.functional.hardsigmoid(self.se_expand(torch.relu(self.se_reduce(gate))))
        x = self.pw(x * gate)
        n, c, h, w = x.size()  # ShuffleNetV2's shuffle: shapes computed from int64 values
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        x = nn.functional.silu(self.silu_conv(x)) + x
        return self.head(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def _feeds(seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(4, 3, 12, 12)).astype(np.float32)} for _ in range(3)]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("plan") / "modern.onnx"
    torch.onnx.export(
        _Modern().eval(),
        (torch.randn(1, 3, 12, 12),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
    )
    return onnx.load(str(path))


def _amax(model: onnx.ModelProto, tensors: list[str]) -> dict[str, float]:
    stats = collect_statistics(model, _feeds(), tensors, CollectConfig(threads=1))
    return dict(compute_all(stats, [MaxConfig()])[MaxConfig()])


def _ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node)


def _build(fp32: onnx.ModelProto, config: QDQConfig | None = None) -> onnx.ModelProto:
    plan = plan_ort_cpu(fp32, config)
    amax = _amax(fp32, plan.calibration_tensors)
    return build_for_ort_cpu(apply_plan(fp32, plan, amax)).model


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    from quantpipe.engines.ort_session import OrtConfig, make_session

    return make_session(model, OrtConfig(threads=1)).run(None, feed)[0]


def test_every_conv_runs_as_an_integer_kernel(fp32: onnx.ModelProto, tmp_path: Path) -> None:
    build = _build(fp32)
    path = tmp_path / "build.onnx"
    onnx.save(build, str(path))
    census = ort_cpu_kernels(path, tmp_path / "optimized.onnx")
    assert census["integer"]["QLinearConv"] == _ops(fp32)["Conv"] == 6
    assert census["integer"]["QLinearMul"] >= 2  # the SE gate and SiLU's x * sigmoid(x)
    assert "Conv" not in census["float"] and "FusedConv" not in census["float"]
    optimized = _ops(onnx.load(str(tmp_path / "optimized.onnx")))
    assert optimized["Clip"] == 0  # ReLU6 folded into its QuantizeLinear (rule 4)
    # Conversions only around the ops without an integer kernel: Hardswish, HardSigmoid,
    # and the float Gemm at the output.
    assert census["conversions"]["QuantizeLinear"] <= 3


def test_the_build_stays_close_to_fp32(fp32: onnx.ModelProto) -> None:
    build = _build(fp32)
    feed = _feeds(seed=5)[0]
    ref, out = _run(fp32, feed), _run(build, feed)
    cosine = float(np.sum(ref * out) / np.linalg.norm(ref) / np.linalg.norm(out))
    assert cosine > 0.99


def test_int64_shape_values_are_never_quantized(fp32: onnx.ModelProto) -> None:
    inferred = onnx.shape_inference.infer_shapes(fp32)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    for plan in (plan_qdq(fp32), plan_ort_cpu(fp32)):
        quantized = {a.tensor for a in plan.activations}
        assert all(
            types.get(t, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for t in quantized
        )


def test_the_widened_plan_contains_the_portable_one(fp32: onnx.ModelProto) -> None:
    portable, widened = plan_qdq(fp32), plan_ort_cpu(fp32)
    assert set(portable.calibration_tensors) < set(widened.calibration_tensors)
    assert widened.weights == portable.weights


def test_tensors_a_table_lacks_stay_float(fp32: onnx.ModelProto) -> None:
    portable = plan_qdq(fp32)
    only_portable = plan_ort_cpu(fp32, amax=portable.calibration_tensors)
    assert set(only_portable.calibration_tensors) == set(portable.calibration_tensors)


def test_an_excluded_node_reads_the_float_tensor(fp32: onnx.ModelProto) -> None:
    pw = next(n.name for n in fp32.graph.node if n.op_type == "Conv" and "pw" in n.name)
    plan = plan_ort_cpu(fp32, QDQConfig(exclude=(pw,)))
    assert not any(node == pw for a in plan.activations for node, _ in a.uses)
    assert all(w.node != pw for w in plan.weights)


def test_hard_activations_run_as_integer_add_and_mul(fp32: onnx.ModelProto, tmp_path: Path) -> None:
    path = tmp_path / "build.onnx"
    onnx.save(_build(fp32), str(path))
    ort_cpu_kernels(path, tmp_path / "optimized.onnx")
    optimized = _ops(onnx.load(str(tmp_path / "optimized.onnx")))
    assert optimized["HardSwish"] == optimized["HardSigmoid"] == 0
    assert optimized["QLinearAdd"] >= 3  # the residual, Hardswish's and HardSigmoid's offset


@pytest.mark.parametrize("op", ["HardSwish", "HardSigmoid"])
def test_the_integer_hard_activation_matches_the_float_one(op: str) -> None:
    from onnx import TensorProto, helper, numpy_helper

    x = np.linspace(-5, 5, 101, dtype=np.float32)
    inits = [
        numpy_helper.from_array(np.array(5 / 127, np.float32), "sx"),
        numpy_helper.from_array(np.array(5 / 127, np.float32), "sy"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "z"], ["xq"], "qx"),
        helper.make_node("DequantizeLinear", ["xq", "sx", "z"], ["xd"], "dqx"),
        helper.make_node(op, ["xd"], ["h"], "act"),
        helper.make_node("QuantizeLinear", ["h", "sy", "z"], ["hq"], "qh"),
        helper.make_node("DequantizeLinear", ["hq", "sy", "z"], ["y"], "dqh"),
    ]
    graph = helper.make_graph(
        nodes,
        "hard",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [101])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [101])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    build = build_for_ort_cpu(model)
    assert build.integer_hard == ["act"]
    assert op not in _ops(build.model)
    reference = _run(model, {"x": x})
    # One step of the 1/255 gate times |x| <= 5, plus the output's own rounding.
    np.testing.assert_allclose(_run(build.model, {"x": x}), reference, atol=5 / 255 + 5 / 127)


def test_shape_reads_the_quantized_tensor_not_a_dequantized_copy(fp32: onnx.ModelProto) -> None:
    build = _build(fp32)
    producers = {o: n for n in build.graph.node for o in n.output}
    shapes = [n for n in build.graph.node if n.op_type == "Shape"]
    assert shapes  # the shuffle's x.size()
    assert all(producers[n.input[0]].op_type != "DequantizeLinear" for n in shapes)


def test_relu6_with_a_range_beyond_its_bound_is_folded(
    fp32: onnx.ModelProto, tmp_path: Path
) -> None:
    # A trained MobileNetV2's ReLU6 outputs reach 6: with scale amax/127 the UINT8 range
    # (255 steps) overshoots 6 and ONNX Runtime keeps the Clip, and the Conv in float.
    plan = plan_ort_cpu(fp32)
    amax = _amax(fp32, plan.calibration_tensors)
    clip = next(n for n in fp32.graph.node if n.op_type == "Clip")
    amax[clip.output[0]] = 6.0
    build = build_for_ort_cpu(apply_plan(fp32, plan, amax))
    assert build.clip_ranges  # rule 4 gave it the scale 6/255
    path = tmp_path / "build.onnx"
    onnx.save(build.model, str(path))
    census = ort_cpu_kernels(path, tmp_path / "optimized.onnx")
    assert census["integer"]["QLinearConv"] == 6
    assert _ops(onnx.load(str(tmp_path / "optimized.onnx")))["Clip"] == 0
