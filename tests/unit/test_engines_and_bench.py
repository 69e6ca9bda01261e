"""engines and bench on a tiny model: what they write, and bad input refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from quantpipe.cli import main
from tests.unit.test_lazy_cli import _tiny_classifier

QUICK = ["--duration", "0.02", "--iterations", "3", "--rounds", "1"]


@pytest.fixture
def built(tmp_path: Path) -> Path:
    """A run with a float model, its INT8 models and engines at batch profile 1..8."""
    run = tmp_path / "run"
    run.mkdir()
    _tiny_classifier(run / "model.fp32.onnx")
    x = np.random.default_rng(3).integers(0, 256, (300, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(300) % 10)
    assert main(["ptq", *_data(run), "--calib-count", "64", *_common(run)]) == 0
    argv = ["engines", "--precisions", "fp32,int8", "--batch-sizes", "1,8"]
    assert main(argv + _common(run)) == 0
    return run


def _data(run: Path) -> list[str]:
    return ["--data", f"npz:{run.parent / 'd.npz'}"]


def _common(run: Path) -> list[str]:
    return ["--run-dir", str(run), "--quiet"]


def _bench(run: Path, *extra: str) -> int:
    return main(["bench", *_data(run), *QUICK, *extra, *_common(run)])


def test_engines_write_metadata_and_bench_times_them(built: Path, capsys) -> None:
    names = sorted(p.name for p in (built / "engines").glob("*.json"))
    assert names == ["fp32.onnxruntime-cpu.fp32.json", "fp32.onnxruntime-cpu.int8.json"]
    meta = json.loads((built / "engines" / names[1]).read_text())
    assert meta["source"] == "model.int8.ort.onnx" and meta["profile"] == {
        "min": 1,
        "opt": 8,
        "max": 8,
    }
    assert _bench(built, "--batch-sizes", "1,8") == 0
    bench = json.loads((built / "bench" / "bench.json").read_text())
    assert [e["name"] for e in bench["engines"]] == [
        "fp32.onnxruntime-cpu.fp32.onnx",
        "fp32.onnxruntime-cpu.int8.onnx",
    ]
    fp32, int8 = bench["engines"]
    for e in (fp32, int8):
        assert [b["batch"] for b in e["batches"]] == [1, 8]
        for b in e["batches"]:
            lat = b["latency_ms"]
            assert b["iterations"] >= 3 and lat["min"] <= lat["median"] <= lat["p99"] <= lat["max"]
            assert b["samples_per_s"] == pytest.approx(b["batch"] * b["queries_per_s"])
    assert all(b["speedup_vs_fp32"] == 1.0 for b in fp32["batches"])
    assert int8["compression_vs_fp32"] > 1.0 and int8["weight_bits"] == 8
    # Accuracy through the bench's runner equals eval's of the same file on the same split.
    argv = ["eval", *_data(built), "--onnx", str(built / "engines" / int8["name"])]
    assert main(argv + _common(built)) == 0
    evaluated = json.loads(
        (built / "eval" / "fp32.onnxruntime-cpu.int8.onnxruntime-cpu.json").read_text()
    )
    assert int8["accuracy"]["top1"] == evaluated["top1"]
    assert "fp32.onnxruntime-cpu.int8.onnx" in capsys.readouterr().out


def _fails(capsys, code: int, match: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert match in err, err


def test_a_batch_size_outside_the_profile_is_refused(built: Path, capsys) -> None:
    _fails(capsys, _bench(built, "--batch-sizes", "1,32"), "batch size 32 is outside the profile")
    assert not (built / "bench" / "bench.json").exists()


def test_a_corrupted_engine_is_refused(built: Path, capsys) -> None:
    engine = built / "engines" / "fp32.onnxruntime-cpu.int8.onnx"
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    _fails(capsys, _bench(built), "does not match its metadata")


def test_an_engine_built_elsewhere_is_refused(built: Path, capsys) -> None:
    meta_file = built / "engines" / "fp32.onnxruntime-cpu.fp32.json"
    meta = json.loads(meta_file.read_text())
    meta |= {"runtime": "tensorrt", "runtime_version": "10.0.1"}
    meta_file.write_text(json.dumps(meta))
    _fails(capsys, _bench(built), "was built by tensorrt 10.0.1")


def test_a_missing_engine_is_refused(built: Path, capsys) -> None:
    (built / "engines" / "fp32.onnxruntime-cpu.int8.onnx").unlink()
    _fails(capsys, _bench(built), "input not found")


def test_bench_without_engines_says_what_to_run(tmp_path: Path, capsys) -> None:
    run = tmp_path / "empty"
    run.mkdir()
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8), np.uint8))
    _fails(capsys, _bench(run), "run `quantpipe engines` first")


def test_engines_for_a_backend_that_cannot_build_here_is_refused(built: Path, capsys) -> None:
    _fails(
        capsys, main(["engines", "--backends", "tensorrt", "--force", *_common(built)]), "tensorrt"
    )


def test_the_tensorrt_provider_gets_caches_and_the_engines_profile(built: Path) -> None:
    from quantpipe.engines.backend import RunnerOptions
    from quantpipe.engines.registry import get_backend

    engine = built / "engines" / "fp32.onnxruntime-cpu.fp32.onnx"
    backend = get_backend("onnxruntime-tensorrt")
    # The factory only configures the session; making one needs a GPU (skipped here).
    runner = backend.factory(engine, RunnerOptions())
    options = dict(runner.config.provider_options)  # type: ignore[attr-defined]
    assert options["trt_engine_cache_enable"] == options["trt_timing_cache_enable"] == "True"
    assert options["trt_profile_min_shapes"] == "input:1x1x8x8"
    assert options["trt_profile_max_shapes"] == "input:8x1x8x8"
