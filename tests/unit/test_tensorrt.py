"""The TensorRT builder (engines/tensorrt_build.py), TensorRT 10's implicit INT8 path
(engines/tensorrt_legacy.py) and the TensorRT backend's runner.

Tests marked `tensorrt` build tiny engines (FP32, FP16 ONNX, Q/DQ INT8) and compare them
with ONNX Runtime; they skip where TensorRT is not installed. The others run anywhere: the
ONNX checks made before tensorrt is imported, the timing cache's file name, the calibration
cache handling, and the clear errors where TensorRT does not import.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from quantpipe.calibration.cache import format_trt_cache
from quantpipe.engines.backend import Backend, BatchProfile, BuildJob, Precision
from quantpipe.engines.machine import GpuInfo
from quantpipe.engines.registry import get_backend
from quantpipe.engines.tensorrt_build import (
    build_plan,
    input_dims,
    onnx_precision,
    polygraphy_profile,
    profile_shapes,
    timing_cache,
    timing_cache_file,
)
from quantpipe.engines.tensorrt_legacy import (
    NoCalibrationData,
    build_implicit_int8,
    calibrator_class,
    has_implicit_int8,
    restamped_cache,
    trt_version_code,
)
from quantpipe.errors import CorruptArtifactError, QuantpipeError
from quantpipe.quantize import quantize_qdq
from tests.conftest import ROOT
from tests.unit.test_qdq_insert import C_IN, _amax, residual_model

TENSORRT_MISSING = (
    "TensorRT is not installed here (its PyPI package fetches libraries from an unreachable host)"
)
needs_tensorrt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None, reason=TENSORRT_MISSING
)
PROFILE = BatchProfile(1, 8, 16)


def _fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxconverter_common.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True)


def _qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    return quantize_qdq(model, _amax(model)).model


MAKERS = {"fp32": lambda m: m, "fp16": _fp16, "int8": _qdq}


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _job(
    source: Path, precision: Precision, tmp: Path, profile: BatchProfile = PROFILE
) -> BuildJob:
    out = tmp / f"{source.stem}.plan"
    return BuildJob(source, out, precision, profile, workspace_mib=256, cache_dir=tmp / "cache")


def _input_model(shape: list[int | str]) -> onnx.ModelProto:
    """Identity on one float input `x` of `shape`."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """tensorrt unimportable, as on this project's machines: a None entry in sys.modules
    makes `import tensorrt` raise ImportError (nothing of TensorRT is imitated)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


# --- what runs anywhere --------------------------------------------------------------------


def test_the_tensorrt_backend_builds_plan_files() -> None:
    backend = get_backend("tensorrt")
    assert backend.builder is not None and backend.engine_suffix == ".plan"
    assert backend.runs == "engine" and backend.int8_build == "qdq"


@pytest.mark.usefixtures("no_tensorrt")
def test_building_through_the_registry_without_tensorrt_says_so(tmp_path: Path) -> None:
    source = _save(residual_model(), tmp_path / "model.fp32.onnx")
    with pytest.raises(QuantpipeError, match="backend tensorrt is not available here: tensorrt"):
        get_backend("tensorrt").build(_job(source, "fp32", tmp_path))
    assert not (tmp_path / "model.fp32.plan").exists()


@pytest.mark.usefixtures("no_tensorrt")
def test_build_plan_without_tensorrt_says_what_to_install(tmp_path: Path) -> None:
    source = _save(residual_model(), tmp_path / "model.fp32.onnx")
    with pytest.raises(QuantpipeError, match=r"tensorrt does not import .*quantpipe\[tensorrt\]"):
        build_plan(_job(source, "fp32", tmp_path))


def test_importing_the_builders_imports_no_tensorrt_polygraphy_or_onnx() -> None:
    code = (
        "import sys, quantpipe.engines.registry, quantpipe.engines.tensorrt_build, "
        "quantpipe.engines.tensorrt_legacy; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorrt', 'polygraphy', 'onnx'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("shape", "refusal"),
    [
        (["N", C_IN, "H", "W"], r"'x' has shape \['N', 3, 'H', 'W'\], dynamic on axes \[2, 3\]"),
        ([], r"'x' has no batch axis"),
        ([1, C_IN, 8, 8], r"'x' has a fixed batch of 1, and the profile asks 1-16"),
    ],
)
def test_inputs_other_than_batch_by_static_dims_are_refused_before_tensorrt(
    tmp_path: Path, shape: list[int | str], refusal: str
) -> None:
    source = _save(_input_model(shape), tmp_path / "model.fp32.onnx")
    with pytest.raises(QuantpipeError, match=refusal):
        build_plan(_job(source, "fp32", tmp_path))  # refused here, where tensorrt is missing


