"""CLI handlers: turn parsed arguments into configs, call the library, print results."""

from __future__ import annotations

import argparse
from pathlib import Path

from quantpipe.btc.report import btc_table
from quantpipe.data.registry import DATASETS
from quantpipe.engines.registry import list_backends
from quantpipe.evaluate.evaluate import headline
from quantpipe.models.registry import MODELS, summarize
from quantpipe.models.user_model import parse_input_shape
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageOutcome
from quantpipe.stages.btc import BtcConfig, run_btc
from quantpipe.stages.common import FP32_ONNX, DataRef, ModelRef, default_run_name
from quantpipe.stages.evaluate import EvalConfig, run_eval
from quantpipe.stages.export import ExportConfig, run_export
from quantpipe.stages.train import TrainConfig, run_train
from quantpipe.text_table import format_table


def cmd_models(_: argparse.Namespace) -> int:
    rows = []
    for spec in MODELS.values():
        s = summarize(spec)
        shape = "×".join(map(str, s.input_shape))
        rows.append((s.name, shape, f"{s.parameters:,}", s.task, s.weights))
    print(format_table(("model", "input", "parameters", "task", "weights"), rows))
    print(
        "\nAny other model: --model path/to/file.py:factory [--input-shape C,H,W] [--weights FILE]"
    )
    return 0


def cmd_datasets(_: argparse.Namespace) -> int:
    rows = [
        (
            k.name,
            k.description,
            str(k.default_path or ("(path required)" if k.needs_path else "built-in")),
        )
        for k in DATASETS.values()
    ]
    print(format_table(("data set", "what", "default path"), rows))
    print("\nUse --data NAME[:PATH]. Splits: train, calib, val, test, all (see README).")
    return 0


def cmd_backends(_: argparse.Namespace) -> int:
    rows = [
        (b.name, "yes" if b.available else "no", b.description if b.available else b.reason)
        for b in list_backends()
    ]
    print(format_table(("backend", "available", "details"), rows))
    return 0


def model_ref(args: argparse.Namespace) -> ModelRef:
    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    return ModelRef(args.model, args.weights, shape)


def open_run(args: argparse.Namespace, name_hint: str) -> RunDir:
    if args.run_dir:
        return RunDir.open(args.run_dir)
    return RunDir.open(Path(args.runs_dir) / (args.run or default_run_name(name_hint)))


def cmd_train(args: argparse.Namespace) -> int:
    cfg = TrainConfig(args.epochs, args.batch_size, args.lr, args.weight_decay)
    model, data = model_ref(args), DataRef(args.data, args.seed)
    with open_run(args, args.model) as run:
        report(run, run_train(run, model, data, cfg, args.force, not args.quiet))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    cfg = ExportConfig(opset=args.opset, parity_count=args.parity_count, threads=args.threads)
    data = DataRef(args.data, args.seed) if args.data else None
    with open_run(args, args.model) as run:
        report(run, run_export(run, model_ref(args), data, cfg, args.force))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    cfg = EvalConfig(
        args.backend, args.split, args.count, args.batch_size, args.threads, args.reference
    )
    model = model_ref(args) if args.model else None
    hint = args.model or (Path(args.onnx).name.split(".")[0] if args.onnx else "run")
    with open_run(args, hint) as run:
        onnx_path = Path(args.onnx) if args.onnx else run.artifact(FP32_ONNX)
        outcome = run_eval(
            run, onnx_path, model, DataRef(args.data, args.seed), cfg, args.force, not args.quiet
        )
        report(run, outcome)
    return 0


def cmd_btc(args: argparse.Namespace) -> int:
    cfg = BtcConfig(
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
    )
    with open_run(args, args.model) as run:
        data = DataRef(args.data, args.seed)
        outcome = run_btc(run, model_ref(args), data, cfg, args.force, not args.quiet)
        report(run, outcome)
        print(btc_table(outcome.record.results, args.model))
    return 0


def report(run: RunDir, outcome: StageOutcome) -> None:
    """One line per stage: ran or skipped, where its outputs are, its headline figure."""
    rec = outcome.record
    state = (
        "up to date, skipped (--force reruns it)"
        if outcome.skipped
        else f"done in {rec.wall_s:.1f} s"
    )
    print(f"{rec.name}: {state}")
    for out in rec.outputs:
        verb = "kept" if outcome.skipped else "wrote"
        print(f"  {verb} {run.path / out.path} ({out.bytes:,} bytes)")
    for line in result_lines(rec.results):
        print(f"  {line}")


def result_lines(results: dict) -> list[str]:
    lines = []
    if "parity" in results:
        p = results["parity"]
        lines.append(
            f"parity vs PyTorch: max |Δlogit| {p['max_abs_diff']:.2e}, top-1 agreement "
            f"{p['top1_agreement']:.2f} % on {p['data']}"
        )
    if "summary" in results and "size" in results:
        s, acc = results["summary"], results["accuracy"]
        lines.append(
            f"BTC {s['b_eff']:.3f} effective bits ({s['b_avg']:.3f} payload), "
            f"{results['size']['ratio']:.2f}× smaller than the FP32 ONNX; top-1 "
            f"{acc['btc_test']:.2f} % vs FP32 {acc['fp32']['test']:.2f} % on "
            f"{acc['data_test']['dataset']} {acc['data_test']['split']} "
            f"({acc['data_test']['count']:,} samples)"
        )
    if "per_calibrator" in results:
        kept, fp32 = results["calibrator"], results["fp32"]
        acc = results["per_calibrator"][kept]
        note = results["calibration"]
        how = (
            f"reused cached tables for {', '.join(note['reused'])}; " if note.get("reused") else ""
        )
        lines.append(
            f"INT8 Q/DQ ({kept} calibration kept on val; {how}"
            f"{results['qdq']['quantize_linear']} QuantizeLinear): test "
            f"{acc['test']:.2f} % vs FP32 {fp32['test']:.2f} % "
            f"({results['data_test']['count']:,} samples)"
        )
    if "val" in results:
        lines.append(f"validation: {headline(results['val'])}")
    if "data" in results and ("top1" in results or "miou" in results or "agreement" in results):
        lines.append(headline(results))
    return lines
