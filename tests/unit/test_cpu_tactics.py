"""The CPU tactic pass (quantpipe.quantize.cpu_tactics): candidates, the whole-model A/B
timing, the per-CPU cache, and what a float stem looks like in the CPU build."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import pytest

from quantpipe.quantize import cpu_tactics
from quantpipe.quantize.cpu_tactics import Tactic, cache_file, input_convs, stem_tactics
from quantpipe.quantize.ort_census import ort_cpu_kernels
from quantpipe.quantize.ort_cpu import build_for_ort_cpu
from quantpipe.quantize.ort_cpu_plan import plan_ort_cpu
from quantpipe.quantize.qdq import apply_plan
from tests.unit.test_qdq_insert import _feeds, residual_model


def _amax(model: onnx.ModelProto) -> dict[str, float]:
    from quantpipe.calibration import CollectConfig, MaxConfig, collect_statistics, compute_all

    tensors = plan_ort_cpu(model).calibration_tensors
    stats = collect_statistics(model, _feeds(), tensors, CollectConfig(threads=1))
    return dict(compute_all(stats, [MaxConfig()])[MaxConfig()])


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    fp32 = residual_model()
    dims = fp32.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param = "N"  # a dynamic batch, static image: what export writes
    return fp32


def _builder(model: onnx.ModelProto):  # type: ignore[no-untyped-def]
    amax = _amax(model)
    return lambda convs: (
        build_for_ort_cpu(
            apply_plan(model, plan_ort_cpu(model, amax=amax, float_convs=convs), amax)
        ).model
    )


def test_only_the_conv_reading_the_input_is_a_candidate(model: onnx.ModelProto) -> None:
    assert input_convs(model) == ["conv1"]


def test_a_float_stem_reads_the_input_unquantized_and_keeps_float_weights(
    model: onnx.ModelProto, tmp_path: Path
) -> None:
    build = _builder(model)(["conv1"])
    conv1 = next(n for n in build.graph.node if n.name == "conv1")
    assert conv1.input[0] == "x"
    assert conv1.input[1] == "conv1.w"  # the float initializer, no DequantizeLinear
    path = tmp_path / "build.onnx"
    onnx.save(build, str(path))
    census = ort_cpu_kernels(path, tmp_path / "optimized.onnx")
    assert census["integer"]["QLinearConv"] == 1  # conv2 still integer
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert ops["Conv"] + ops["FusedConv"] == 1  # conv1 in float


def test_timings_are_cached_per_model_and_reused(
    model: onnx.ModelProto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = cache_file(tmp_path / "tactics", "Intel(R) Xeon(R) CPU @ 2.60GHz", "1.32.0")
    assert cache.name == "cpu.Intel-R-Xeon-R-CPU-2.60GHz.ort1.32.0.json"
    first = stem_tactics(model, _builder(model), cache, threads=1)
    assert [t.node for t in first] == ["conv1"]
    assert len(first[0].int8_ms) == 2 and min(first[0].int8_ms + first[0].fp32_ms) > 0

    def no_timing(*args: object) -> list[float]:
        raise AssertionError("timed again despite the cache")

    monkeypatch.setattr(cpu_tactics, "time_models", no_timing)
    assert stem_tactics(model, _builder(model), cache, threads=1) == first


def test_a_damaged_cache_is_measured_again(model: onnx.ModelProto, tmp_path: Path) -> None:
    cache = tmp_path / "cpu.json"
    cache.write_text('{"format": 3, "cases": {"x": "not a pair"')
    tactics = stem_tactics(model, _builder(model), cache, threads=1)
    assert len(tactics) == 1 and min(tactics[0].int8_ms) > 0


def test_float_only_where_clearly_faster() -> None:
    assert Tactic("c", int8_ms=(10.0, 50.0), fp32_ms=(9.0, 45.0)).keep_float
    assert not Tactic("c", int8_ms=(10.0, 50.0), fp32_ms=(9.9, 45.0)).keep_float
    # Faster at batch 1 but not at batch 8: stays INT8.
    assert not Tactic("c", int8_ms=(10.0, 50.0), fp32_ms=(9.0, 52.0)).keep_float
    assert (
        "float (whole model, batch 1: 10.00 ms" in Tactic("c", (10.0, 50.0), (9.0, 45.0)).describe()
    )


def test_a_model_without_a_static_image_size_is_not_timed(model: onnx.ModelProto) -> None:
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(model)
    dynamic.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    assert stem_tactics(dynamic, lambda convs: dynamic, Path("/nonexistent"), 1) == []