def test_a_fixed_batch_is_accepted_when_the_profile_is_that_batch() -> None:
    assert input_dims(_input_model([4, C_IN, 8, 8]), BatchProfile(4, 4, 4)) == {"x": [C_IN, 8, 8]}


def test_the_profile_spans_the_batch_axis_of_every_input() -> None:
    dims = input_dims(residual_model(), PROFILE)
    assert dims == {"x": [C_IN, 8, 8]}
    assert profile_shapes(dims, PROFILE) == {
        "x": {"min": [1, C_IN, 8, 8], "opt": [8, C_IN, 8, 8], "max": [16, C_IN, 8, 8]}
    }


def test_the_polygraphy_profile_holds_those_shapes() -> None:
    pytest.importorskip("polygraphy", reason="polygraphy is not installed")
    profile = polygraphy_profile(profile_shapes({"x": [C_IN, 8, 8]}, PROFILE))
    assert list(profile) == ["x"]
    assert tuple(profile["x"]) == ((1, C_IN, 8, 8), (8, C_IN, 8, 8), (16, C_IN, 8, 8))


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_the_precision_is_read_from_the_onnx(precision: Precision) -> None:
    assert onnx_precision(MAKERS[precision](residual_model())) == precision


def test_a_model_of_another_precision_than_the_job_is_refused(tmp_path: Path) -> None:
    source = _save(residual_model(), tmp_path / "model.fp32.onnx")
    with pytest.raises(QuantpipeError, match=r"model\.fp32\.onnx computes in fp32, not int8"):
        build_plan(_job(source, "int8", tmp_path))


def test_one_timing_cache_file_per_gpu_and_tensorrt_version(tmp_path: Path) -> None:
    h200 = GpuInfo("NVIDIA H200", "9.0")
    name = timing_cache_file(tmp_path, h200, "10.3.0.26").name
    assert name == "timing.nvidia-h200.sm90.trt10.3.0.26.cache"
    others = {
        timing_cache_file(tmp_path, GpuInfo("NVIDIA GeForce RTX 4090", "8.9"), "10.3.0.26"),
        timing_cache_file(tmp_path, h200, "11.4.0.106"),
    }
    assert tmp_path / name not in others and len(others) == 2
    assert timing_cache(None, "10.3.0.26") is None  # no cache directory: no timing cache


def test_the_calibrator_class_follows_the_cache_header(tmp_path: Path) -> None:
    for algorithm, cls in [
        ("EntropyCalibration2", "IInt8EntropyCalibrator2"),
        ("MinMaxCalibration", "IInt8MinMaxCalibrator"),
        ("LegacyCalibration", "IInt8LegacyCalibrator"),
    ]:
        cache = tmp_path / f"{algorithm}.trtcache"
        cache.write_text(format_trt_cache({"x": 2.5}, f"TRT-100300-{algorithm}"))
        assert calibrator_class(cache) == cls
    bad = tmp_path / "bad.trtcache"
    bad.write_text("TRT-100300-EntropyCalibration2\nx: 4\n")
    with pytest.raises(CorruptArtifactError, match="line 2"):
        calibrator_class(bad)


def test_tensorrt_gets_a_restamped_copy_and_our_cache_stays_as_it_was(tmp_path: Path) -> None:
    assert trt_version_code("10.3.0.26") == 100300 and trt_version_code("8.6.1") == 8601
    ours = tmp_path / "calib" / "k.trtcache"
    ours.parent.mkdir()
    text = format_trt_cache({"x": 2.5, "conv1_out": 1.0}, "TRT-100300-EntropyCalibration2")
    ours.write_text(text)
    (tmp_path / "tmp").mkdir()
    copy = restamped_cache(ours, tmp_path / "tmp", "10.8.0.43")
    assert copy != ours and ours.read_text() == text
    header, *scales = copy.read_text().splitlines()
    assert header == "TRT-100800-EntropyCalibration2" and scales == text.splitlines()[1:]


def test_the_empty_calibration_loader_records_only_being_asked_for_data() -> None:
    data = NoCalibrationData()
    batches = iter(data)  # what Polygraphy's Calibrator does when it is made
    assert not data.asked
    assert list(batches) == [] and data.asked  # what TensorRT's get_batch leads to


@pytest.mark.usefixtures("no_tensorrt")
def test_implicit_int8_without_tensorrt_is_refused(tmp_path: Path) -> None:
    source = _save(residual_model(), tmp_path / "model.fp32.onnx")
    cache = tmp_path / "k.trtcache"
    cache.write_text(format_trt_cache(_amax(residual_model()), "TRT-100300-EntropyCalibration2"))
    assert not has_implicit_int8()
    with pytest.raises(QuantpipeError, match="tensorrt does not import"):
        build_implicit_int8(source, cache, _job(source, "int8", tmp_path))


