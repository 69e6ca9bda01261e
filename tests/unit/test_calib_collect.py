"""The collection pass through ONNX Runtime on tiny hand-built models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantpipe.calibration import CollectConfig, HistogramCollector, collect_statistics
from quantpipe.calibration.histogram import SpatialSample, merge_bins
from quantpipe.errors import QuantpipeError

RNG = np.random.default_rng(0)
W1 = RNG.normal(size=(4, 3)).astype(np.float32)
W2 = RNG.normal(size=(3, 2)).astype(np.float32)
W_CONV = RNG.normal(size=(4, 2, 3, 3)).astype(np.float32)


def _mlp(first_op: str = "Identity") -> onnx.ModelProto:
    """x[N,4] -> first_op -> MatMul W1 -> Relu -> MatMul W2 -> y[N,2]."""
    nodes = [
        helper.make_node(first_op, ["x"], ["pre"], name="pre"),
        helper.make_node("MatMul", ["pre", "W1"], ["mm"], name="mm1"),
        helper.make_node("Relu", ["mm"], ["act"], name="relu"),
        helper.make_node("MatMul", ["act", "W2"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(W2, "W2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _feeds(batches: int = 3, scale: float = 1.0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [
        {"x": (rng.normal(size=(5, 4)) * scale * (k + 1)).astype(np.float32)}
        for k in range(batches)
    ]


def test_statistics_match_numpy_activations() -> None:
    feeds = _feeds()
    stats = collect_statistics(_mlp(), feeds, ["mm", "act", "x"], CollectConfig(threads=1))
    x = np.concatenate([f["x"] for f in feeds])
    mm = x @ W1
    expected = {"x": x, "mm": mm, "act": np.maximum(mm, 0)}
    reference = HistogramCollector()
    for name, value in expected.items():
        reference.collect(name, value)
    for name, value in expected.items():
        got = stats.stats[name]
        assert got.amax == pytest.approx(float(np.abs(value).max()), rel=1e-6)
        assert got.counts.sum() == value.size
        # ORT and numpy may round a value across a bin edge, nothing more.
        assert np.abs(got.counts - reference.stats[name].counts).sum() <= 2
    # Post-ReLU: the negative half collapses into bin 0.
    assert stats.stats["act"].counts[0] >= (mm <= 0).sum()


def test_only_requested_tensors_are_collected() -> None:
    stats = collect_statistics(_mlp(), _feeds(1), ["act"])
    assert set(stats.stats) == {"act"}


def test_max_only_pass() -> None:
    stats = collect_statistics(_mlp(), _feeds(), ["act"], CollectConfig(with_histogram=False))
    assert stats.stats["act"].amax > 0
    assert stats.stats["act"].counts.sum() == 0


def test_nan_activation_names_the_tensor() -> None:
    # Sqrt of negative inputs gives NaN in tensor 'pre'.
    with pytest.raises(QuantpipeError, match="'pre' contains NaN or Inf"):
        collect_statistics(_mlp("Sqrt"), _feeds(), ["pre", "act"])


def test_wrong_shape_says_expected_and_got() -> None:
    feeds = [{"x": np.zeros((5, 7), dtype=np.float32)}]
    with pytest.raises(
        QuantpipeError, match=r"'x': expected float32 \[N, 4\], got float32 \[5, 7\]"
    ):
        collect_statistics(_mlp(), feeds, ["act"])


def test_wrong_dtype_says_expected_and_got() -> None:
    feeds = [{"x": np.zeros((5, 4), dtype=np.float64)}]
    with pytest.raises(QuantpipeError, match=r"expected float32 \[N, 4\], got float64 \[5, 4\]"):
        collect_statistics(_mlp(), feeds, ["act"])


def test_wrong_rank_is_rejected() -> None:
    feeds = [{"x": np.zeros((5, 4, 1), dtype=np.float32)}]
    with pytest.raises(QuantpipeError, match=r"got float32 \[5, 4, 1\]"):
        collect_statistics(_mlp(), feeds, ["act"])


def test_missing_and_extra_inputs() -> None:
    with pytest.raises(QuantpipeError, match="lacks model input 'x'"):
        collect_statistics(_mlp(), [{"image": np.zeros((1, 4), np.float32)}], ["act"])
    extra = [{"x": np.zeros((1, 4), np.float32), "y2": np.zeros(1, np.float32)}]
    with pytest.raises(QuantpipeError, match="has input 'y2', which the model lacks"):
        collect_statistics(_mlp(), extra, ["act"])


def test_unknown_tensor_and_empty_data() -> None:
    with pytest.raises(QuantpipeError, match="'nope' to calibrate"):
        collect_statistics(_mlp(), _feeds(), ["nope"])
    with pytest.raises(QuantpipeError, match="calibration data is empty"):
        collect_statistics(_mlp(), [], ["act"])


def test_model_path_and_progress_bar(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "mlp.onnx"
    onnx.save(_mlp(), str(path))
    stats = collect_statistics(path, _feeds(), ["act"], CollectConfig(progress=True))
    assert stats.stats["act"].counts.sum() == 3 * 5 * 3
    assert "calibrate" in capsys.readouterr().err
    with pytest.raises(QuantpipeError, match="does not exist"):
        collect_statistics(tmp_path / "missing.onnx", _feeds(), ["act"])


def test_streams_into_an_existing_collector() -> None:
    first = collect_statistics(_mlp(), _feeds(1), ["act"])
    both = collect_statistics(_mlp(), _feeds(1), ["act"], collector=first)
    assert both is first
    assert both.stats["act"].counts.sum() == 2 * 5 * 3


@pytest.mark.parametrize("threads", [-1, 1.5, True])
def test_bad_thread_count(threads: object) -> None:
    with pytest.raises(QuantpipeError, match="threads="):
        CollectConfig(threads=threads)  # type: ignore[arg-type]


def test_large_batches_are_sliced_without_changing_the_statistics() -> None:
    feeds = [{"x": np.random.default_rng(2).normal(size=(10, 4)).astype(np.float32)}]
    whole = collect_statistics(_mlp(), feeds, ["act"], CollectConfig(max_batch=0))
    sliced = collect_statistics(_mlp(), feeds, ["act"], CollectConfig(max_batch=4))
    np.testing.assert_array_equal(whole.stats["act"].counts, sliced.stats["act"].counts)
    assert whole.stats["act"].amax == sliced.stats["act"].amax


def test_split_batch_slices_only_free_leading_dims() -> None:
    from quantpipe.calibration.collect import split_batch
    from quantpipe.calibration.runtime import InputSpec

    feed = {"x": np.zeros((10, 4), np.float32)}
    parts = split_batch(feed, [InputSpec("x", np.float32, ("N", 4))], 4)
    assert [p["x"].shape[0] for p in parts] == [4, 4, 2]
    assert split_batch(feed, [InputSpec("x", np.float32, (10, 4))], 4) == [feed]
    assert split_batch(feed, [InputSpec("x", np.float32, ("N", 4))], 0) == [feed]


def test_reused_output_buffers_follow_changing_batch_sizes() -> None:
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.normal(size=(n, 4)).astype(np.float32)} for n in (5, 5, 3, 7, 5, 3)]
    stats = collect_statistics(_mlp(), feeds, ["mm"], CollectConfig(threads=2, max_batch=0))
    reference = HistogramCollector()
    reference.collect("mm", np.concatenate([f["x"] for f in feeds]) @ W1)
    got, want = stats.stats["mm"], reference.stats["mm"]
    assert got.counts.sum() == want.counts.sum() == 28 * 3
    assert got.amax == pytest.approx(want.amax, rel=1e-6)
    assert np.abs(got.counts - want.counts).sum() <= 2


def _conv() -> onnx.ModelProto:
    """x[N,2,16,16] -> 3x3 Conv (4 channels, padded) -> y: an image-like activation."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 16, 16])],
        [numpy_helper.from_array(W_CONV, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_image_like_tensors_are_sampled_with_rotating_offsets() -> None:
    """Each slice's histogram takes the k-th rotating sample; maxima cover every value."""
    rng = np.random.default_rng(5)
    feeds = [{"x": rng.normal(size=(6, 2, 16, 16)).astype(np.float32)} for _ in range(2)]
    config = CollectConfig(threads=1, max_batch=3, histogram_stride=2)
    got = collect_statistics(_conv(), feeds, ["x"], config).stats["x"]
    slices = [f["x"][i : i + 3] for f in feeds for i in (0, 3)]
    expected = HistogramCollector()
    for k, part in enumerate(slices):
        offset = SpatialSample.rotating(2, k)
        expected.collect("x", part[..., offset.row :: 2, offset.col :: 2])
        expected.stats["x"].amax = max(expected.stats["x"].amax, float(np.abs(part).max()))
    assert got.amax == expected.stats["x"].amax
    assert got.counts.sum() == sum(p.size for p in slices) // 4
    # Ranges can differ only by growth order; merged onto the exact one the counts match.
    want = expected.stats["x"]
    assert want.range_max <= got.range_max
    factor = int(got.range_max / want.range_max)
    merged = want.counts if factor == 1 else merge_bins(want.counts, factor)
    np.testing.assert_array_equal(got.counts, merged)


def test_stride_one_bins_every_value_of_an_activation() -> None:
    rng = np.random.default_rng(6)
    feeds = [{"x": rng.normal(size=(4, 2, 16, 16)).astype(np.float32)}]
    stats = collect_statistics(_conv(), feeds, ["y"], CollectConfig(histogram_stride=1))
    assert stats.stats["y"].counts.sum() == 4 * 4 * 16 * 16
    sampled = collect_statistics(_conv(), feeds, ["y"], CollectConfig(histogram_stride=2))
    assert sampled.stats["y"].counts.sum() == 4 * 4 * 8 * 8
    assert sampled.stats["y"].amax == stats.stats["y"].amax


@pytest.mark.parametrize("stride", [0, -1, 1.5, True])
def test_bad_histogram_stride(stride: object) -> None:
    with pytest.raises(QuantpipeError, match="histogram stride"):
        CollectConfig(histogram_stride=stride)  # type: ignore[arg-type]
