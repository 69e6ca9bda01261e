"""`quantpipe triton`: run the triton stage, then (with --out) copy its repository where a
Triton server reads it, replacing each model directory whole."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from quantpipe.cli.stage_commands import _run, open_run
from quantpipe.errors import QuantpipeError
from quantpipe.serving.triton_config import ServingOptions
from quantpipe.stages.triton import TritonConfig, TritonStage


def cmd_triton(args: argparse.Namespace) -> int:
    serving = ServingOptions(
        args.instances, args.max_queue_delay_us, args.preferred_batch_sizes, args.max_queue
    )
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise QuantpipeError(f"--out {out} is a file: give a directory for the repository")
    with open_run(args, "run") as run:
        config = TritonConfig(tuple(args.select), serving, args.python_backend)
        outcome = _run(run, TritonStage(config), args)
        if out is not None:
            for model in outcome.result.models:
                # <repository>/<model>/<version>/<file>: the model's directory in the run.
                copy_model(run.path / Path(model.file).parents[1], out / model.name)
            print(f"  copied {len(outcome.result.models)} models to {out}")
    return 0


def copy_model(src: Path, dst: Path) -> None:
    """Copy one model directory to `dst`: built beside it, then swapped in, so a server
    polling the repository never sees half a model, and a failed copy keeps the old one."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=f".{dst.name}.") as tmp:
        staged = Path(tmp) / dst.name
        shutil.copytree(src, staged)
        old = Path(tmp) / "old"
        if dst.exists():
            dst.rename(old)
        staged.rename(dst)
