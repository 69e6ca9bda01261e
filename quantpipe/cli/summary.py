"""The end-of-run summary: one row per evaluated artifact, with its data set and size."""

from __future__ import annotations

from quantpipe.cli.run_config import RunConfig
from quantpipe.cli.table import format_table
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageOutcome
from quantpipe.stages.common import FP32_ONNX, TRAINED_WEIGHTS

ARTIFACT_FILES = {"fp32": FP32_ONNX, "pytorch": TRAINED_WEIGHTS}


def print_summary(run: RunDir, cfg: RunConfig, outcomes: list[StageOutcome]) -> None:
    rows = []
    for o in outcomes:
        r = o.record
        if not r.name.startswith("eval."):
            continue
        artifact, backend = r.name.removeprefix("eval.").split(".", 1)
        rows.append(
            (artifact, backend, _accuracy(r.results), _size(run, artifact), f"{r.wall_s:.1f}")
        )
    print(f"\nSummary of run {run.path} (model {cfg.model}):")
    print(format_table(("artifact", "backend", "accuracy", "size", "eval s"), rows))
    data = next(
        (o.record.results.get("data") for o in outcomes if "data" in o.record.results), None
    )
    if data:
        print(f"Accuracy measured on {data}.")


def _accuracy(results: dict) -> str:
    for key, label in (("top1", "top-1"), ("miou", "mIoU"), ("agreement", "agreement")):
        if key in results:
            return f"{label} {results[key]:.2f} %"
    return "-"


def _size(run: RunDir, artifact: str) -> str:
    path = run.artifact(ARTIFACT_FILES.get(artifact, f"model.{artifact}.onnx"))
    return f"{path.stat().st_size / 1024:.1f} KiB" if path.is_file() else "-"
