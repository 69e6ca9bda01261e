"""`quantpipe serve RUN_OR_ENGINE`: serve a run's engines (or one engine) through Triton
until interrupted. Runs in the serving environment (see quantpipe/serving/server.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from quantpipe.errors import QuantpipeError


def cmd_serve(args: argparse.Namespace) -> int:
    from quantpipe.serving.server import (
        ServedModel,
        ServeOptions,
        check_environment,
        log_file,
        serve,
    )

    check_environment()
    options = ServeOptions(
        args.host, args.http_port, args.grpc_port, args.metrics_port, args.max_queue_delay_us,
        args.threads,
    )  # fmt: skip
    engines = _engines(args.target, args.runs_dir, tuple(args.select))

    def ready(models: list[ServedModel]) -> None:
        for m in models:
            raw = f" (and {m.name}_raw: uint8 images, preprocessed here)" if m.raw else ""
            print(f"  {m.name}: {m.engine.name}, max batch {m.meta.profile.max}{raw}")
        print(
            f"serving {len(models)} engines on http://{options.host}:{options.http_port} "
            f"(gRPC {options.host}:{options.grpc_port}, metrics "
            f"http://{options.host}:{options.metrics_port}/metrics; Triton's log: {log_file()}); "
            "Ctrl-C stops",
            flush=True,
        )

    serve(engines, options, ready)
    return 0


def _engines(target: str, runs_dir: str, select: tuple[str, ...]) -> list[Path]:
    """An engine file, a run directory, or a run's name under --runs-dir."""
    from quantpipe.serving.selection import run_engines

    path = Path(target)
    if path.is_file():
        return [path]
    for run in (path, Path(runs_dir) / target):
        if (run / "manifest.json").is_file():
            return run_engines(run, select)
    raise QuantpipeError(
        f"{target} is neither an engine file nor a run (no manifest.json there or under "
        f"{runs_dir}/): give engines/NAME.onnx or a run that `quantpipe engines` built"
    )
