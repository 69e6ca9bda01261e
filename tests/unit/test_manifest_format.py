"""Format 1 manifests (before the Stage contract) are read, and their results come back typed."""

from __future__ import annotations

import json
from pathlib import Path

from quantpipe.pipeline.manifest import FORMAT_VERSION, Manifest
from quantpipe.stages.evaluate import EvalResult

V1_EVAL = {
    "name": "eval.int8.qdq.onnxruntime-cpu",
    "inputs": [],
    "params": {"backend": "onnxruntime-cpu"},
    "outputs": [],
    "results": {
        "top1": 91.41,
        "top5": 99.88,
        "samples": 10000,
        "data": "fashion-mnist (/usr/share/datasets/fashion-mnist), split test, 10,000 samples",
        "runner": "onnxruntime-cpu",
        "provenance": {
            "dataset": "fashion-mnist",
            "path": "/usr/share/datasets/fashion-mnist",
            "split": "test",
            "pool": "test",
            "count": 10000,
            "seed": 0,
            "preprocessing": {"channels": 1, "size": [28, 28], "mean": [0.286], "std": [0.353]},
        },
    },
    "wall_s": 1.9,
    "versions": {},
    "finished_at": "2026-11-22T23:00:00+00:00",
}


def test_a_format_1_manifest_is_upgraded_on_reading(tmp_path: Path) -> None:
    ptq = {**V1_EVAL, "name": "ptq.btc", "results": {"calibrator": "mse"}}
    doc = {"format": 1, "run": "demo", "stages": {r["name"]: r for r in (V1_EVAL, ptq)}}
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    manifest = Manifest.load(tmp_path)
    record = manifest.stages["eval.int8.qdq.onnxruntime-cpu"]
    assert (record.stage, manifest.stages["ptq.btc"].stage) == ("eval", "ptq")
    result = EvalResult.from_json(record.results)
    named = (result.artifact, result.backend, result.metric)
    assert named == ("int8.qdq", "onnxruntime-cpu", "top1")
    assert result.short() == "top-1 91.41 %" and result.truth == "labels"
    assert result.provenance is not None and result.provenance.count == 10_000
    manifest.record(record)  # writing it again writes the current format
    assert json.loads((tmp_path / "manifest.json").read_text())["format"] == FORMAT_VERSION == 2
