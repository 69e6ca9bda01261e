"""The CLI starts without the heavy stack, and ONNX-only commands work without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantpipe.export.metadata import set_metadata
from quantpipe.models.spec import ModelSpec, Preprocessing
from tests.conftest import ROOT

HEAVY = ("torch", "torchvision", "onnxruntime", "matplotlib")
# Installed first on sys.path of every process of a test (probe children included): makes
# torch and torchvision unimportable, as on a host that only serves ONNX models.
NO_TORCH = """
import sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoTorch())
"""


def _imported_modules(*argv: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "quantpipe", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("import time:")]
    return {ln.rsplit("|", 1)[1].strip() for ln in lines[1:]}


def test_help_and_datasets_import_no_heavy_library() -> None:
    for argv in (["--help"], ["datasets"], ["eval", "--help"]):
        modules = _imported_modules(*argv)
        assert "quantpipe.cli.parser" in modules  # the walk saw the CLI itself
        assert not {m for m in modules if m.split(".")[0] in HEAVY}, argv


def _tiny_classifier(path: Path) -> None:
    """A Flatten → Gemm classifier of 1×8×8 inputs, made without torch, with the
    metadata `export` writes."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((64, 10)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w"], ["output"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    pre = Preprocessing(1, (8, 8), (0.5,), (0.25,))
    set_metadata(model, ModelSpec("tiny", object, pre, "classification", 10, "optional", ""))
    onnx.save(model, str(path))


def _without_torch(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NO_TORCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-m", "quantpipe", *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )


def test_onnx_evaluation_and_backends_work_without_torch(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    _tiny_classifier(run / "model.fp32.onnx")
    images = np.random.default_rng(1).integers(0, 256, (50, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "labelled.npz", x=images, y=np.arange(50) % 10)
    np.savez(tmp_path / "unlabelled.npz", x=images)
    proof = _without_torch(tmp_path, "models")
    assert proof.returncode == 2 and "needs torch, which is not installed" in proof.stderr
    for data in ("labelled", "unlabelled"):
        proc = _without_torch(
            tmp_path, "eval", "--data", f"npz:{tmp_path / data}.npz", "--split", "all",
            "--run-dir", str(run), "--quiet", "--force",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        result = json.loads((run / "eval" / "fp32.onnxruntime-cpu.json").read_text())
        assert result["samples"] == 50
        if data == "unlabelled":  # the model agrees with itself
            assert (result["metric"], result["agreement"]) == ("agreement", 100.0)
        else:
            assert result["metric"] == "top1" and 0.0 <= result["top1"] <= 100.0
    proc = _without_torch(tmp_path, "backends")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[2:]}
    assert "yes" in rows["onnxruntime-cpu"].split()
    assert "torch does not import (No module named 'torch')" in rows["torch-cpu"]
