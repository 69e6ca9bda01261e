"""`quantpipe zoo` in its quick form: built-in models trained by the zoo and a zoo checkpoint
through export, btc (rule and budget), ptq and eval, in one table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantpipe.cli import main
from tests.conftest import CIFAR_TAR, ZOO_RESNET20

CALIBRATORS = {"entropy", "max", "mse", "percentile"}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zoo")
    argv = ["zoo", "--quick", "--models", "digits-mlp,tabular-mlp-wine", "--out", str(out)]
    if ZOO_RESNET20.is_file() and CIFAR_TAR.is_file():
        argv += ["--checkpoint", "chenyaofo-cifar10-resnet20", str(ZOO_RESNET20)]
        argv += [f"cifar10:{CIFAR_TAR}"]
    assert main([*argv, "--quiet"]) == 0
    return out


def test_every_model_has_a_row_with_measured_figures(zoo: Path) -> None:
    rows = {r["model"]: r for r in json.loads((zoo / "zoo.json").read_text())}
    assert {"digits-mlp", "tabular-mlp-wine"} <= set(rows)
    for row in rows.values():
        for key in ("fp32", "btc_rule", "btc_budget", "uniform8", "int8", "int8_cpu_build"):
            assert 0 <= row[key] <= 100, (row["model"], key)
        assert row["calibrator"] in CALIBRATORS
        assert set(row["calibrator_drops"]) == CALIBRATORS
        assert 4.0 <= row["btc_budget_bits"] <= 4.5 + 1e-9
        assert row["fp32"] == pytest.approx(row["fp32_onnx_eval"], abs=0.5)
    assert rows["tabular-mlp-wine"]["fp32"] > 85  # 45 test rows: a trained model, not chance


def test_the_report_has_the_papers_table_and_names_its_data(zoo: Path) -> None:
    text = (zoo / "report.md").read_text()
    assert "| model | params | FP32 | BTC (rule) | uniform 8-bit |" in text
    assert "Quick form" in text and "Machine:" in text
    assert "tabular-mlp-wine: top-1 on wine (built-in), split test, 45 samples" in text


@pytest.mark.skipif(not ZOO_RESNET20.is_file(), reason="needs ../shared's chenyaofo checkpoint")
def test_a_zoo_checkpoint_runs_without_training_and_keeps_its_accuracy(zoo: Path) -> None:
    rows = {r["model"]: r for r in json.loads((zoo / "zoo.json").read_text())}
    row = rows["chenyaofo-cifar10-resnet20"]
    assert row["weights"] == ZOO_RESNET20.name
    assert row["fp32"] > 75  # JPEG test images, 400 of them (about 81 % on all)
    assert row["fp32"] - row["int8"] < 3
    assert not (zoo / "runs" / "chenyaofo-cifar10-resnet20" / "model.pt").exists()


def test_a_rerun_skips_every_stage(zoo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["zoo", "--quick", "--models", "tabular-mlp-wine", "--out", str(zoo), "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "up to date" in out and "done in" not in out
