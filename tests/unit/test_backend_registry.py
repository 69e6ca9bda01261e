"""The backend registry: names, probes that report instead of crashing, and a new backend
added with one module and one entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from quantpipe.cli import main
from quantpipe.engines import registry
from quantpipe.engines.backend import Availability, Backend
from quantpipe.engines.probe import probe_isolated
from quantpipe.errors import QuantpipeError
from quantpipe.stages.evaluate import EvalConfig
from tests.unit.reference_backend import ONNX_REFERENCE
from tests.unit.test_lazy_cli import _tiny_classifier


def test_every_backend_says_what_it_runs_and_whether_it_works_here() -> None:
    backends = registry.all_backends()
    names = [b.name for b in backends]
    assert names[:3] == ["onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt"]
    assert {"torch-cpu", "torch-cuda", "tensorrt"} <= set(names)
    assert {b.runs for b in backends} == {"onnx", "torch", "engine"}
    for b in backends:
        availability = b.probe()
        assert isinstance(availability, Availability) and availability.detail
    assert registry.get_backend("onnxruntime-cpu").probe().available


def test_unknown_backend_names_the_close_ones() -> None:
    with pytest.raises(QuantpipeError, match="did you mean onnxruntime-cpu"):
        EvalConfig(backend="onnxruntime-cpus")


def _backend(name: str, availability: Availability) -> Backend:
    return Backend(name, "", "onnx", lambda: availability, ONNX_REFERENCE.factory)


def test_an_unavailable_backend_refuses_to_make_a_runner_and_says_why() -> None:
    missing = _backend("x", Availability(False, "no X here"))
    with pytest.raises(QuantpipeError, match="backend x is not available here: no X here"):
        missing.runner(Path("m.onnx"))


def test_a_probe_whose_process_dies_is_reported_not_raised() -> None:
    # The child process does not know this backend, so its probe exits with a traceback.
    (result,) = probe_isolated([_backend("no-such-backend", Availability(True, ""))])
    assert not result.available and "probing it crashed the process" in result.detail


def test_a_new_backend_is_one_module_and_one_registry_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry._BACKENDS, ONNX_REFERENCE.name, ONNX_REFERENCE)
    run = tmp_path / "run"
    run.mkdir()
    _tiny_classifier(run / "model.fp32.onnx")
    x = np.random.default_rng(1).integers(0, 256, (40, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 10)
    scores = {}
    for backend in ("onnx-reference", "onnxruntime-cpu"):
        argv = ["eval", "--data", f"npz:{tmp_path / 'd.npz'}", "--split", "all"]
        assert main([*argv, "--backend", backend, "--run-dir", str(run), "--quiet"]) == 0
        scores[backend] = json.loads((run / "eval" / f"fp32.{backend}.json").read_text())
    assert scores["onnx-reference"]["runner"] == "onnx-reference"
    assert scores["onnx-reference"]["top1"] == scores["onnxruntime-cpu"]["top1"]
