"""CLI handlers of the INT8 stages: calibrate, ptq, compare."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import onnx

from quantpipe.cli.commands import open_run, report
from quantpipe.data.selection import select
from quantpipe.quantize import compare_models
from quantpipe.stages.calibrate import CALIB_DIR, CalibrateConfig, calibrate
from quantpipe.stages.common import FP32_ONNX, DataRef
from quantpipe.stages.evaluate import model_contract
from quantpipe.stages.ptq import PtqConfig, run_ptq
from quantpipe.text_table import format_table


def _onnx_path(args: argparse.Namespace, run_path: Path) -> Path:
    return Path(args.onnx) if args.onnx else run_path / FP32_ONNX


def _hint(args: argparse.Namespace) -> str:
    return Path(args.onnx).name.split(".")[0] if args.onnx else "run"


def cmd_calibrate(args: argparse.Namespace) -> int:
    cfg = CalibrateConfig(
        args.calibrators,
        args.percentile,
        args.calib_count,
        threads=args.threads,
        exclude=args.exclude,
    )
    data = DataRef(args.data, args.seed)
    with open_run(args, _hint(args)) as run:
        onnx_path = _onnx_path(args, run.path)
        pre = model_contract(onnx_path, None).preprocessing
        calib = select(data.open(), "calib", pre, data.seed, cfg.count)
        result = calibrate(run.path, onnx_path, calib, cfg, not args.quiet)
        for name, table in result.tables.items():
            how = "reused cached table" if name in result.reused else "computed"
            print(
                f"{name}: {how} {run.path / CALIB_DIR / table.key}.json (+ .trtcache), "
                f"{len(table.amax)} tensors"
            )
    return 0


def cmd_ptq(args: argparse.Namespace) -> int:
    cfg = PtqConfig(
        args.calibrator,
        args.percentile,
        args.calib_count,
        args.exclude,
        args.calib_cache,
        args.eval_count,
        args.threads,
    )
    with open_run(args, _hint(args)) as run:
        outcome = run_ptq(
            run,
            _onnx_path(args, run.path),
            DataRef(args.data, args.seed),
            cfg,
            args.force,
            not args.quiet,
        )
        report(run, outcome)
        print(ptq_table(outcome.record.results))
    return 0


def ptq_table(results: dict[str, Any]) -> str:
    """All calibrators side by side: val (selection) and test (report) figures."""
    fp32 = results["fp32"]
    rows = [("FP32", f"{fp32['val']:.2f}", "0", f"{fp32['test']:.2f}", "", "")]
    for name, acc in results["per_calibrator"].items():
        kept = "← kept (lowest val KL)" if name == results["calibrator"] else ""
        kl = f"{acc['val_kl']:.2e}" if "val_kl" in acc else "-"
        delta = f"{acc['test'] - fp32['test']:+.2f}"
        rows.append((f"INT8 {name}", f"{acc['val']:.2f}", kl, f"{acc['test']:.2f}", delta, kept))
    ort = results.get("ort_cpu")
    if ort:
        delta = f"{ort['test'] - fp32['test']:+.2f}"
        rows.append(("INT8 ONNX Runtime CPU build", "", "", f"{ort['test']:.2f}", delta, ""))
    d = results["data_test"]
    note = (
        f"Accuracy (%, headline metric) on {d['dataset']} val/test splits; test = {d['count']:,} "
        f"samples ({d['path']}). Calibration: {_calibration_note(results['calibration'])}."
    )
    if ort:
        portable, build = _kernel_note(ort["portable_kernels"]), _kernel_note(ort["kernels"])
        note += f"\nONNX Runtime CPU: the Q/DQ model {portable};\n  its CPU build {build}."
    headers = ("model", "val acc", "val KL vs FP32", "test acc", "test Δ", "")
    return format_table(headers, rows) + "\n" + note


def _kernel_note(kernels: dict[str, dict[str, int]]) -> str:
    """'runs integer kernels: 20 QLinearConv, 8 QLinearAdd; float: 1 Gemm; conversions: ...'"""

    def listed(ops: dict[str, int]) -> str:
        return ", ".join(f"{n} {op}" for op, n in ops.items()) or "none"

    return (
        f"runs integer kernels: {listed(kernels['integer'])}; float: {listed(kernels['float'])}; "
        f"Q/DQ conversions: {listed(kernels['conversions'])}"
    )


def _calibration_note(note: dict[str, Any]) -> str:
    if "imported" in note:
        return f"imported TensorRT cache {note['imported']}"
    parts = []
    if note["reused"]:
        parts.append(f"reused cached tables for {', '.join(note['reused'])}")
    if note["computed"]:
        parts.append(f"computed {', '.join(note['computed'])} on {note['data']['count']:,} samples")
    return "; ".join(parts)


def cmd_compare(args: argparse.Namespace) -> int:
    data = DataRef(args.data, args.seed)
    ref, cand = Path(args.reference), Path(args.candidate)
    pre = model_contract(ref, None).preprocessing
    sel = select(data.open(), args.split, pre, data.seed, args.count)
    input_name = onnx.load(str(ref), load_external_data=False).graph.input[0].name
    feeds = ({input_name: x} for x, _ in sel.batches(32))
    result = compare_models(ref, cand, feeds, threads=args.threads)
    headers = ("tensor", "node", "op", "max |Δ|", "cosine", "SQNR dB")
    print("Outputs:")
    print(format_table(headers, [_row(r) for r in result.outputs]))
    print(f"\nLayers, worst first ({min(args.top, len(result.layers))} of {len(result.layers)}):")
    print(format_table(headers, [_row(r) for r in result.layers[: args.top]]))
    print(f"\nOn {len(sel):,} samples of {data.spec} split {args.split}.")
    return 0


def _row(r: Any) -> tuple[str, ...]:
    return (r.tensor, r.node, r.op_type, f"{r.max_abs:.3g}", f"{r.cosine:.5f}", f"{r.sqnr_db:.1f}")
