"""The argument parser: one subcommand per stage, plus listings and `run`.

It imports nothing heavy: `quantpipe --help` must answer instantly. Flags map one to one
onto the stage configs built in stage_commands.py.
"""

from __future__ import annotations

import argparse

from quantpipe import __version__
from quantpipe.cli.deploy_parsers import (
    add_engine_parsers,
    add_report_parser,
    add_serve_parser,
    add_triton_parser,
)
from quantpipe.cli.options import (
    add_data_options,
    add_execution_options,
    add_model_options,
    add_reference_option,
    add_run_options,
    csv_of,
)
from quantpipe.engines.registry import DEFAULT_BACKEND, all_backends

CALIBRATORS = ("max", "percentile", "entropy", "mse")  # as quantpipe.calibration registers them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantpipe",
        description="Take a trained PyTorch model to compressed, measured ONNX/TensorRT engines.",
    )
    parser.add_argument("--version", action="version", version=f"quantpipe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("models", help="list the model registry")
    sub.add_parser("datasets", help="list the data set kinds")
    sub.add_parser("backends", help="list runners and whether they work here")
    _train_parser(sub)
    _export_parser(sub)
    _eval_parser(sub)
    _btc_parser(sub)
    _ptq_parsers(sub)
    _qat_parser(sub)
    _mixed_parser(sub)
    add_engine_parsers(sub)
    add_report_parser(sub)
    add_triton_parser(sub)
    add_serve_parser(sub)
    inspect = sub.add_parser(
        "inspect", help="what an engine, ONNX model or BTC container holds, and its checks"
    )
    inspect.add_argument("file", help="an engine (.plan/.onnx + .json), an .onnx or a .btc file")
    run = sub.add_parser("run", help="run the stages of a config file (default: the demo)")
    run.add_argument("--config", help="TOML config (default: the built-in demo)")
    run.add_argument("--force", action="store_true", help="rerun every stage")
    run.add_argument("--runs-dir", default="runs", help="parent of run directories")
    add_execution_options(run)
    _zoo_parser(sub)
    return parser


def _zoo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "zoo", help="every built-in trained model and given checkpoints: btc, ptq, eval, table"
    )
    p.add_argument(
        "--models", type=csv_of(str), help="built-in models to include (default: all of them)"
    )
    p.add_argument("--no-builtin", action="store_true", help="only the --checkpoint models")
    p.add_argument(
        "--checkpoint",
        nargs=3,
        action="append",
        metavar=("MODEL", "FILE", "DATA"),
        help="a registry model's checkpoint and its data (NAME[:PATH]); repeatable",
    )
    p.add_argument("--out", default="zoo", help="directory of the runs and report.md")
    p.add_argument("--quick", action="store_true", help="small sample counts (CI)")
    p.add_argument("--force", action="store_true", help="rerun every stage")
    add_execution_options(p)


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a built-in small model (see `quantpipe models`)")
    add_model_options(p)
    add_data_options(p, required=True)
    recipe = "default: the model's recipe (`quantpipe models`), else %s"
    p.add_argument("--epochs", type=int, help=recipe % 5)
    p.add_argument("--batch-size", type=int, help=recipe % 256)
    p.add_argument("--lr", type=float, help=recipe % 6e-3)
    p.add_argument("--weight-decay", type=float, help=recipe % 1e-4)
    add_run_options(p)


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export to model.fp32.onnx with a parity check")
    add_model_options(p)
    add_data_options(p, required=False)
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 to 21 (default 17)")
    p.add_argument("--parity-count", type=int, default=1000, help="samples for the parity check")
    add_run_options(p)


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="accuracy of an ONNX model or the PyTorch model on a split")
    p.add_argument("--onnx", help="ONNX file (default: the run's model.fp32.onnx)")
    add_model_options(p, required=False)
    add_data_options(p, required=True)
    p.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        help=f"{', '.join(b.name for b in all_backends())} (default {DEFAULT_BACKEND}; "
        "`quantpipe backends` says which work here)",
    )
    p.add_argument("--split", default="test", help="train, calib, val, test or all (default test)")
    p.add_argument("--count", type=int, help="only the first N samples of the split")
    add_reference_option(p)
    p.add_argument(
        "--batch-size",
        type=int,
        help="samples per batch (default: as many as 32 MiB of input holds, at most 256)",
    )
    add_run_options(p)


def _btc_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("btc", help="block transform coding of the weights (model.btc + .onnx)")
    add_model_options(p)
    add_data_options(p, required=True)
    p.add_argument("--block-size", type=int, default=64, help="B, weights per block (default 64)")
    p.add_argument("--tau", type=float, default=0.05, help="σ threshold of the paper's rule")
    p.add_argument("--low-bits", type=int, default=4)
    p.add_argument("--high-bits", type=int, default=8)
    p.add_argument("--target-bits", type=float, help="effective bits per weight, headers included")
    p.add_argument("--max-drop", type=float, help="accuracy drop bound in points (selects on val)")
    p.add_argument("--search", action="store_true", help="the paper's B × τ search")
    p.add_argument("--max-rmse", type=float, default=3e-3, help="RMSE bound of --search")
    p.add_argument("--block-sizes", type=csv_of(int), default=(32, 64, 128, 256))
    p.add_argument("--taus", type=csv_of(float), default=(0.05,))
    p.add_argument("--eval-count", type=int, help="only the first N samples of val/test")
    p.add_argument(
        "--calib-count",
        type=int,
        default=4096,
        help="calib samples for importance and re-tuning (default 4096)",
    )
    p.add_argument(
        "--retune-steps",
        type=int,
        help="affine re-tuning steps (default: 300 with --target-bits/--max-drop, else 0)",
    )
    p.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        help="also score 8-bit per-tensor and per-channel quantizers of the same weights on "
        "test (default: yes for the paper's rule and --search, no with --target-bits/--max-drop)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="where Fisher importance and re-tuning run: auto (a GPU if PyTorch sees one), "
        "cpu, cuda",
    )
    add_reference_option(p)
    add_run_options(p)


