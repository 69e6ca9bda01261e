"""A user model file (`file.py:factory`) end to end, and make-like skipping of stages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from quantpipe.cli import main
from quantpipe.models.registry import MODELS

USER_MODEL = """
from torch import nn


def build():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


build.input_shape = (1, 8, 8)
"""


def _results(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())["stages"][name]["results"]


def test_user_model_exports_and_evaluates_like_a_builtin(tmp_path: Path, capsys) -> None:
    model_file = tmp_path / "mynet.py"
    model_file.write_text(USER_MODEL)
    ref = f"{model_file}:build"
    torch.manual_seed(0)
    import importlib.util

    spec = importlib.util.spec_from_file_location("mynet", model_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    torch.save(module.build().state_dict(), tmp_path / "w.pt")
    common = [
        "--model",
        ref,
        "--weights",
        str(tmp_path / "w.pt"),
        "--data",
        "digits",
        "--run-dir",
        str(tmp_path / "run"),
        "--quiet",
    ]
    assert main(["export", *common]) == 0
    parity = _results(tmp_path / "run", "export")["parity"]
    assert parity["max_abs_diff"] <= 1e-4 and parity["top1_agreement"] >= 99.9
    assert main(["eval", *common, "--backend", "onnxruntime-cpu"]) == 0
    assert main(["eval", *common, "--backend", "torch-cpu"]) == 0
    ort_top1 = _results(tmp_path / "run", "eval.fp32.onnxruntime-cpu")["top1"]
    torch_top1 = _results(tmp_path / "run", "eval.pytorch.torch-cpu")["top1"]
    assert ort_top1 == pytest.approx(torch_top1, abs=0.1)
    assert (
        _results(tmp_path / "run", "eval.fp32.onnxruntime-cpu")["samples"] == 719
    )  # 40 % of 1,797


def test_a_user_model_trained_in_the_run_is_exported_with_its_trained_weights(
    tmp_path: Path,
) -> None:
    model_file = tmp_path / "mynet.py"
    model_file.write_text(USER_MODEL)
    run = ["--model", f"{model_file}:build", "--data", "digits", "--run-dir", str(tmp_path / "r")]
    assert main(["train", *run, "--epochs", "8", "--batch-size", "32", "--quiet"]) == 0
    assert main(["export", *run, "--quiet"]) == 0
    assert main(["eval", *run, "--backend", "onnxruntime-cpu", "--quiet"]) == 0
    trained = _results(tmp_path / "r", "train")["val"]["top1"]
    exported = _results(tmp_path / "r", "eval.fp32.onnxruntime-cpu")["top1"]
    # It used to export the untrained random initialisation (about 10 %) without a word.
    assert trained > 60 and exported > 60


def test_same_stage_twice_is_skipped_and_a_parameter_change_reruns(tmp_path: Path, capsys) -> None:
    argv = [
        "train",
        "--model",
        "digits-mlp",
        "--data",
        "digits",
        "--epochs",
        "10",
        "--batch-size",
        "32",
        "--run-dir",
        str(tmp_path / "run"),
        "--quiet",
    ]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "train: done in" in first and "validation: top-1" in first
    weights_before = (tmp_path / "run" / "model.pt").read_bytes()
    assert main(argv) == 0
    assert "train: up to date, skipped" in capsys.readouterr().out
    assert (tmp_path / "run" / "model.pt").read_bytes() == weights_before
    assert main([*argv[:6], "12", *argv[7:]]) == 0  # --epochs 12
    assert "train: done in" in capsys.readouterr().out
    assert _results(tmp_path / "run", "train")["val"]["top1"] > 90.0


def test_training_is_reproducible(tmp_path: Path) -> None:
    """Same seed, same data → bit-identical weights (initialisation included)."""
    weights = []
    for name in ("a", "b"):
        argv = [
            "train",
            "--model",
            "digits-mlp",
            "--data",
            "digits",
            "--epochs",
            "2",
            "--run-dir",
            str(tmp_path / name),
            "--quiet",
        ]
        assert main(argv) == 0
        weights.append((tmp_path / name / "model.pt").read_bytes())
    assert weights[0] == weights[1]  # byte for byte, so the manifest sha256 repeats too


def test_unlabelled_data_is_scored_as_agreement_with_the_fp32_model(tmp_path: Path, capsys) -> None:
    weights = tmp_path / "w.pt"
    torch.manual_seed(0)
    torch.save(MODELS["digits-mlp"].build().state_dict(), weights)
    run = ["--run-dir", str(tmp_path / "run"), "--quiet"]
    assert main(["export", "--model", "digits-mlp", "--weights", str(weights), *run]) == 0
    x = np.random.default_rng(0).integers(0, 256, (64, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "nolabels.npz", x=x)
    data = ["--data", f"npz:{tmp_path / 'nolabels.npz'}", "--split", "all"]
    assert main(["eval", *data, *run]) == 0
    result = _results(tmp_path / "run", "eval.fp32.onnxruntime-cpu")
    assert result["agreement"] == 100.0 and result["samples"] == 64  # the FP32 model itself
    assert (
        main(["eval", *data, "--reference", str(tmp_path / "missing.onnx"), "--force", *run]) == 2
    )
    assert "missing.onnx" in capsys.readouterr().err
