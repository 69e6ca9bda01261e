"""The qat stage on digits-mlp: the same graph as ptq's, agreement with the training graph,
resuming, and bad input refused in one line."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import onnx
import pytest

from quantpipe.cli import main

QAT = ["--epochs", "2", "--batch-size", "64", "--quiet"]


def _run(tmp: Path, name: str = "run") -> list[str]:
    return ["--run-dir", str(tmp / name)]


@pytest.fixture
def quantized(tmp_path: Path) -> Path:
    """digits-mlp trained, exported and quantized with the entropy calibrator."""
    run = _run(tmp_path)
    data = ["--data", "digits"]
    assert main(["train", "--model", "digits-mlp", *data, "--epochs", "8", *run, "--quiet"]) == 0
    assert main(["export", "--model", "digits-mlp", *data, *run, "--quiet"]) == 0
    argv = ["ptq", *data, "--calibrator", "entropy", "--calib-count", "128", *run, "--quiet"]
    assert main(argv) == 0
    return tmp_path / "run"


def _results(run: Path, name: str = "qat") -> dict:
    return json.loads((run / "manifest.json").read_text())["stages"][name]["results"]


def test_qat_exports_the_graph_ptq_exported_and_agrees_with_its_training_graph(
    quantized: Path,
) -> None:
    assert main(["qat", "--data", "digits", *QAT, "--run-dir", str(quantized)]) == 0
    res = _results(quantized)
    assert [e["epoch"] for e in res["epochs"]] == [1, 2] and res["resumed_from_epoch"] == 0
    qat = onnx.load(str(quantized / "model.qat.qdq.onnx"))
    ptq = onnx.load(str(quantized / "model.int8.qdq.onnx"))
    onnx.checker.check_model(qat, full_check=True)
    assert [n.op_type for n in qat.graph.node] == [n.op_type for n in ptq.graph.node]
    assert Counter(n.op_type for n in qat.graph.node)["QuantizeLinear"] > 0
    assert res["torch_onnx_agreement"] >= 99.5
    assert (quantized / "model.qat.ort.onnx").is_file()
    assert res["fp32"]["test"] > 50 and res["qat"]["test"] > 50  # it still classifies digits


def test_resume_continues_from_the_checkpoint_and_refuses_another_models(
    quantized: Path, tmp_path: Path, capsys
) -> None:
    assert main(["qat", "--data", "digits", *QAT, "--run-dir", str(quantized)]) == 0
    argv = ["qat", "--data", "digits", *QAT, "--resume", "--force", "--run-dir", str(quantized)]
    assert main(argv) == 0
    res = _results(quantized)
    assert res["resumed_from_epoch"] == 2 and [e["epoch"] for e in res["epochs"]] == [1, 2]
    # Another model's run with this checkpoint copied in: refused, nothing written.
    other = tmp_path / "other"
    shutil.copytree(quantized, other)
    data = ["--data", "digits", "--run-dir", str(other), "--quiet"]
    assert main(["train", "--model", "digits-mlp", *data, "--epochs", "3", "--force"]) == 0
    assert main(["export", "--model", "digits-mlp", *data, "--force"]) == 0
    assert main(["ptq", *data, "--calibrator", "entropy", "--calib-count", "128"]) == 0
    before = (other / "model.qat.qdq.onnx").read_bytes()
    capsys.readouterr()
    assert main(["qat", *data, *QAT[:-1], "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "belongs to another model" in err
    assert (other / "model.qat.qdq.onnx").read_bytes() == before


def test_qat_without_ptq_or_a_train_split_says_what_to_do(tmp_path: Path, capsys) -> None:
    run = _run(tmp_path)
    assert (
        main(
            ["train", "--model", "digits-mlp", "--data", "digits", "--epochs", "1", *run, "--quiet"]
        )
        == 0
    )
    assert main(["export", "--model", "digits-mlp", "--data", "digits", *run, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["qat", "--data", "digits", *QAT, *run]) == 2
    assert "run `quantpipe ptq` first" in capsys.readouterr().err
    # Image folders with val/ and test/ only: no train split to fine-tune on.
    import numpy as np
    from PIL import Image

    for pool in ("val", "test"):
        for cls in ("a", "b"):
            folder = tmp_path / "imgs" / pool / cls
            folder.mkdir(parents=True)
            for k in range(3):
                Image.fromarray(np.full((8, 8), 40 * k, np.uint8)).save(folder / f"{k}.png")
    assert main(["ptq", "--data", "digits", "--calib-count", "64", *run, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["qat", "--data", f"imagefolder:{tmp_path / 'imgs'}", *QAT, *run]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "QAT needs a train split" in err


def test_an_epoch_that_loses_on_val_is_not_delivered(quantized: Path) -> None:
    # At learning rate 0.9 (momentum 0.9) every epoch wrecks the weights: with --keep best
    # (the default) the starting point, ptq's weights and ranges, is what gets exported.
    argv = ["qat", "--data", "digits", *QAT, "--lr", "0.9", "--run-dir", str(quantized)]
    assert main(argv) == 0
    res = _results(quantized)
    assert res["kept_epoch"] == 0 and max(e["val"] for e in res["epochs"]) < res["ptq"]["val"]
    assert res["qat"] == res["ptq"]
    assert main([*argv, "--keep", "last", "--force"]) == 0
    res = _results(quantized)
    assert res["kept_epoch"] == 2 and res["qat"]["val"] < res["ptq"]["val"]


def test_a_training_split_too_big_for_memory_is_streamed_to_the_same_model(
    quantized: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches read from the data set one at a time train exactly what the in-memory split
    trains: same shuffled order, same preprocessing, bit-identical weights."""
    from quantpipe.qat.train import TrainingSamples

    streamed = tmp_path / "streamed"
    shutil.copytree(quantized, streamed)
    assert main(["qat", "--data", "digits", *QAT, "--run-dir", str(quantized)]) == 0
    monkeypatch.setattr(TrainingSamples, "IN_MEMORY_BYTES", 0)
    read = []
    take = TrainingSamples.batch
    monkeypatch.setattr(
        TrainingSamples, "batch", lambda self, p: read.append(self.arrays is None) or take(self, p)
    )
    assert main(["qat", "--data", "digits", *QAT, "--run-dir", str(streamed)]) == 0
    assert read and all(read)  # every batch was read from the data set
    name = "model.qat.qdq.onnx"
    assert (streamed / name).read_bytes() == (quantized / name).read_bytes()
