"""`quantpipe run`: every stage of a config in one run directory, then a summary table."""

from __future__ import annotations

import argparse
from pathlib import Path

from quantpipe.cli.commands import report
from quantpipe.cli.run_config import RunConfig, load_run_config
from quantpipe.cli.summary import print_summary
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageOutcome
from quantpipe.stages.btc import BTC_ONNX, run_btc
from quantpipe.stages.common import FP32_ONNX, DataRef, ModelRef
from quantpipe.stages.evaluate import EvalConfig, run_eval
from quantpipe.stages.export import run_export
from quantpipe.stages.ptq import int8_name, run_ptq
from quantpipe.stages.train import run_train


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_run_config(args.config)
    with RunDir.open(Path(args.runs_dir) / cfg.name) as run:
        outcomes = run_stages(run, cfg, args.force, not args.quiet)
        print_summary(run, cfg, outcomes)
    return 0


def run_stages(run: RunDir, cfg: RunConfig, force: bool, progress: bool) -> list[StageOutcome]:
    model, data = ModelRef(cfg.model, cfg.weights), DataRef(cfg.data, cfg.seed)
    outcomes: list[StageOutcome] = []

    def done(outcome: StageOutcome) -> None:
        report(run, outcome)
        outcomes.append(outcome)

    if "train" in cfg.stages:
        done(run_train(run, model, data, cfg.train, force, progress))
    if "export" in cfg.stages:
        done(run_export(run, model, data, cfg.export, force))
    if "btc" in cfg.stages:
        done(run_btc(run, model, data, cfg.btc, force, progress))
    if "ptq" in cfg.stages:
        # BTC composes: the decoded BTC model is quantized like the FP32 one.
        for source in _onnx_sources(run, cfg):
            done(run_ptq(run, source, data, cfg.ptq, force, progress))
    if "eval" in cfg.stages:
        for backend in cfg.eval.backends:
            ecfg = EvalConfig(backend, cfg.eval.split, cfg.eval.count)
            if backend.startswith("torch"):
                done(run_eval(run, None, model, data, ecfg, force, progress))
                continue
            for artifact in _onnx_artifacts(run, cfg):
                done(run_eval(run, artifact, model, data, ecfg, force, progress))
    return outcomes


def _onnx_sources(run: RunDir, cfg: RunConfig) -> list[Path]:
    """The float ONNX models of this run: FP32, and BTC-decoded when btc runs."""
    return [run.artifact(n) for n in [FP32_ONNX] + ([BTC_ONNX] if "btc" in cfg.stages else [])]


def _onnx_artifacts(run: RunDir, cfg: RunConfig) -> list[Path]:
    """Every ONNX model this run's stages produce, float ones first."""
    sources = _onnx_sources(run, cfg)
    builds = ("qdq", "ort") if "ptq" in cfg.stages else ()
    quantized = [run.artifact(int8_name(s, b)) for s in sources for b in builds]
    return sources + quantized
