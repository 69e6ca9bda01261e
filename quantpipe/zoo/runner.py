"""Running one zoo entry: its stages in its own run directory, through the stage runner, so
that a rerun skips what is up to date and every figure has its manifest record.

Two run directories per model, because a run holds one BTC artifact: `<model>` (train,
export, btc by the paper's rule, ptq, eval) and `<model>-btc4.5` (btc at 4.5 effective
bits, from the same weights).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from quantpipe.artifacts import FP32_ONNX, TRAINED_WEIGHTS
from quantpipe.cli.output import report
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import R, RunOptions, Stage, run_stage
from quantpipe.stages.btc import BtcConfig, BtcStage
from quantpipe.stages.btc_modes import BtcMode, SigmaRuleMode, TargetBitsMode
from quantpipe.stages.btc_result import BtcResult
from quantpipe.stages.common import DataRef, ModelRef
from quantpipe.stages.evaluate import EvalConfig, EvalResult, EvalStage
from quantpipe.stages.export import ExportStage
from quantpipe.stages.ptq import PtqConfig, PtqResult, PtqStage
from quantpipe.stages.train import TrainStage
from quantpipe.stages.training import TrainConfig
from quantpipe.zoo.entries import ZooCounts, ZooEntry

BUDGET_BITS = 4.5


@dataclass(frozen=True)
class ZooRow:
    """What the zoo measured on one model (accuracies in % of the headline metric on the
    test split; `metric` and `data` say which)."""

    model: str
    weights: str
    metric: str
    data: str
    parameters: int
    fp32: float
    btc_rule: float
    btc_rule_bits: float
    btc_rule_rmse: float
    btc_budget: float
    btc_budget_bits: float
    uniform8: float
    int8: float
    int8_cpu_build: float
    calibrator: str
    calibrator_drops: dict[str, float]
    fp32_onnx_eval: float
    seconds: float


def run_entry(entry: ZooEntry, root: Path, counts: ZooCounts, options: RunOptions) -> ZooRow:
    """Every stage of `entry` under `root/runs/`; returns its row of the table."""
    start = time.perf_counter()
    data = DataRef(entry.data)
    with RunDir.open(root / "runs" / entry.run_name) as run:
        model = ModelRef(entry.model, entry.weights)
        if entry.weights is None:
            _stage(run, TrainStage(model, data, TrainConfig(epochs=counts.epochs)), options)
        _stage(run, ExportStage(model, data), options)
        rule = _stage(run, _btc(model, data, counts, SigmaRuleMode()), options)
        ptq = _stage(run, PtqStage(run.artifact(FP32_ONNX), data, _ptq(counts)), options)
        fp32_eval = _stage(run, _eval(run, model, data, counts), options)
        weights = entry.weights or str(run.artifact(TRAINED_WEIGHTS))
    with RunDir.open(root / "runs" / f"{entry.run_name}-btc{BUDGET_BITS}") as run:
        mode = TargetBitsMode(BUDGET_BITS)
        budget = _stage(run, _btc(ModelRef(entry.model, weights), data, counts, mode), options)
    return _row(entry, rule, budget, ptq, fp32_eval, time.perf_counter() - start)


def _stage(run: RunDir, stage: Stage[R], options: RunOptions) -> R:
    outcome = run_stage(run, stage, options)
    report(run, outcome)
    return outcome.result


def _btc(model: ModelRef, data: DataRef, counts: ZooCounts, mode: BtcMode) -> BtcStage:
    # The paper's rule stays as published (no re-tuning); the budget mode re-tunes.
    retune = None if isinstance(mode, SigmaRuleMode) else counts.retune_steps
    return BtcStage(model, data, BtcConfig(mode, counts.btc_calib_count, counts.eval_count, retune))


def _ptq(counts: ZooCounts) -> PtqConfig:
    return PtqConfig("auto", count=counts.calib_count, eval_count=counts.eval_count)


def _eval(run: RunDir, model: ModelRef, data: DataRef, counts: ZooCounts) -> EvalStage:
    return EvalStage(data, run.artifact(FP32_ONNX), model, EvalConfig(count=counts.eval_count))


def _row(
    entry: ZooEntry,
    rule: BtcResult,
    budget: BtcResult,
    ptq: PtqResult,
    fp32_eval: EvalResult,
    seconds: float,
) -> ZooRow:
    from quantpipe.models.registry import get_model_spec, summarize

    fp32 = rule.accuracy.fp32.test
    return ZooRow(
        model=entry.model,
        weights=Path(entry.weights).name if entry.weights else "trained by the zoo",
        metric=fp32_eval.label,
        data=fp32_eval.data,
        parameters=summarize(get_model_spec(entry.model)).parameters,
        fp32=fp32,
        btc_rule=rule.accuracy.btc_test,
        btc_rule_bits=rule.summary.b_eff,
        btc_rule_rmse=rule.summary.rmse,
        btc_budget=budget.accuracy.btc_test,
        btc_budget_bits=budget.summary.b_eff,
        uniform8=rule.baselines["uniform8_per_tensor"].test_accuracy,
        int8=ptq.kept.test,
        int8_cpu_build=ptq.ort_cpu.test,
        calibrator=ptq.calibrator,
        calibrator_drops={n: ptq.fp32.test - s.test for n, s in ptq.per_calibrator.items()},
        fp32_onnx_eval=fp32_eval.value,
        seconds=seconds,
    )