def _add_calibration_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onnx", help="ONNX model (default: the run's model.fp32.onnx)")
    add_data_options(p, required=True)
    p.add_argument("--calib-count", type=int, default=1024, help="calib samples (default 1024)")
    p.add_argument("--percentile", type=float, default=99.99, help="of the percentile calibrator")
    p.add_argument("--exclude", type=csv_of(str), default=(), help="node names kept in float")
    p.add_argument(
        "--histogram-stride",
        type=int,
        default=2,
        help="histograms bin every n-th row and column of image-like activations, maxima "
        "stay exact (default 2: a quarter of the positions; 1: every value)",
    )


def _ptq_parsers(sub: argparse._SubParsersAction) -> None:
    cal = sub.add_parser("calibrate", help="activation ranges per calibrator (cached tables)")
    _add_calibration_options(cal)
    cal.add_argument("--calibrators", type=csv_of(str), default=CALIBRATORS)
    add_run_options(cal)
    ptq = sub.add_parser(
        "ptq", help="INT8 post-training quantization → Q/DQ ONNX (+ its ONNX Runtime CPU build)"
    )
    _add_calibration_options(ptq)
    ptq.add_argument(
        "--calibrator", default="auto", help="auto (best on val), max, percentile, entropy or mse"
    )
    ptq.add_argument("--calib-cache", help="import a TensorRT calibration cache as the ranges")
    ptq.add_argument("--eval-count", type=int, help="only the first N samples of val/test")
    ptq.add_argument(
        "--max-drop",
        type=float,
        help="keep the fewest, most sensitive layers in float until the val accuracy drop "
        "is at most this many points",
    )
    add_reference_option(ptq)
    add_run_options(ptq)
    cmp = sub.add_parser("compare", help="per-output and per-layer error between two ONNX models")
    cmp.add_argument("reference")
    cmp.add_argument("candidate")
    add_data_options(cmp, required=True)
    cmp.add_argument("--split", default="val")
    cmp.add_argument("--count", type=int, default=64)
    cmp.add_argument("--top", type=int, default=15, help="rows of the per-layer table")
    cmp.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: default)")


def _mixed_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mixed", help="sensitivity-based mixed precision from ptq's result (thesis Alg. 1-2)"
    )
    p.add_argument("--onnx", help="the float model ptq quantized (default: model.fp32.onnx)")
    add_data_options(p, required=True)
    p.add_argument("--preset", default="4MP-A8", help="4MP-A8 (default), 4MP-A6, 2MP-A8, ...")
    p.add_argument("--widths", type=csv_of(int), help="weight bit widths to mix, e.g. 2,4,8")
    p.add_argument("--activation-bits", type=int, help="overrides the preset's A")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--budget", type=float, help="bytes of the quantized weights (Σ P·b/8)")
    size.add_argument(
        "--compression", type=float, help="× smaller than FP32 weights (default 5 for 4MP, 6 2MP)"
    )
    p.add_argument("--max-drop", type=float, help="smallest model within D points on val")
    p.add_argument("--normalise", action="store_true", help="rank layers by S/P, not S")
    p.add_argument(
        "--pick",
        default="measured",
        help="measured (default: the best on val of the allocations measured within the "
        "budget) or proxy (the thesis's least-cost frontier point, unmeasured)",
    )
    p.add_argument("--trials", type=int, default=4, help="noise draws per layer (default 4)")
    p.add_argument("--epsilon", type=float, default=1e-3, help="σ = ε/‖W‖ (default 1e-3)")
    p.add_argument("--sensitivity-count", type=int, default=128, help="calib batch (default 128)")
    p.add_argument("--sensitivity-seed", type=int, default=0)
    p.add_argument("--randoms", type=int, default=3, help="random allocations to compare")
    p.add_argument("--sweep", type=int, default=5, help="frontier points to measure for the plot")
    p.add_argument("--qat-epochs", type=int, default=0, help="fine-tune the chosen model (QAT)")
    p.add_argument("--lr", type=float, help="QAT learning rate (default as qat)")
    p.add_argument("--batch-size", type=int, default=128, help="QAT batch size")
    p.add_argument("--train-count", type=int, help="QAT on the first N samples of train")
    p.add_argument("--eval-count", type=int, help="only the first N samples of val/test")
    add_reference_option(p)
    add_run_options(p)


def _qat_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "qat", help="quantization-aware fine-tuning from ptq's result (torchrun: data-parallel)"
    )
    p.add_argument("--onnx", help="the float model ptq quantized (default: model.fp32.onnx)")
    add_data_options(p, required=True)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, help="default 0.001 (classifiers), 1e-4 (segmentation)")
    p.add_argument("--optimizer", default="sgd", help="sgd (default, momentum 0.9) or adam")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--schedule", default="plateau", help="plateau (default), cosine, constant")
    p.add_argument("--batch-size", type=int, default=128, help="the global batch (all ranks)")
    p.add_argument("--train-count", type=int, help="only the first N samples of train")
    p.add_argument("--eval-count", type=int, help="only the first N samples of val/test")
    p.add_argument(
        "--fixed-ranges",
        action="store_true",
        help="keep ptq's activation ranges (default: learn them, LSQ)",
    )
    p.add_argument(
        "--keep",
        default="best",
        help="best (default: the epoch best on val, ptq's start counted as epoch 0) or last",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the last epoch's checkpoint"
    )
    add_reference_option(p)
    add_run_options(p)
