"""QAT data-parallel under torchrun (2 processes, gloo, CPU) against one process with the
same global batch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from quantpipe.cli import main

QAT = ["qat", "--data", "digits", "--batch-size", "64", "--threads", "1", "--quiet", "--force"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """digits-mlp trained, exported and quantized, twice: one run per way of training."""
    single = tmp_path_factory.mktemp("ddp") / "single"
    run = ["--run-dir", str(single), "--quiet"]
    assert main(["train", "--model", "digits-mlp", "--data", "digits", "--epochs", "5", *run]) == 0
    assert main(["export", "--model", "digits-mlp", "--data", "digits", *run]) == 0
    assert main(["ptq", "--data", "digits", "--calib-count", "128", *run]) == 0
    parallel = single.parent / "parallel"
    shutil.copytree(single, parallel)
    return single, parallel


def _train(runs: tuple[Path, Path], *extra: str) -> tuple[dict, dict]:
    single, parallel = runs
    for argv, run in (
        ([sys.executable, "-m", "quantpipe"], single),
        ([*TORCHRUN, "-m", "quantpipe"], parallel),
    ):
        done = subprocess.run(
            [*argv, *QAT, *extra, "--run-dir", str(run)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    return _checkpoint(single), _checkpoint(parallel)


def test_one_step_on_two_processes_is_one_step_on_one(runs: tuple[Path, Path]) -> None:
    # One global batch of 64: each process takes 32 and their gradients are averaged. Only
    # the order of float additions differs from one process summing 64, so the weights after
    # the step agree to float32 rounding (~1e-7 relative) and no rounding step can flip yet.
    a, b = _train(runs, "--epochs", "1", "--train-count", "64")
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=1e-5, atol=1e-7)


def test_two_epochs_on_two_processes_match_one(runs: tuple[Path, Path]) -> None:
    # Over many steps a weight that lands within float rounding of a quantization step's
    # midpoint can round the other way in one of the two runs, and the runs drift apart by a
    # fraction of a step; so here the bound is on what is delivered: INT8 weights equal but
    # for a few codes off by one (measured here: none differ after 2 epochs; 1.4 % did while
    # the processes' range parameters were ordered by hash seed and DDP averaged the wrong
    # ones together), and the same accuracy within a few images.
    _train(runs, "--epochs", "2")
    parallel = runs[1]
    codes = [_int8_weights(run / "model.qat.qdq.onnx") for run in runs]
    diff = np.concatenate(
        [np.abs(x.astype(int) - y.astype(int)).ravel() for x, y in zip(*codes, strict=True)]
    )
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    results = [
        json.loads((r / "manifest.json").read_text())["stages"]["qat"]["results"] for r in runs
    ]
    assert results[1]["processes"] == 2
    assert results[1]["epochs"][0]["loss"] == pytest.approx(
        results[0]["epochs"][0]["loss"], rel=1e-3
    )
    assert abs(results[1]["qat"]["test"] - results[0]["qat"]["test"]) <= 0.5  # ≤ 3 of 719 images
    assert not list(parallel.glob("**/.*.tmp"))


def _checkpoint(run: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(run / "qat" / "qat.checkpoint.pt", map_location="cpu", weights_only=True)
    return payload["trainer"]["module"]


def _int8_weights(path: Path) -> list[np.ndarray]:
    model = onnx.load(str(path))
    arrays = (onnx.numpy_helper.to_array(i) for i in model.graph.initializer)
    return [a for a in arrays if a.dtype == np.int8 and a.ndim >= 2]
