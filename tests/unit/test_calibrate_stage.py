"""`calibrate` is a stage like the others: its record lists the tables it wrote or reused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from quantpipe.cli import main
from tests.unit.test_lazy_cli import _tiny_classifier


def _run_with_data(tmp_path: Path, images: int) -> tuple[Path, str]:
    """A run holding a tiny FP32 classifier, and a --data spec of ``images`` 8x8 images."""
    run = tmp_path / "run"
    run.mkdir()
    _tiny_classifier(run / "model.fp32.onnx")
    x = np.random.default_rng(2).integers(0, 256, (images, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(images) % 10)
    return run, f"npz:{tmp_path / 'd.npz'}"


def test_calibrate_records_its_tables_and_skips_when_up_to_date(tmp_path: Path, capsys) -> None:
    run, data = _run_with_data(tmp_path, 200)
    argv = ["calibrate", "--data", data, "--calib-count", "64"]
    common = ["--run-dir", str(run), "--quiet"]
    assert main([*argv, "--calibrators", "max,entropy", *common]) == 0
    record = json.loads((run / "manifest.json").read_text())["stages"]["calibrate"]
    assert record["stage"] == "calibrate"
    tables = record["results"]["tables"]
    assert set(tables) == {"max", "entropy"} and not any(t["reused"] for t in tables.values())
    outputs = {o["path"] for o in record["outputs"]}
    assert outputs == {
        f"calib/{t['key']}.{ext}" for t in tables.values() for ext in ("json", "trtcache")
    }
    assert all((run / p).is_file() for p in outputs)
    assert main([*argv, "--calibrators", "max,entropy", *common]) == 0
    assert "calibrate: up to date, skipped" in capsys.readouterr().out
    assert main([*argv, "--calibrators", "max", *common]) == 0  # other parameters: runs again
    out = capsys.readouterr().out
    assert "calibrate: done in" in out and "max: reused cached table" in out


def test_histogram_stride_is_part_of_the_table_key(tmp_path: Path, capsys) -> None:
    run, data = _run_with_data(tmp_path, 100)
    argv = ["calibrate", "--data", data, "--calib-count", "32"]
    argv += ["--calibrators", "entropy", "--run-dir", str(run), "--quiet"]

    def provenance() -> dict[str, object]:
        record = json.loads((run / "manifest.json").read_text())["stages"]["calibrate"]
        key = record["results"]["tables"]["entropy"]["key"]
        return json.loads((run / "calib" / f"{key}.json").read_text())["provenance"]

    assert main(argv) == 0
    assert provenance()["histogram_stride"] == 2
    assert main([*argv, "--histogram-stride", "1"]) == 0
    assert "entropy: computed" in capsys.readouterr().out
    assert "histogram_stride" not in provenance()  # every value binned: the key as before
    assert main([*argv, "--histogram-stride", "0"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--histogram-stride 0" in err[0]
