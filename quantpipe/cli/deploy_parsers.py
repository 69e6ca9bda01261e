"""The subcommands that take a run's models to the serving team: engines, bench, report,
triton and serve. Imports nothing heavy, as parser.py."""

from __future__ import annotations

import argparse

from quantpipe.cli.options import (
    add_data_options,
    add_model_options,
    add_reference_option,
    add_run_options,
    csv_of,
)


def add_engine_parsers(sub: argparse._SubParsersAction) -> None:
    eng = sub.add_parser(
        "engines", help="build every model of a run for every backend (+ JSON metadata)"
    )
    add_data_options(eng, required=False)
    eng.add_argument(
        "--backends", type=csv_of(str), default=(), help="default: every one that builds here"
    )
    eng.add_argument("--precisions", type=csv_of(str), default=("fp32", "fp16", "int8"))
    eng.add_argument(
        "--batch-sizes", type=csv_of(int), default=(1, 8, 32, 128), help="the batch profile"
    )
    eng.add_argument("--workspace-mib", type=int, default=4096, help="TensorRT workspace")
    add_run_options(eng)
    bench = sub.add_parser("bench", help="time every engine as trtexec does (bench/bench.json)")
    add_data_options(bench, required=True)
    add_model_options(bench, required=False)  # on a CUDA host: the PyTorch GPU reference
    bench.add_argument("--batch-sizes", type=csv_of(int), default=(1, 8, 32, 128))
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
    add_reference_option(bench)
    add_run_options(bench)


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="report/report.md and figures: every engine of the bench")
    p.add_argument(
        "--batch-sizes",
        type=csv_of(int),
        default=(),
        help="batch sizes whose latency the table shows (default: the bench's smallest and "
        "largest)",
    )
    add_run_options(p)


def add_triton_parser(sub: argparse._SubParsersAction) -> None:
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
        type=csv_of(str),
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
        type=csv_of(int),
        help="dynamic batching's preferred sizes (default: the profile's opt and max)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=256,  # quantpipe.serving.triton_config.DEFAULT_MAX_QUEUE
        help="requests each model may queue; Triton rejects more at once (default 256)",
    )
    add_run_options(p)


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve engines through Triton (the serving environment)")
    p.add_argument("target", nargs="?", help="a run (directory or name) or one engine file")
    p.add_argument(
        "--repository",
        help="instead, a Python-backend model repository (quantpipe triton --python-backend)",
    )
    p.add_argument("--select", type=csv_of(str), default=(), help="engine file-name patterns")
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