def test_implicit_int8_builds_from_the_fp32_model_only(tmp_path: Path) -> None:
    source = _save(_qdq(residual_model()), tmp_path / "model.int8.qdq.onnx")
    cache = tmp_path / "k.trtcache"
    cache.write_text(format_trt_cache({"x": 2.5}, "TRT-100300-EntropyCalibration2"))
    with pytest.raises(QuantpipeError, match="computes in int8, not fp32"):
        build_implicit_int8(source, cache, _job(source, "int8", tmp_path))


# --- what needs TensorRT and a GPU ---------------------------------------------------------


@pytest.fixture
def tensorrt_backend() -> Backend:
    backend = get_backend("tensorrt")
    availability = backend.probe()
    if not availability.available:
        pytest.skip(f"the tensorrt backend is not available here: {availability.detail}")
    return backend


def _onnxruntime(model: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _batch(n: int) -> np.ndarray:
    return np.random.default_rng(n).normal(size=(n, C_IN, 8, 8)).astype(np.float32)


@pytest.mark.tensorrt
@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_an_engine_computes_what_onnxruntime_does(
    tensorrt_backend: Backend, tmp_path: Path, precision: Precision
) -> None:
    import tensorrt as trt

    source = _save(MAKERS[precision](residual_model()), tmp_path / f"model.{precision}.onnx")
    info = tensorrt_backend.build(_job(source, precision, tmp_path))
    assert info.runtime == "tensorrt" and info.runtime_version == trt.__version__
    assert info.options["strongly_typed"] and info.options["workspace_mib"] == 256
    for n in (1, 5, 16):
        x = _batch(n)
        with tensorrt_backend.runner(tmp_path / f"model.{precision}.plan") as runner:
            got = runner.infer({"x": x})["logits"]
        want = _onnxruntime(source, x)
        assert got.shape == want.shape == (n, want.shape[1])
        if precision == "fp32":
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
        else:
            assert _cosine(got, want) > 0.995, precision


@pytest.mark.tensorrt
@needs_tensorrt
def test_the_timing_cache_is_saved_and_then_loaded(
    tensorrt_backend: Backend, tmp_path: Path
) -> None:
    source = _save(residual_model(), tmp_path / "model.fp32.onnx")
    first = tensorrt_backend.build(_job(source, "fp32", tmp_path))
    cache = Path(first.options["timing_cache"])
    assert cache.parent == tmp_path / "cache" and cache.stat().st_size > 0
    second = tensorrt_backend.build(_job(source, "fp32", tmp_path))
    assert second.options["timing_cache"] == str(cache)


@pytest.mark.tensorrt
@needs_tensorrt
def test_the_runner_refuses_a_batch_outside_the_profile(
    tensorrt_backend: Backend, tmp_path: Path
) -> None:
    source = _save(residual_model(), tmp_path / "model.fp32.onnx")
    tensorrt_backend.build(_job(source, "fp32", tmp_path, BatchProfile(2, 4, 4)))
    refusal = pytest.raises(QuantpipeError, match=r"batch size 5 .* \(min 2, max 4\)")
    with tensorrt_backend.runner(tmp_path / "model.fp32.plan") as runner, refusal:
        runner.infer({"x": _batch(5)})


@pytest.mark.tensorrt
@needs_tensorrt
def test_implicit_int8_takes_the_scales_of_our_cache(
    tensorrt_backend: Backend, tmp_path: Path
) -> None:
    if not has_implicit_int8():
        pytest.skip("this TensorRT has no implicit INT8 (TensorRT 11 removed calibrators)")
    model = residual_model()
    source = _save(model, tmp_path / "model.fp32.onnx")
    cache = tmp_path / "k.trtcache"
    cache.write_text(format_trt_cache(_amax(model), "TRT-100300-EntropyCalibration2"))
    before = cache.read_text()
    info = build_implicit_int8(source, cache, _job(source, "int8", tmp_path))
    assert info.options["int8"] == "implicit" and cache.read_text() == before
    x = _batch(8)
    with tensorrt_backend.runner(tmp_path / "model.fp32.plan") as runner:
        got = runner.infer({"x": x})["logits"]
    qdq = _save(_qdq(model), tmp_path / "model.int8.qdq.onnx")
    assert _cosine(got, _onnxruntime(qdq, x)) > 0.99


@pytest.mark.tensorrt
@needs_tensorrt
def test_without_implicit_int8_the_legacy_path_says_so(tmp_path: Path) -> None:
    if has_implicit_int8():
        pytest.skip("this TensorRT still has implicit INT8 (TensorRT 10)")
    source = _save(residual_model(), tmp_path / "model.fp32.onnx")
    cache = tmp_path / "k.trtcache"
    cache.write_text(format_trt_cache({"x": 2.5}, "TRT-100300-EntropyCalibration2"))
    with pytest.raises(QuantpipeError, match="has no implicit INT8"):
        build_implicit_int8(source, cache, _job(source, "int8", tmp_path))
