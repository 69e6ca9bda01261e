"""Samples without labels, as a deployment engineer often holds them: btc and ptq on an
`.npz` of uint8 images with no `y` score agreement with the FP32 model and say so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from quantpipe.cli import main
from quantpipe.data.registry import open_dataset
from quantpipe.data.splits import stratified_order
from tests.conftest import CIFAR_TAR, RESNET20, needs_shared

pytestmark = needs_shared
IMAGES = 600  # test split 240, val 120, calib 240


def _results(run: Path, stage: str) -> dict:
    return json.loads((run / "manifest.json").read_text())["stages"][stage]["results"]


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """ResNet-20 exported in a run, and 600 JPEG CIFAR-10 images as an npz without labels."""
    tmp = tmp_path_factory.mktemp("unlabelled")
    (pool,) = open_dataset(f"cifar10:{CIFAR_TAR}").pools.values()
    idx = stratified_order(pool.labels, len(pool), seed=1)[:IMAGES]
    np.savez(tmp / "images.npz", x=np.stack(pool.read(idx)).astype(np.uint8))
    run = tmp / "run"
    argv = ["export", "--model", "cifar10-resnet20", "--weights", str(RESNET20)]
    assert main([*argv, "--parity-count", "64", "--run-dir", str(run), "--quiet"]) == 0
    return run, tmp / "images.npz"


def test_btc_target_bits_scores_agreement_with_fp32(unlabelled, capsys) -> None:
    run, images = unlabelled
    argv = ["btc", "--model", "cifar10-resnet20", "--weights", str(RESNET20)]
    data = ["--data", f"npz:{images}", "--target-bits", "4.5", "--calib-count", "240"]
    assert main([*argv, *data, "--run-dir", str(run), "--quiet"]) == 0
    res = _results(run, "btc")
    assert res["truth"] == "the predictions of model.fp32.onnx"
    assert res["accuracy"]["data_test"]["count"] == 240
    # PyTorch FP32 against its own ONNX export: the same arg-max (parity is 2e-5).
    assert res["accuracy"]["fp32"]["test"] >= 99.5
    assert 90.0 <= res["accuracy"]["btc_test"] <= 100.0
    assert 4.4 <= res["summary"]["b_eff"] <= 4.5
    out = capsys.readouterr().out
    assert "agreement with the predictions of model.fp32.onnx" in out
    # --target-bits selects nothing on val and compares with no baseline: neither is measured.
    assert res["accuracy"]["fp32"]["val"] is None and res["accuracy"]["data_val"] is None
    assert res["baselines"] == {} and "baselines: not measured (--baselines)" in out
    (entry,) = json.loads((run / "btc" / "reference-cache.json").read_text())["entries"].values()
    assert entry == {"fp32": {"test": res["accuracy"]["fp32"]["test"]}}
    # Asked for, the baselines are measured and cached next to the cached FP32 score.
    assert main([*argv, *data, "--baselines", "--run-dir", str(run), "--quiet"]) == 0
    again = _results(run, "btc")
    assert set(again["baselines"]) == {"uniform8_per_tensor", "percentile8_per_channel"}
    assert all(90.0 <= b["test_accuracy"] <= 100.0 for b in again["baselines"].values())
    (entry,) = json.loads((run / "btc" / "reference-cache.json").read_text())["entries"].values()
    assert set(entry) == {"fp32", "baselines"}


def test_ptq_auto_scores_agreement_with_fp32(unlabelled, capsys) -> None:
    run, images = unlabelled
    data = ["--data", f"npz:{images}", "--calib-count", "240"]
    assert main(["ptq", *data, "--run-dir", str(run), "--quiet"]) == 0
    res = _results(run, "ptq")
    assert res["truth"] == "the predictions of model.fp32.onnx"
    assert res["fp32"] == {"val": 100.0, "test": 100.0}  # the reference scored against itself
    assert set(res["per_calibrator"]) == {"max", "percentile", "entropy", "mse"}
    assert all(90.0 <= s["test"] <= 100.0 for s in res["per_calibrator"].values())
    assert res["data_test"]["truth"] == res["truth"] and res["data_test"]["count"] == 240
    out = capsys.readouterr().out
    assert "no labels: agreement with the predictions of model.fp32.onnx" in out


def test_without_an_fp32_model_to_agree_with_the_error_says_what_to_do(
    unlabelled, tmp_path: Path, capsys
) -> None:
    run, images = unlabelled
    argv = ["ptq", "--data", f"npz:{images}", "--onnx", str(run / "model.fp32.onnx")]
    missing = tmp_path / "none.onnx"
    code = main([*argv, "--reference", str(missing), "--run-dir", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(missing) in err and "--reference" in err
    assert not (tmp_path / "r" / "model.int8.qdq.onnx").exists()
