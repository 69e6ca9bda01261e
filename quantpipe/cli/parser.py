"""The argument parser: one subcommand per stage, plus listings and `run`.

It imports nothing heavy: `quantpipe --help` must answer instantly. Flags map one to one
onto the stage configs built in stage_commands.py.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from quantpipe import __version__
from quantpipe.engines.registry import DEFAULT_BACKEND, all_backends

CALIBRATORS = ("max", "percentile", "entropy", "mse")  # as quantpipe.calibration registers them


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="run name: artifacts go to RUNS_DIR/RUN (default: model name)")
    p.add_argument("--runs-dir", default="runs", help="parent of run directories (default: runs)")
    p.add_argument("--run-dir", help="explicit run directory (overrides --run/--runs-dir)")
    p.add_argument("--force", action="store_true", help="rerun even if up to date")
    _add_execution_options(p)


def _add_execution_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads of ONNX Runtime and PyTorch (0: each library's default)",
    )


def _add_reference_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reference",
        help="for data without labels: the FP32 ONNX model whose predictions stand in for "
        "labels (default: the run's model.fp32.onnx)",
    )


def _add_model_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--model",
        required=required,
        help="registry name (see `quantpipe models`) or path/to/file.py:factory",
    )
    p.add_argument("--weights", help="checkpoint file (torch.save of a state dict)")
    p.add_argument("--input-shape", help="C,H,W for user models without an input_shape")


def _add_data_options(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--data", required=required, help="NAME[:PATH] (see `quantpipe datasets`) or a path"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the data splits (default 0)")


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
    _engine_parsers(sub)
    _report_parser(sub)
    _triton_parser(sub)
    _serve_parser(sub)
    inspect = sub.add_parser(
        "inspect", help="what an engine, ONNX model or BTC container holds, and its checks"
    )
    inspect.add_argument("file", help="an engine (.plan/.onnx + .json), an .onnx or a .btc file")
    run = sub.add_parser("run", help="run the stages of a config file (default: the demo)")
    run.add_argument("--config", help="TOML config (default: the built-in demo)")
    run.add_argument("--force", action="store_true", help="rerun every stage")
    run.add_argument("--runs-dir", default="runs", help="parent of run directories")
    _add_execution_options(run)
    _zoo_parser(sub)
    return parser


def _zoo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "zoo", help="every built-in trained model and given checkpoints: btc, ptq, eval, table"
    )
    p.add_argument(
        "--models", type=_csv(str), help="built-in models to include (default: all of them)"
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
    _add_execution_options(p)


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a built-in small model (see `quantpipe models`)")
    _add_model_options(p)
    _add_data_options(p, required=True)
    recipe = "default: the model's recipe (`quantpipe models`), else %s"
    p.add_argument("--epochs", type=int, help=recipe % 5)
    p.add_argument("--batch-size", type=int, help=recipe % 256)
    p.add_argument("--lr", type=float, help=recipe % 6e-3)
    p.add_argument("--weight-decay", type=float, help=recipe % 1e-4)
    _add_run_options(p)


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export to model.fp32.onnx with a parity check")
    _add_model_options(p)
    _add_data_options(p, required=False)
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 to 21 (default 17)")
    p.add_argument("--parity-count", type=int, default=1000, help="samples for the parity check")
    _add_run_options(p)


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="accuracy of an ONNX model or the PyTorch model on a split")
    p.add_argument("--onnx", help="ONNX file (default: the run's model.fp32.onnx)")
    _add_model_options(p, required=False)
    _add_data_options(p, required=True)
    p.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        help=f"{', '.join(b.name for b in all_backends())} (default {DEFAULT_BACKEND}; "
        "`quantpipe backends` says which work here)",
    )
    p.add_argument("--split", default="test", help="train, calib, val, test or all (default test)")
    p.add_argument("--count", type=int, help="only the first N samples of the split")
    _add_reference_option(p)
    p.add_argument(
        "--batch-size",
        type=int,
        help="samples per batch (default: as many as 32 MiB of input holds, at most 256)",
    )
    _add_run_options(p)


def _csv(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        return tuple(kind(v) for v in text.split(","))

    return parse


def _btc_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("btc", help="block transform coding of the weights (model.btc + .onnx)")
    _add_model_options(p)
    _add_data_options(p, required=True)
    p.add_argument("--block-size", type=int, default=64, help="B, weights per block (default 64)")
    p.add_argument("--tau", type=float, default=0.05, help="σ threshold of the paper's rule")
    p.add_argument("--low-bits", type=int, default=4)
    p.add_argument("--high-bits", type=int, default=8)
    p.add_argument("--target-bits", type=float, help="effective bits per weight, headers included")
    p.add_argument("--max-drop", type=float, help="accuracy drop bound in points (selects on val)")
    p.add_argument("--search", action="store_true", help="the paper's B × τ search")
    p.add_argument("--max-rmse", type=float, default=3e-3, help="RMSE bound of --search")
    p.add_argument("--block-sizes", type=_csv(int), default=(32, 64, 128, 256))
    p.add_argument("--taus", type=_csv(float), default=(0.05,))
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
        "--device",
        default="auto",
        help="where Fisher importance and re-tuning run: auto (a GPU if PyTorch sees one), "
        "cpu, cuda",
    )
    _add_reference_option(p)
    _add_run_options(p)


def _add_calibration_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onnx", help="ONNX model (default: the run's model.fp32.onnx)")
    _add_data_options(p, required=True)
    p.add_argument("--calib-count", type=int, default=1024, help="calib samples (default 1024)")
    p.add_argument("--percentile", type=float, default=99.99, help="of the percentile calibrator")
    p.add_argument("--exclude", type=_csv(str), default=(), help="node names kept in float")


def _ptq_parsers(sub: argparse._SubParsersAction) -> None:
    cal = sub.add_parser("calibrate", help="activation ranges per calibrator (cached tables)")
    _add_calibration_options(cal)
    cal.add_argument("--calibrators", type=_csv(str), default=CALIBRATORS)
    _add_run_options(cal)
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
    _add_reference_option(ptq)
    _add_run_options(ptq)
    cmp = sub.add_parser("compare", help="per-output and per-layer error between two ONNX models")
    cmp.add_argument("reference")
    cmp.add_argument("candidate")
    _add_data_options(cmp, required=True)
    cmp.add_argument("--split", default="val")
    cmp.add_argument("--count", type=int, default=64)
    cmp.add_argument("--top", type=int, default=15, help="rows of the per-layer table")
    cmp.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: default)")


def _mixed_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mixed", help="sensitivity-based mixed precision from ptq's result (thesis Alg. 1-2)"
    )
    p.add_argument("--onnx", help="the float model ptq quantized (default: model.fp32.onnx)")
    _add_data_options(p, required=True)
    p.add_argument("--preset", default="4MP-A8", help="4MP-A8 (default), 4MP-A6, 2MP-A8, ...")
    p.add_argument("--widths", type=_csv(int), help="weight bit widths to mix, e.g. 2,4,8")
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
    _add_reference_option(p)
    _add_run_options(p)


def _engine_parsers(sub: argparse._SubParsersAction) -> None:
    eng = sub.add_parser(
        "engines", help="build every model of a run for every backend (+ JSON metadata)"
    )
    _add_data_options(eng, required=False)
    eng.add_argument(
        "--backends", type=_csv(str), default=(), help="default: every one that builds here"
    )
    eng.add_argument("--precisions", type=_csv(str), default=("fp32", "fp16", "int8"))
    eng.add_argument(
        "--batch-sizes", type=_csv(int), default=(1, 8, 32, 128), help="the batch profile"
    )
    eng.add_argument("--workspace-mib", type=int, default=4096, help="TensorRT workspace")
    _add_run_options(eng)
    bench = sub.add_parser("bench", help="time every engine as trtexec does (bench/bench.json)")
    _add_data_options(bench, required=True)
    _add_model_options(bench, required=False)  # on a CUDA host: the PyTorch GPU reference
    bench.add_argument("--batch-sizes", type=_csv(int), default=(1, 8, 32, 128))
    bench.add_argument("--warmup-s", type=float, default=0.2, help="warm-up per batch size")
    bench.add_argument("--duration", type=float, default=3.0, help="timed seconds, at least")
    bench.add_argument("--iterations", type=int, default=10, help="timed iterations, at least")
    bench.add_argument("--rounds", type=int, default=3, help="interleaved rounds per batch size")
    bench.add_argument("--split", default="test", help="split for accuracy (default test)")
    bench.add_argument("--count", type=int, help="only the first N samples of the split")
    bench.add_argument(
        "--ort-baselines",
        action="store_true",
        help="also time ONNX Runtime's quantize_static models (its documented configurations)",
    )
    _add_reference_option(bench)
    _add_run_options(bench)


def _report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="report/report.md and figures: every engine of the bench")
    p.add_argument(
        "--batch-sizes",
        type=_csv(int),
        default=(),
        help="batch sizes whose latency the table shows (default: the bench's smallest and "
        "largest)",
    )
    _add_run_options(p)


def _triton_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("triton", help="a Triton model repository of the run's engines (triton/)")
    p.add_argument("--out", help="also copy the repository to this directory")
    p.add_argument(
        "--python-backend",
        action="store_true",
        help="also <model>_python in triton-python/: Triton's Python backend running "
        "quantpipe's runner (any engine; needs quantpipe where Triton runs)",
    )
    p.add_argument(
        "--select",
        type=_csv(str),
        default=(),
        help="engine file-name patterns, e.g. '*.int8.*' (default: every engine Triton serves)",
    )
    p.add_argument("--instances", type=int, default=1, help="model instances (default 1)")
    p.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=100,
        help="how long Triton may hold a request to fill a batch (default 100 µs)",
    )
    p.add_argument(
        "--preferred-batch-sizes",
        type=_csv(int),
        help="dynamic batching's preferred sizes (default: the profile's opt and max)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=256,  # quantpipe.serving.triton_config.DEFAULT_MAX_QUEUE
        help="requests each model may queue; Triton rejects more at once (default 256)",
    )
    _add_run_options(p)


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve engines through Triton (the serving environment)")
    p.add_argument("target", nargs="?", help="a run (directory or name) or one engine file")
    p.add_argument(
        "--repository",
        help="instead, a Python-backend model repository (quantpipe triton --python-backend)",
    )
    p.add_argument("--select", type=_csv(str), default=(), help="engine file-name patterns")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--max-queue-delay-us", type=int, default=100, help="dynamic batching wait")
    p.add_argument(
        "--max-queue",
        type=int,
        default=256,  # serving.triton_config.DEFAULT_MAX_QUEUE (not imported: CLI start-up)
        help="requests each engine's model may queue; Triton rejects more at once (default "
        "256; a --repository's config.pbtxt sets its own)",
    )
    p.add_argument("--runs-dir", default="runs", help="where run names are looked up")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per model (0: default)")


def _qat_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "qat", help="quantization-aware fine-tuning from ptq's result (torchrun: data-parallel)"
    )
    p.add_argument("--onnx", help="the float model ptq quantized (default: model.fp32.onnx)")
    _add_data_options(p, required=True)
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
    _add_reference_option(p)
    _add_run_options(p)
