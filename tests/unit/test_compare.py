"""Model-vs-model comparison: per-output and per-layer error, worst first."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantpipe.errors import QuantpipeError
from quantpipe.quantize import compare_models, quantize_qdq

RNG = np.random.default_rng(0)
W1 = RNG.normal(size=(6, 8)).astype(np.float32)
W2 = RNG.normal(size=(8, 3)).astype(np.float32)


def _mlp(w2: np.ndarray = W2) -> onnx.ModelProto:
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], "mm1"),
        helper.make_node("Relu", ["h"], ["a"], "relu"),
        helper.make_node("MatMul", ["a", "W2"], ["y"], "mm2"),
        helper.make_node("Shape", ["y"], ["y_shape"], "shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(w2, "W2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(n: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.normal(size=(4, 6)).astype(np.float32)} for _ in range(n)]


def _outputs(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, f)[0] for f in feeds]).astype(np.float64)


def test_identical_models_have_no_error() -> None:
    result = compare_models(_mlp(), _mlp(), _feeds())
    assert [r.tensor for r in result.outputs] == ["y"]
    assert sorted(r.tensor for r in result.layers) == ["a", "h"]  # int64 'y_shape' is skipped
    for row in result.outputs + result.layers:
        assert row.max_abs == 0.0 and row.cosine == pytest.approx(1.0) and row.sqnr_db == math.inf


def test_errors_match_an_independent_computation_and_sort_worst_first() -> None:
    w2 = W2.copy()
    w2[:, 0] *= 1.3  # perturb one output column: only 'y' changes
    feeds = _feeds()
    result = compare_models(_mlp(), _mlp(w2), feeds)
    ref, cand = _outputs(_mlp(), feeds), _outputs(_mlp(w2), feeds)
    (row,) = result.outputs
    diff = ref - cand
    assert row.node == "mm2" and row.op_type == "MatMul"
    assert row.max_abs == pytest.approx(np.abs(diff).max(), rel=1e-6)
    expected_cos = (ref.ravel() @ cand.ravel()) / np.linalg.norm(ref) / np.linalg.norm(cand)
    assert row.cosine == pytest.approx(expected_cos, rel=1e-9)
    assert row.sqnr_db == pytest.approx(10 * np.log10((ref**2).sum() / (diff**2).sum()), rel=1e-9)
    assert all(r.sqnr_db == math.inf for r in result.layers)


def test_qdq_model_lines_up_with_fp32_names() -> None:
    model = _mlp()
    feeds = _feeds()
    qdq = quantize_qdq(model, {"x": 4.0, "a": 6.0}).model
    result = compare_models(model, qdq, feeds, threads=1)
    names = [r.tensor for r in result.layers]
    assert sorted(names) == ["a", "h"]
    sqnr = [r.sqnr_db for r in result.layers]
    assert sqnr == sorted(sqnr)  # worst first
    for row in result.layers + result.outputs:
        assert 15.0 < row.sqnr_db < 80.0 and row.cosine > 0.99 and row.max_abs > 0


def test_restricting_tensors_and_unknown_names() -> None:
    result = compare_models(_mlp(), _mlp(), _feeds(1), tensors=["a"])
    assert [r.tensor for r in result.layers] == ["a"]
    with pytest.raises(QuantpipeError, match="'nope' is not in both models"):
        compare_models(_mlp(), _mlp(), _feeds(1), tensors=["nope"])


def test_mismatched_feed_is_a_clear_error() -> None:
    with pytest.raises(QuantpipeError, match=r"expected float32 \[N, 6\], got float32 \[4, 5\]"):
        compare_models(_mlp(), _mlp(), [{"x": np.zeros((4, 5), np.float32)}])
