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
        args.threads, args.max_queue,
    )  # fmt: skip
    repository = Path(args.repository) if args.repository else None
    if repository is not None:
        if args.target or not (repository.is_dir() and any(repository.glob("*/config.pbtxt"))):
            raise QuantpipeError(
                f"--repository {repository}: give a model repository (directories with a "
                "config.pbtxt, as `quantpipe triton --python-backend` writes in triton-python/) "
                "and no run or engine"
            )
        engines: list[Path] = []
    elif args.target is None:
        raise QuantpipeError("serve: give a run or an engine file, or --repository DIR")
    else:
        engines = _engines(args.target, args.runs_dir, tuple(args.select))

    def ready(models: list[ServedModel]) -> None:
        if repository is not None:
            names = sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))
            print(f"  the models of {repository}: {', '.join(names)}")
        for m in models:
            raw = f" (and {m.name}_raw: uint8 images, preprocessed here)" if m.raw else ""
            print(
                f"  {m.name}: {m.engine.name}, max batch {m.meta.profile.max}, queue "
                f"{options.max_queue} requests{raw}"
            )
        print(
            f"serving on http://{options.host}:{options.http_port} "
            f"(gRPC {options.host}:{options.grpc_port}, metrics "
            f"http://{options.host}:{options.metrics_port}/metrics; Triton's log: {log_file()}); "
            "Ctrl-C stops",
            flush=True,
        )

    serve(engines, options, ready, repository=repository)
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
