"""QAT on a CUDA device against the same QAT on the CPU; skipped where CUDA is absent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from quantpipe.cli import main

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")


@needs_cuda
def test_qat_trains_on_the_gpu_and_lands_where_the_cpu_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "gpu"
    data = ["--data", "digits", "--run-dir", str(run), "--quiet"]
    assert main(["train", "--model", "digits-mlp", *data, "--epochs", "5"]) == 0
    assert main(["export", "--model", "digits-mlp", *data]) == 0
    assert main(["ptq", *data, "--calibrator", "entropy", "--calib-count", "128"]) == 0
    cpu = tmp_path / "cpu"
    shutil.copytree(run, cpu)
    qat = ["qat", "--data", "digits", "--epochs", "2", "--batch-size", "64", "--quiet"]
    assert main([*qat, "--run-dir", str(run)]) == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([*qat, "--run-dir", str(cpu)]) == 0
    gpu_res, cpu_res = (
        json.loads((r / "manifest.json").read_text())["stages"]["qat"]["results"]
        for r in (run, cpu)
    )
    assert gpu_res["device"].startswith("cuda") and cpu_res["device"] == "cpu"
    assert gpu_res["torch_onnx_agreement"] >= 99.5
    # Same data order and start; only float summation differs (cuDNN/TF32 against MKL),
    # so the two runs end within a few of the 719 test images of each other.
    assert abs(gpu_res["qat"]["test"] - cpu_res["qat"]["test"]) <= 1.0
