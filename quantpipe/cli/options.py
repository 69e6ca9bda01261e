"""Option groups that several subcommands share (run directory, execution, model, data,
reference) and the comma-separated-list type. Imports nothing heavy, as parser.py."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="run name: artifacts go to RUNS_DIR/RUN (default: model name)")
    p.add_argument("--runs-dir", default="runs", help="parent of run directories (default: runs)")
    p.add_argument("--run-dir", help="explicit run directory (overrides --run/--runs-dir)")
    p.add_argument("--force", action="store_true", help="rerun even if up to date")
    add_execution_options(p)


def add_execution_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads of ONNX Runtime and PyTorch (0: each library's default)",
    )


def add_reference_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reference",
        help="for data without labels: the FP32 ONNX model whose predictions stand in for "
        "labels (default: the run's model.fp32.onnx)",
    )


def add_model_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--model",
        required=required,
        help="registry name (see `quantpipe models`) or path/to/file.py:factory",
    )
    p.add_argument("--weights", help="checkpoint file (torch.save of a state dict)")
    p.add_argument("--input-shape", help="C,H,W for user models without an input_shape")


def add_data_options(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--data", required=required, help="NAME[:PATH] (see `quantpipe datasets`) or a path"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the data splits (default 0)")


def csv_of(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        return tuple(kind(v) for v in text.split(","))

    return parse
