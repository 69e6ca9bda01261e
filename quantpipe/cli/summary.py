"""The end-of-run summary: one row per evaluated artifact, with its data set and size."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from quantpipe.artifacts import BENCH_JSON, FP32, REPORT_MD, deliverable
from quantpipe.cli.run_config import RunConfig
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageOutcome
from quantpipe.stages.bench_result import BenchResult
from quantpipe.stages.evaluate import EvalResult
from quantpipe.text_table import format_table


@runtime_checkable
class WeightBits(Protocol):
    """A result of a stage that compresses weights (btc, ptq) names its artifacts' bits."""

    def artifact_bits(self) -> dict[str, str]: ...


HEADERS = ("artifact", "backend", "accuracy", "weight bits", "size", "FP32 ONNX ÷ size", "eval s")


def print_summary(run: RunDir, cfg: RunConfig, outcomes: list[StageOutcome[Any]]) -> None:
    bits = _bits_per_artifact(outcomes)
    fp32_size = _size(run, FP32)
    rows = []
    evals = [(o, o.result) for o in outcomes if isinstance(o.result, EvalResult)]
    for outcome, result in evals:
        size = _size(run, result.artifact)
        rows.append(
            (
                result.artifact,
                result.backend,
                result.short(),
                bits.get(result.artifact, "32"),
                _kib(size),
                _ratio(fp32_size, size),
                f"{outcome.record.wall_s:.1f}",
            )
        )
    print(f"\nSummary of run {run.path} (model {cfg.model}):")
    print(format_table(HEADERS, rows))
    if evals:
        print(f"Accuracy measured on {evals[0][1].data}.")
    for outcome in outcomes:
        if isinstance(outcome.result, BenchResult):
            print(f"\nEngines of run {run.path}, benchmarked ({run.path / BENCH_JSON}):")
            print(outcome.result.table())
    if (run.path / REPORT_MD).is_file():
        print(f"\nReport: {run.path / REPORT_MD}")


def _bits_per_artifact(outcomes: list[StageOutcome[Any]]) -> dict[str, str]:
    """What each stage that compresses weights says of its artifacts' bits."""
    bits: dict[str, str] = {}
    for o in outcomes:
        if isinstance(o.result, WeightBits):
            bits |= o.result.artifact_bits()
    return bits


def _size(run: RunDir, label: str) -> int | None:
    path = run.artifact(deliverable(label))
    return path.stat().st_size if path.is_file() else None


def _kib(size: int | None) -> str:
    return "-" if size is None else f"{size / 1024:.1f} KiB"


def _ratio(reference: int | None, size: int | None) -> str:
    return "-" if not reference or not size else f"{reference / size:.2f}×"
