"""calibrate + ptq on the shared ResNet-20: cache reuse, structure, accuracy, bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import onnx
import pytest

from quantpipe.calibration import import_trt_cache
from quantpipe.cli import main
from tests.conftest import CIFAR_TAR, RESNET20, RESNET32, needs_shared

pytestmark = needs_shared
DATA = f"cifar10:{CIFAR_TAR}"
COUNT = ["--eval-count", "400", "--calib-count", "256"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ptq") / "run"
    argv = [
        "export",
        "--model",
        "cifar10-resnet20",
        "--weights",
        str(RESNET20),
        "--data",
        DATA,
        "--run-dir",
        str(run),
        "--quiet",
    ]
    assert main(argv) == 0
    return run


def _ptq(run: Path, *extra: str) -> int:
    return main(["ptq", "--data", DATA, *COUNT, "--run-dir", str(run), "--quiet", *extra])


def _results(run: Path, stage: str = "ptq") -> dict:
    return json.loads((run / "manifest.json").read_text())["stages"][stage]["results"]


def test_ptq_quantizes_reports_all_calibrators_and_reuses_the_cache(run_dir: Path, capsys) -> None:
    assert main(["ptq", "--data", DATA, *COUNT, "--run-dir", str(run_dir)]) == 0
    res = _results(run_dir)
    assert set(res["per_calibrator"]) == {"max", "percentile", "entropy", "mse"}
    assert res["calibration"]["computed"] == ["max", "percentile", "entropy", "mse"]
    scores = res["per_calibrator"]
    lowest_kl = min(scores, key=lambda k: scores[k]["val_kl"])
    best = res["calibrator"]
    # auto keeps the lowest val KL unless another calibrator is clearly more accurate on val.
    assert best == lowest_kl or scores[best]["val"] > scores[lowest_kl]["val"]
    # Exact Q/DQ semantics keep ResNet-20 within a point on 400 test images.
    assert res["fp32"]["test"] - res["per_calibrator"][best]["test"] < 1.5
    model = onnx.load(str(run_dir / "model.int8.qdq.onnx"))
    onnx.checker.check_model(model, full_check=True)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] == res["qdq"]["quantize_linear"] > 19
    assert all(
        not onnx.numpy_helper.to_array(i).any()
        for i in model.graph.initializer
        if "zero_point" in i.name
    )
    # The ONNX Runtime CPU build: every Conv and residual Add on integer kernels, and as
    # close to FP32 as the INT8 model (a few label flips of 400).
    ort_cpu = res["ort_cpu"]
    assert (run_dir / "model.int8.ort.onnx").is_file()
    assert ort_cpu["kernels"]["integer"]["QLinearConv"] == ops["Conv"] == 19
    assert ort_cpu["kernels"]["integer"]["QLinearAdd"] == 9
    assert "Conv" not in ort_cpu["kernels"]["float"] and "Add" not in ort_cpu["kernels"]["float"]
    assert ort_cpu["seven_bit_weights"] == 1  # the first conv reads the signed image
    assert abs(ort_cpu["test"] - res["fp32"]["test"]) < 1.5
    assert (
        "its CPU build runs integer kernels: 9 QLinearAdd, 19 QLinearConv"
        in capsys.readouterr().out
    )
    # Second run, other seed-independent parameter: recalibration not needed.
    assert _ptq(run_dir, "--calibrator", "entropy") == 0
    assert _results(run_dir)["calibration"]["reused"] == ["entropy"]
    assert "reused cached tables for entropy" in capsys.readouterr().out
    # Another calibration count is other data: recalibrated, never reused.
    assert (
        main(
            [
                "ptq",
                "--data",
                DATA,
                "--eval-count",
                "400",
                "--calib-count",
                "128",
                "--calibrator",
                "entropy",
                "--run-dir",
                str(run_dir),
                "--quiet",
            ]
        )
        == 0
    )
    assert _results(run_dir)["calibration"]["computed"] == ["entropy"]


def test_trtcache_round_trips_through_the_importer(run_dir: Path) -> None:
    caches = sorted((run_dir / "calib").glob("*.trtcache"))
    assert caches
    amax = import_trt_cache(caches[0])
    table = json.loads(caches[0].with_suffix(".json").read_text())
    assert {k: pytest.approx(v, rel=1e-6) for k, v in table["amax"].items()} == amax
    assert _ptq(run_dir, "--calib-cache", str(caches[0])) == 0
    assert _results(run_dir)["calibration"] == {"imported": str(caches[0])}


def test_cache_of_another_model_is_refused(run_dir: Path, tmp_path: Path, capsys) -> None:
    other = tmp_path / "r32"
    assert (
        main(
            [
                "export",
                "--model",
                "cifar10-resnet32",
                "--weights",
                str(RESNET32),
                "--data",
                DATA,
                "--parity-count",
                "50",
                "--run-dir",
                str(other),
                "--quiet",
            ]
        )
        == 0
    )
    cache = sorted((run_dir / "calib").glob("*.trtcache"))[0]
    capsys.readouterr()
    assert _ptq(other, "--calib-cache", str(cache)) == 2
    assert "made for another model" in capsys.readouterr().err
    assert not (other / "model.int8.qdq.onnx").exists()


def test_corrupt_cache_is_a_clear_error(run_dir: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.trtcache"
    bad.write_text("TRT-100300-EntropyCalibration2\ninput: zz\n")
    before = (run_dir / "model.int8.qdq.onnx").read_bytes()
    assert _ptq(run_dir, "--calib-cache", str(bad)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err
    assert (run_dir / "model.int8.qdq.onnx").read_bytes() == before


def test_empty_or_tiny_calibration(run_dir: Path, capsys) -> None:
    assert main(["ptq", "--data", DATA, "--calib-count", "0", "--run-dir", str(run_dir)]) == 2
    assert "at least 1" in capsys.readouterr().err
    assert (
        main(
            [
                "ptq",
                "--data",
                DATA,
                "--calib-count",
                "8",
                "--eval-count",
                "100",
                "--calibrator",
                "max",
                "--run-dir",
                str(run_dir),
                "--quiet",
            ]
        )
        == 0
    )
    assert "only 8 calibration samples" in capsys.readouterr().err


def test_max_drop_keeps_the_most_sensitive_layers_float_until_val_is_within(
    run_dir: Path, capsys
) -> None:
    # Ranges at the 99th percentile clip many activations: a drop of many points that the
    # walk has to win back by leaving nodes in float.
    argv = ["--calibrator", "percentile", "--percentile", "99", "--max-drop", "2"]
    assert _ptq(run_dir, *argv, "--eval-count", "200") == 0
    res = _results(run_dir)
    control = res["accuracy_control"]
    all_int8 = res["fp32"]["val"] - res["per_calibrator"]["percentile"]["val"]
    assert all_int8 > 10
    ranking = [layer["node"] for layer in control["ranking"]]
    gains = [layer["kl_gain"] for layer in control["ranking"]]
    # 20 Conv/Gemm layers and 9 residual Adds.
    assert len(ranking) == 29 and gains == sorted(gains, reverse=True)
    kept = control["float_layers"]
    assert kept and kept == ranking[: len(kept)]
    assert control["reached"] and control["val_drop"] <= 2
    model = onnx.load(str(run_dir / "model.int8.qdq.onnx"))
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    convs = {n.name: n for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    for name in kept:
        if name in convs:
            assert convs[name].input[1] in floats  # its weights stayed float
    assert set(control["latency_ms"]) == {"all_int8", "with_float_layers"}
    assert "--max-drop 2: val drop" in capsys.readouterr().out
