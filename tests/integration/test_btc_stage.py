"""The btc stage on the shared ResNet-20: container round trip, ONNX parity, report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from quantpipe.btc.container import read_container
from quantpipe.cli import main
from quantpipe.models.registry import MODELS, build_model
from tests.conftest import CIFAR_TAR, RESNET20, needs_shared

pytestmark = needs_shared
COUNT = 500


@pytest.fixture(scope="module")
def btc_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("btc") / "run"
    argv = [
        "btc",
        "--model",
        "cifar10-resnet20",
        "--weights",
        str(RESNET20),
        "--data",
        f"cifar10:{CIFAR_TAR}",
        "--eval-count",
        str(COUNT),
        "--run-dir",
        str(run_dir),
    ]
    assert main(argv) == 0
    return run_dir


def _results(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())["stages"][stage]["results"]


def test_paper_rule_accounting(btc_run: Path) -> None:
    s = _results(btc_run, "btc")["summary"]
    assert s["policy"] == {
        "policy": "sigma",
        "tau": 0.05,
        "block_size": 64,
        "low_bits": 4,
        "high_bits": 8,
        "clip_grid": [],
    }
    assert s["b_eff"] == pytest.approx(s["b_avg"] + 33 / 64, abs=0.02)  # partial blocks add a bit
    assert 4.0 < s["b_avg"] < 8.0


def test_container_restores_the_evaluated_model_and_onnx_agrees(btc_run: Path, capsys) -> None:
    state, meta, accounting = read_container(btc_run / "model.btc")
    assert meta["model"] == "cifar10-resnet20"
    assert accounting.file_bytes == (btc_run / "model.btc").stat().st_size
    net = MODELS["cifar10-resnet20"].build()
    net.load_state_dict(
        {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, strict=False
    )
    reference = build_model(MODELS["cifar10-resnet20"], str(RESNET20))
    w, w_ref = net.layer1[0].conv1.weight, reference.layer1[0].conv1.weight
    assert not torch.equal(w, w_ref) and torch.allclose(w, w_ref, atol=0.05)
    argv = [
        "eval",
        "--onnx",
        str(btc_run / "model.btc.onnx"),
        "--data",
        f"cifar10:{CIFAR_TAR}",
        "--count",
        str(COUNT),
        "--run-dir",
        str(btc_run),
        "--quiet",
    ]
    assert main(argv) == 0
    ort_top1 = _results(btc_run, "eval.btc.onnxruntime-cpu")["top1"]
    # btc measures the very ONNX file it writes, in ONNX Runtime: the same number as eval's.
    assert ort_top1 == pytest.approx(_results(btc_run, "btc")["accuracy"]["btc_test"], abs=1e-9)


def test_fp32_scores_and_baselines_come_from_the_run_cache(btc_run: Path) -> None:
    cache = btc_run / "btc" / "reference-cache.json"
    payload = json.loads(cache.read_text())
    (entry,) = payload["entries"].values()
    first = _results(btc_run, "btc")
    assert entry["fp32"]["test"] == first["accuracy"]["fp32"]["test"]
    # A planted value proves the second run reads the cache instead of measuring again.
    entry["fp32"]["test"] = 12.5
    entry["baselines"]["uniform8_per_tensor"]["test_accuracy"] = 7.5
    cache.write_text(json.dumps(payload))
    argv = ["btc", "--model", "cifar10-resnet20", "--weights", str(RESNET20), "--data",
            f"cifar10:{CIFAR_TAR}", "--eval-count", str(COUNT), "--run-dir", str(btc_run),
            "--block-size", "128", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    second = _results(btc_run, "btc")
    assert second["accuracy"]["fp32"]["test"] == 12.5
    assert second["baselines"]["uniform8_per_tensor"]["test_accuracy"] == 7.5
    # A damaged cache is measured again and rewritten, never an error.
    cache.write_text("{not json")
    assert main([*argv[:-3], "--block-size", "32", "--quiet"]) == 0
    third = _results(btc_run, "btc")
    assert third["accuracy"]["fp32"]["test"] == first["accuracy"]["fp32"]["test"]
    assert json.loads(cache.read_text())["format"] == 2


def test_max_drop_selects_on_val_and_reports_the_fp32_val_score(tmp_path: Path) -> None:
    argv = ["btc", "--model", "cifar10-resnet20", "--weights", str(RESNET20), "--data",
            f"cifar10:{CIFAR_TAR}", "--eval-count", "300", "--calib-count", "256",
            "--retune-steps", "15", "--max-drop", "3", "--run-dir", str(tmp_path),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    res = _results(tmp_path, "btc")
    fp32_val = res["accuracy"]["fp32"]["val"]  # measured: this mode selects on val
    assert 50.0 < fp32_val <= 100.0 and res["accuracy"]["data_val"]["split"] == "val"
    chosen = res["candidates"][-1]  # the ladder stops at its first admissible rung
    assert chosen["val_drop"] == pytest.approx(fp32_val - chosen["val_accuracy"])
    assert chosen["val_drop"] <= 3.0 and chosen["b_eff"] == res["summary"]["b_eff"]
    assert res["baselines"] == {}  # a budgeted mode: not asked for
