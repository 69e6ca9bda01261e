"""The ONNX graph run as a torch module: same outputs as ONNX Runtime, fake quantization at
exactly the Q/DQ plan's points, trained weights written back under their ONNX names."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch

from quantpipe.engines.ort_session import OrtConfig, make_session
from quantpipe.errors import QuantpipeError
from quantpipe.export.onnx_export import export_onnx
from quantpipe.export.options import ExportOptions
from quantpipe.models.registry import MODELS, build_model
from quantpipe.qat.graph_module import OnnxGraphModule, QuantSpec
from quantpipe.quantize import QDQConfig, plan_qdq, quantize_qdq
from quantpipe.quantize.bits import BitWidths


def _export(name: str) -> onnx.ModelProto:
    spec = MODELS[name]
    net = build_model(spec, None) if spec.weights != "required" else spec.build().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_onnx(net, spec, ExportOptions())


def _inputs(model: onnx.ModelProto, n: int = 4) -> np.ndarray:
    dims = [d.dim_value or n for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(0).standard_normal(dims).astype(np.float32)


@pytest.mark.parametrize(
    "name",
    [
        "fmnist-cnn", "digits-mlp", "cifar10-resnet20", "mobilenet_v2", "shufflenet_v2_x1_0",
        "fmnist-mobilenetv2", "fmnist-shufflenetv2", "fmnist-seg-fcn", "tabular-mlp-wine",
    ],
)  # fmt: skip
def test_the_float_graph_computes_what_onnx_runtime_computes(name: str) -> None:
    model = _export(name)
    x = _inputs(model, 2)
    ref = make_session(model, OrtConfig()).run(None, {"input": x})[0]
    out = OnnxGraphModule(model)(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(ref).max()))


def _amax(model: onnx.ModelProto, x: np.ndarray) -> dict[str, float]:
    from quantpipe.calibration.runtime import with_outputs

    tensors = [a.amax_from for a in plan_qdq(model, QDQConfig()).activations]
    session = make_session(with_outputs(model, tensors), OrtConfig())
    return {
        t: float(np.abs(v).max())
        for t, v in zip(tensors, session.run(tensors, {"input": x}), strict=True)
    }


@pytest.mark.parametrize(
    "name", ["fmnist-cnn", "cifar10-resnet20", "fmnist-mobilenetv2", "fmnist-seg-fcn"]
)
def test_fake_quantization_is_the_exported_qdq_model(name: str) -> None:
    model = _export(name)
    x = _inputs(model, 32)
    amax = _amax(model, x)
    quantized = quantize_qdq(model, amax, QDQConfig()).model
    exact = make_session(quantized, OrtConfig(qdq_fusions=False)).run(None, {"input": x})[0]
    spec = QuantSpec(plan_qdq(model, QDQConfig()), amax)
    out = OnnxGraphModule(model, spec)(torch.from_numpy(x)).detach().numpy()
    assert (out.argmax(1) == exact.argmax(1)).mean() >= 0.95
    # Rounding ties may differ between the two runtimes by one step of a scale, no more.
    np.testing.assert_allclose(out, exact, atol=0.05 * np.abs(exact).max())
    float_out = OnnxGraphModule(model)(torch.from_numpy(x)).detach().numpy()
    assert np.abs(out - float_out).max() > 0  # it does quantize


def test_trained_weights_go_back_under_their_onnx_names() -> None:
    model = _export("fmnist-cnn")
    module = OnnxGraphModule(model)
    floats = {
        i.name for i in model.graph.initializer if onnx.numpy_helper.to_array(i).dtype == np.float32
    }
    assert set(module.float_weights()) == floats
    with torch.no_grad():
        next(iter(module.weights.values())).add_(1.0)
    changed = [k for k, v in module.float_weights().items()
               if not np.array_equal(v, onnx.numpy_helper.to_array(
                   next(i for i in model.graph.initializer if i.name == k)))]  # fmt: skip
    assert len(changed) == 1


def test_learned_ranges_start_at_the_calibrated_ones_and_train() -> None:
    model = _export("digits-mlp")
    x = _inputs(model, 64)
    amax = _amax(model, x)
    module = OnnxGraphModule(
        model, QuantSpec(plan_qdq(model, QDQConfig()), amax, learn_ranges=True)
    )
    assert module.activation_ranges() == pytest.approx(amax)
    loss = torch.nn.functional.cross_entropy(
        module(torch.from_numpy(x)), torch.zeros(64, dtype=torch.long)
    )
    loss.backward()
    assert all(p.grad is not None for p in module.ranges.values())


def test_an_op_it_cannot_run_is_a_clear_error() -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Erf", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    with pytest.raises(QuantpipeError, match="QAT cannot run ops Erf"):
        OnnxGraphModule(helper.make_model(graph))


@pytest.mark.parametrize("activation_bits", [8, 6, 4])
def test_fake_quantization_at_mixed_bits_is_the_exported_qdq_model(activation_bits: int) -> None:
    model = _export("cifar10-resnet20")
    x = _inputs(model, 32)
    amax = _amax(model, x)
    plan = plan_qdq(model, QDQConfig())
    rng = np.random.default_rng(activation_bits)
    bits = BitWidths({w.node: int(rng.choice([2, 4, 8])) for w in plan.weights}, activation_bits)
    quantized = quantize_qdq(model, amax, QDQConfig(), bits).model
    onnx.checker.check_model(quantized, full_check=True)
    exact = make_session(quantized, OrtConfig(qdq_fusions=False)).run(None, {"input": x})[0]
    out = OnnxGraphModule(model, QuantSpec(plan, amax, bits))(torch.from_numpy(x)).detach()
    assert (out.numpy().argmax(1) == exact.argmax(1)).mean() >= 0.9
    np.testing.assert_allclose(out.numpy(), exact, atol=0.05 * np.abs(exact).max())
    clips = [n for n in quantized.graph.node if n.op_type == "Clip"]
    assert len(clips) == (len(plan.activations) if activation_bits < 8 else 0)


def test_low_bit_weights_lie_on_their_grid_stored_as_int8() -> None:
    model = _export("fmnist-cnn")
    plan = plan_qdq(model, QDQConfig())
    bits = BitWidths({w.node: b for w, b in zip(plan.weights, (2, 4, 8), strict=False)})
    quantized = quantize_qdq(model, _amax(model, _inputs(model)), QDQConfig(), bits).model
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in quantized.graph.initializer}
    seen = set()
    for node in quantized.graph.node:
        if node.op_type == "DequantizeLinear" and inits.get(node.input[0], np.zeros(0)).ndim >= 2:
            codes = inits[node.input[0]]
            reader = next(n for n in quantized.graph.node if node.output[0] in n.input)
            limit = 2 ** (bits.weight(reader.name) - 1) - 1
            assert codes.dtype == np.int8 and np.abs(codes).max() == limit  # grid used fully
            seen.add(limit)
    assert seen == {1, 7, 127}


def test_a_bit_width_outside_2_to_8_is_a_clear_error() -> None:
    with pytest.raises(QuantpipeError, match=r"bit width 9 is not an integer in 2..8"):
        BitWidths({}, 9)
    with pytest.raises(QuantpipeError, match=r"node 'conv'.*bit width 1 is not"):
        BitWidths({"conv": 1})
