"""CLI handlers of the stages: flags → a frozen config and a Stage, run it, print the result."""

from __future__ import annotations

import argparse
from pathlib import Path

from quantpipe.artifacts import FP32_ONNX
from quantpipe.cli.output import report
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import R, RunOptions, Stage, StageOutcome, run_stage
from quantpipe.stages.common import DataRef, LabelSource, ModelRef, default_run_name


def cmd_train(args: argparse.Namespace) -> int:
    from quantpipe.stages.train import TrainStage
    from quantpipe.stages.training import TrainConfig

    cfg = TrainConfig(args.epochs, args.batch_size, args.lr, args.weight_decay)
    with open_run(args, args.model) as run:
        _run(run, TrainStage(_model(args), _data(args), cfg), args)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from quantpipe.stages.export import ExportConfig, ExportStage

    cfg = ExportConfig(opset=args.opset, parity_count=args.parity_count)
    data = _data(args) if args.data else None
    with open_run(args, args.model) as run:
        _run(run, ExportStage(_model(args), data, cfg), args)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from quantpipe.stages.evaluate import EvalConfig, EvalStage

    cfg = EvalConfig(args.backend, args.split, args.count, args.batch_size)
    model = _model(args) if args.model else None
    with open_run(args, args.model or _onnx_hint(args)) as run:
        onnx = Path(args.onnx) if args.onnx else run.artifact(FP32_ONNX)
        stage = EvalStage(_data(args), onnx, model, cfg, LabelSource(args.reference))
        _run(run, stage, args)
    return 0


def cmd_btc(args: argparse.Namespace) -> int:
    from quantpipe.stages.btc import BtcConfig, BtcStage

    cfg = BtcConfig.from_flags(
        block_size=args.block_size,
        tau=args.tau,
        low_bits=args.low_bits,
        high_bits=args.high_bits,
        target_bits=args.target_bits,
        max_drop=args.max_drop,
        search=args.search,
        max_rmse=args.max_rmse,
        block_sizes=args.block_sizes,
        taus=args.taus,
        eval_count=args.eval_count,
        calib_count=args.calib_count,
        retune_steps=args.retune_steps,
        device=args.device,
        baselines=args.baselines,
    )
    with open_run(args, args.model) as run:
        stage = BtcStage(_model(args), _data(args), cfg, LabelSource(args.reference))
        print(_run(run, stage, args).result.table(args.model))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from quantpipe.stages.calibrate import CalibrateConfig, CalibrateStage

    cfg = CalibrateConfig(
        args.calibrators,
        args.percentile,
        args.calib_count,
        exclude=args.exclude,
        histogram_stride=args.histogram_stride,
    )
    with open_run(args, _onnx_hint(args)) as run:
        _run(run, CalibrateStage(_onnx(args, run), _data(args), cfg), args)
    return 0


def cmd_ptq(args: argparse.Namespace) -> int:
    from quantpipe.stages.ptq import PtqConfig, PtqStage

    cfg = PtqConfig(
        args.calibrator,
        args.percentile,
        args.calib_count,
        args.exclude,
        args.calib_cache,
        args.eval_count,
        args.max_drop,
        args.histogram_stride,
    )
    with open_run(args, _onnx_hint(args)) as run:
        stage = PtqStage(_onnx(args, run), _data(args), cfg, LabelSource(args.reference))
        print(_run(run, stage, args).result.table())
    return 0


def cmd_mixed(args: argparse.Namespace) -> int:
    from quantpipe.stages.mixed import MixedStage
    from quantpipe.stages.mixed_session import MixedConfig

    cfg = MixedConfig.from_flags(
        preset=args.preset, widths=args.widths, activation_bits=args.activation_bits,
        budget_bytes=args.budget, compression=args.compression, max_drop=args.max_drop,
        normalise=args.normalise, pick=args.pick, trials=args.trials, epsilon=args.epsilon,
        sensitivity_seed=args.sensitivity_seed, sensitivity_count=args.sensitivity_count,
        randoms=args.randoms, sweep=args.sweep, qat_epochs=args.qat_epochs, qat_lr=args.lr,
        qat_batch_size=args.batch_size, qat_train_count=args.train_count,
        eval_count=args.eval_count,
    )  # fmt: skip
    with open_run(args, _onnx_hint(args)) as run:
        _run(run, MixedStage(_onnx(args, run), _data(args), cfg, LabelSource(args.reference)), args)
    return 0


def cmd_engines(args: argparse.Namespace) -> int:
    from quantpipe.stages.engines import EnginesConfig, EnginesStage

    cfg = EnginesConfig(args.backends, args.precisions, args.batch_sizes, args.workspace_mib)
    data = _data(args) if args.data else None
    with open_run(args, "run") as run:
        _run(run, EnginesStage(data, cfg), args)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from quantpipe.stages.bench import BenchConfig, BenchStage

    cfg = BenchConfig(
        args.batch_sizes,
        args.warmup_s,
        args.duration,
        args.iterations,
        args.rounds,
        args.split,
        args.count,
        args.ort_baselines,
    )
    with open_run(args, "run") as run:
        model = _model(args) if args.model else None
        stage = BenchStage(_data(args), cfg, LabelSource(args.reference), model)
        print(_run(run, stage, args).result.table())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from quantpipe.artifacts import REPORT_MD
    from quantpipe.stages.report import ReportConfig, ReportStage

    cfg = ReportConfig(args.batch_sizes)
    with open_run(args, "run") as run:
        _run(run, ReportStage(cfg), args)
        print(run.artifact(REPORT_MD))
    return 0


def open_run(args: argparse.Namespace, name_hint: str) -> RunDir:
    if args.run_dir:
        return RunDir.open(args.run_dir)
    return RunDir.open(Path(args.runs_dir) / (args.run or default_run_name(name_hint)))


def run_options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(force=args.force, progress=not args.quiet, threads=args.threads)


def _run(run: RunDir, stage: Stage[R], args: argparse.Namespace) -> StageOutcome[R]:
    outcome = run_stage(run, stage, run_options(args))
    report(run, outcome)
    return outcome


def _model(args: argparse.Namespace) -> ModelRef:
    from quantpipe.models.user_model import parse_input_shape

    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    return ModelRef(args.model, args.weights, shape)


def _data(args: argparse.Namespace) -> DataRef:
    return DataRef(args.data, args.seed)


def _onnx(args: argparse.Namespace, run: RunDir) -> Path:
    return Path(args.onnx) if args.onnx else run.artifact(FP32_ONNX)


def _onnx_hint(args: argparse.Namespace) -> str:
    return Path(args.onnx).name.split(".")[0] if args.onnx else "run"
