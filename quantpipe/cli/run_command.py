"""`quantpipe run`: every stage of a config in one run directory, then a summary table."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from quantpipe.artifacts import BTC_ONNX, FP32_ONNX, INT8_BUILDS, int8_file, mp_file, qat_file
from quantpipe.cli.output import report
from quantpipe.cli.run_config import RunConfig, load_run_config
from quantpipe.cli.summary import print_summary
from quantpipe.engines.registry import get_backend
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import RunOptions, Stage, run_stage
from quantpipe.stages.bench import BenchStage
from quantpipe.stages.btc import BtcStage
from quantpipe.stages.common import DataRef, ModelRef
from quantpipe.stages.engines import EnginesStage
from quantpipe.stages.evaluate import EvalConfig, EvalStage
from quantpipe.stages.export import ExportStage
from quantpipe.stages.mixed import MixedStage
from quantpipe.stages.ptq import PtqStage
from quantpipe.stages.qat import QatStage
from quantpipe.stages.report import ReportStage
from quantpipe.stages.train import TrainStage
from quantpipe.stages.triton import TritonStage


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_run_config(args.config)
    options = RunOptions(force=args.force, progress=not args.quiet, threads=args.threads)
    with RunDir.open(Path(args.runs_dir) / cfg.name) as run:
        outcomes = []
        # Each stage is built only when the ones before it have run: it checks its inputs.
        for stage in planned_stages(run, cfg):
            outcome = run_stage(run, stage, options)
            report(run, outcome)
            outcomes.append(outcome)
        print_summary(run, cfg, outcomes)
    return 0


def planned_stages(run: RunDir, cfg: RunConfig) -> Iterator[Stage[Any]]:
    """The config's stages in order; BTC composes: the decoded BTC model is quantized and
    evaluated like the FP32 one."""
    model, data = ModelRef(cfg.model, cfg.weights), DataRef(cfg.data, cfg.seed)
    if "train" in cfg.stages:
        yield TrainStage(model, data, cfg.train)
    if "export" in cfg.stages:
        yield ExportStage(model, data, cfg.export)
    if "btc" in cfg.stages:
        yield BtcStage(model, data, cfg.btc)
    if "ptq" in cfg.stages:
        for source in _float_models(run, cfg):
            yield PtqStage(source, data, cfg.ptq)
    # QAT and mixed precision start from the FP32 model's PTQ result.
    fp32 = run.artifact(FP32_ONNX)
    if "qat" in cfg.stages:
        yield QatStage(fp32, data, cfg.qat)
    if "mixed" in cfg.stages:
        yield MixedStage(fp32, data, cfg.mixed)
    if "eval" in cfg.stages:
        for backend in cfg.eval.backends:
            ecfg = EvalConfig(backend, cfg.eval.split, cfg.eval.count)
            if get_backend(backend).runs == "torch":
                yield EvalStage(data, None, model, ecfg)
                continue
            for artifact in _onnx_models(run, cfg):
                yield EvalStage(data, artifact, model, ecfg)
    if "engines" in cfg.stages:
        yield EnginesStage(data, cfg.engines)
    if "triton" in cfg.stages:
        yield TritonStage(cfg.triton)
    if "bench" in cfg.stages:
        yield BenchStage(data, cfg.bench, model=model)
    if "report" in cfg.stages:
        yield ReportStage(cfg.report)


def _float_models(run: RunDir, cfg: RunConfig) -> list[Path]:
    """The float ONNX models of this run: FP32, and BTC-decoded when btc runs."""
    return [run.artifact(n) for n in [FP32_ONNX] + ([BTC_ONNX] if "btc" in cfg.stages else [])]


def _onnx_models(run: RunDir, cfg: RunConfig) -> list[Path]:
    """Every ONNX model this run's stages produce, float ones first."""
    sources = _float_models(run, cfg)
    builds = INT8_BUILDS if "ptq" in cfg.stages else ()
    models = sources + [run.artifact(int8_file(s, b)) for s in sources for b in builds]
    fp32 = run.artifact(FP32_ONNX)
    for stage, file in (("qat", qat_file), ("mixed", mp_file)):
        if stage in cfg.stages:
            models += [run.artifact(file(fp32, b)) for b in INT8_BUILDS]
    return models
