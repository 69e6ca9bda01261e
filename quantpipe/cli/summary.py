"""The end-of-run summary: one row per evaluated artifact, with its data set and size."""

from __future__ import annotations

from typing import Any

from quantpipe.cli.run_config import RunConfig
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageOutcome
from quantpipe.stages.btc import BTC_CONTAINER
from quantpipe.stages.common import FP32_ONNX, TRAINED_WEIGHTS
from quantpipe.text_table import format_table

# The file that is the deliverable of each artifact (what its size means).
ARTIFACT_FILES = {"fp32": FP32_ONNX, "pytorch": TRAINED_WEIGHTS, "btc": BTC_CONTAINER}


def print_summary(run: RunDir, cfg: RunConfig, outcomes: list[StageOutcome]) -> None:
    bits = _bits_per_artifact(outcomes)
    fp32_size = _size(run, "fp32")
    rows = []
    for o in outcomes:
        r = o.record
        if not r.name.startswith("eval."):
            continue
        artifact, backend = r.name.removeprefix("eval.").rsplit(".", 1)
        size = _size(run, artifact)
        rows.append(
            (
                artifact,
                backend,
                _accuracy(r.results),
                bits.get(artifact, "32"),
                _kib(size),
                _ratio(fp32_size, size),
                f"{r.wall_s:.1f}",
            )
        )
    print(f"\nSummary of run {run.path} (model {cfg.model}):")
    headers = (
        "artifact",
        "backend",
        "accuracy",
        "weight bits",
        "size",
        "FP32 ONNX ÷ size",
        "eval s",
    )
    print(format_table(headers, rows))
    data = next(
        (o.record.results.get("data") for o in outcomes if "data" in o.record.results), None
    )
    if data:
        print(f"Accuracy measured on {data}.")


def _bits_per_artifact(outcomes: list[StageOutcome]) -> dict[str, str]:
    bits = {}
    for o in outcomes:
        if o.record.name == "btc":
            bits["btc"] = f"{o.record.results['summary']['b_eff']:.2f} eff."
        if o.record.name.startswith("ptq"):
            source = o.record.name.removeprefix("ptq").lstrip(".")
            for build in ("qdq", "ort"):
                name = f"{source}.int8.{build}" if source else f"int8.{build}"
                bits[name] = f"8{' of BTC' if source else ''}"
    return bits


def _accuracy(results: dict[str, Any]) -> str:
    for key, label in (("top1", "top-1"), ("miou", "mIoU"), ("agreement", "agreement")):
        if key in results:
            return f"{label} {results[key]:.2f} %"
    return "-"


def _size(run: RunDir, artifact: str) -> int | None:
    path = run.artifact(ARTIFACT_FILES.get(artifact, f"model.{artifact}.onnx"))
    return path.stat().st_size if path.is_file() else None


def _kib(size: int | None) -> str:
    return "-" if size is None else f"{size / 1024:.1f} KiB"


def _ratio(reference: int | None, size: int | None) -> str:
    return "-" if not reference or not size else f"{reference / size:.2f}×"
