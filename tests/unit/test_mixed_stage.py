"""The mixed stage on digits-mlp, end to end through the CLI: a mixed-precision Q/DQ model
that passes the ONNX checker and agrees with its fake-quantized graph, packed weights that
decode to it, the report, and bad input refused in one line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from quantpipe.cli import main
from quantpipe.mixed.packed_onnx import restore

DATA = ["--data", "digits"]
FAST = ["--trials", "2", "--sensitivity-count", "64", "--randoms", "2", "--sweep", "3"]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("mixed") / "run"
    where = ["--run-dir", str(run), "--quiet"]
    assert main(["train", "--model", "digits-mlp", *DATA, "--epochs", "8", *where]) == 0
    assert main(["export", "--model", "digits-mlp", *DATA, *where]) == 0
    assert main(["ptq", *DATA, "--calib-count", "128", *where]) == 0
    return run


def _mixed(run: Path, *extra: str) -> int:
    return main(["mixed", *DATA, *FAST, *extra, "--run-dir", str(run), "--quiet", "--force"])


def test_2mp_with_qat_exports_a_checked_model_and_its_packed_weights(quantized: Path) -> None:
    assert _mixed(quantized, "--preset", "2MP-A8", "--compression", "6", "--qat-epochs", "1") == 0
    res = json.loads((quantized / "manifest.json").read_text())["stages"]["mixed"]["results"]
    assert res["chosen"]["compression"] >= 6.0 and len(res["qat_epochs"]) == 1
    model = onnx.load(str(quantized / "model.mp.qdq.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert res["torch_onnx_agreement"] >= 99.5
    assert restore(model, quantized / "model.mp.qpmix").SerializeToString() == (
        model.SerializeToString()
    )
    assert res["packed"]["code_bytes"] - res["packed"]["theoretical_bytes"] < res["layers"]
    assert {c["at"] for c in res["comparisons"]} == {"uniform 2-bit", "uniform 4-bit", "chosen"}
    report = (quantized / "mixed" / "report.md").read_text()
    assert "thesis Table 4.4 layout" in report and "digits" in report
    for name in ("sensitivity.json", "pareto.json", "accuracy_vs_size.png", "pareto.png"):
        assert (quantized / "mixed" / name).stat().st_size > 0


def test_max_drop_returns_a_point_within_the_drop_on_val(quantized: Path) -> None:
    assert _mixed(quantized, "--preset", "4MP-A8", "--max-drop", "2", "--sweep", "0") == 0
    res = json.loads((quantized / "manifest.json").read_text())["stages"]["mixed"]["results"]
    assert res["searched"] and res["budget_bytes"] is None
    chosen = res["chosen"]["accuracy"]["val"]
    assert res["fp32"]["val"] - chosen <= 2.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--widths", "1,8"], "bit width 1 is not an integer in 2..8"),
        (["--activation-bits", "9"], "bit width 9 is not an integer in 2..8"),
        (["--preset", "2MP-A8", "--budget", "100"], "below the all-2-bit size"),
        (["--preset", "5MP-A8"], "use 4MP-A8"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    quantized: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(p.name for p in quantized.iterdir())
    manifest = (quantized / "manifest.json").read_bytes()
    assert _mixed(quantized, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert sorted(p.name for p in quantized.iterdir()) == before
    assert (quantized / "manifest.json").read_bytes() == manifest


def test_mixed_without_ptq_says_to_run_it(tmp_path: Path, capsys) -> None:
    run = tmp_path / "bare"
    where = ["--run-dir", str(run), "--quiet"]
    assert main(["train", "--model", "digits-mlp", *DATA, "--epochs", "1", *where]) == 0
    assert main(["export", "--model", "digits-mlp", *DATA, *where]) == 0
    assert main(["mixed", *DATA, *where]) == 2
    assert "run `quantpipe ptq` first" in capsys.readouterr().err
