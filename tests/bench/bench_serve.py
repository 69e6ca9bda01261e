"""Load test of `quantpipe serve`: a real Triton server on 127.0.0.1 under concurrent clients.

    python tests/bench/bench_serve.py --run runs/demo --out bench-results/bench-serve.json

Starts `.venv-serve/bin/quantpipe serve RUN` for the selected engines (default: the FP32
model's FP32 and INT8 CPU builds), then for each engine and each concurrency (default 1, 8
and 32 clients, 30 s each) runs that many threads, each with its own tritonclient HTTP
client, sending requests of --batch test images back to back; records every request's
latency and every error (an exception, or an answer that is not the runner's own in-process
answer to that batch). Then calls the same runner in-process, one thread, on the same
batches for as long, so the serving overhead is a measured ratio. Stops by itself; loopback
only. The JSON (with the CPU named) goes to --out and to RUN/bench/serve.json, where
`quantpipe report` finds it.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from quantpipe.artifacts import SERVE_BENCH_JSON
from quantpipe.engines.backend import RunnerOptions
from quantpipe.engines.machine import cpu_info
from quantpipe.engines.metadata import load_engine
from quantpipe.engines.registry import get_backend
from quantpipe.errors import QuantpipeError
from quantpipe.pipeline.atomic import atomic_path
from quantpipe.serving.client import closed_loop, wait_until_ready
from quantpipe.serving.selection import run_engines
from quantpipe.serving.server import free_ports
from quantpipe.serving.triton_config import model_name

ROOT = Path(__file__).parents[2]
SERVE = ROOT / ".venv-serve" / "bin" / "quantpipe"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=Path("runs/demo"))
    p.add_argument("--data", default="fashion-mnist", help="data set of the test images")
    p.add_argument("--select", default="fp32.onnxruntime-cpu.fp32.*,fp32.onnxruntime-cpu.int8.*")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--batch", type=int, default=1, help="images per request")
    p.add_argument("--out", type=Path, default=Path("bench-results/bench-serve.json"))
    args = p.parse_args()
    try:
        engines = run_engines(args.run, tuple(args.select.split(",")))
    except QuantpipeError as e:
        raise SystemExit(f"bench_serve: {e} (make demo makes runs/demo)") from None
    batches = _batches(args.run, args.data, args.batch)
    levels = [int(c) for c in args.concurrency.split(",")]
    names = [model_name(load_engine(e)) for e in engines]
    with _server(args.run, args.select, names) as http:
        results = [
            _engine(engine, http, batches, levels, args.seconds, args.batch) for engine in engines
        ]
    report = {
        "cpu": cpu_info().describe(),
        "server": "Triton Inference Server via nvidia-pytriton 0.7.0 (.venv-serve), HTTP",
        "batch": args.batch,
        "seconds_per_level": args.seconds,
        "data": args.data,
        "engines": results,
    }
    text = json.dumps(report, indent=2) + "\n"
    for path in (args.out, args.run / SERVE_BENCH_JSON):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    for e in results:
        for level in e["levels"]:
            print(_level_line(e["model"], level))
        print(
            f"{e['model']}: in-process {e['in_process']['requests_per_s']:.1f} req/s; serving at "
            f"1 client is {e['serving_over_in_process_latency_p50']:.1f}x its p50 latency"
        )
    print(f"CPU: {report['cpu']}; wrote {args.out} and {args.run / SERVE_BENCH_JSON}")


def _level_line(model: str, level: dict[str, Any]) -> str:
    return (
        f"{model}: {level['clients']:>2} clients: {level['requests_per_s']:8.1f} req/s, "
        f"{level['images_per_s']:8.1f} img/s, p50 {level['p50_ms']:.2f} ms, "
        f"p99 {level['p99_ms']:.2f} ms, errors {level['errors']}"
    )


def _batches(run: Path, data: str, batch: int) -> list[np.ndarray]:
    """Up to 64 request batches of real test images, preprocessed as the model wants."""
    from quantpipe.data.selection import select
    from quantpipe.export.metadata import require_contract
    from quantpipe.stages.common import DataRef

    pre = require_contract(run / "model.fp32.onnx").preprocessing
    test = select(DataRef(data).open(), "test", pre, 0, count=64 * batch)
    x, _ = test.arrays()
    return [x[i : i + batch] for i in range(0, len(x) - batch + 1, batch)]


class _server:
    """The serving process on free loopback ports, once every model is ready; stopped with
    SIGTERM on exit."""

    def __init__(self, run: Path, select: str, models: list[str]) -> None:
        self.run, self.select, self.models = run, select, models

    def __enter__(self) -> int:
        http, grpc, metrics = free_ports(3)
        argv = [str(SERVE), "serve", str(self.run), "--select", self.select]
        argv += ["--http-port", str(http), "--grpc-port", str(grpc)]
        argv += ["--metrics-port", str(metrics)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if wait_until_ready(self.proc, http, self.models) is None:
            out = self.proc.stdout.read()[-2000:] if self.proc.stdout else b""
            raise SystemExit(f"the server did not start: {out!r}")
        return http

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def _engine(
    engine: Path, http: int, batches: list[np.ndarray], levels: list[int], seconds: float,
    batch: int,
) -> dict[str, Any]:  # fmt: skip
    meta = load_engine(engine)
    name = model_name(meta)
    inp, out = meta.inputs[0].name, meta.outputs[0].name
    with get_backend(meta.backend).runner(engine, RunnerOptions()) as runner:
        expected = [next(iter(runner.infer({inp: x}).values())) for x in batches]
    figures = []
    for clients in levels:
        level = closed_loop(http, name, batches, expected, clients, seconds, (inp, out))
        images = level["requests_per_s"] * batch
        figures.append({"clients": clients, **level, "images_per_s": images})
    local = _in_process(engine, inp, batches, seconds, batch)
    one = next(f for f in figures if f["clients"] == min(levels))
    return {
        "engine": engine.name,
        "model": name,
        "levels": figures,
        "in_process": local,
        "serving_over_in_process_latency_p50": one["p50_ms"] / local["p50_ms"],
        "serving_over_in_process_throughput_best": max(f["requests_per_s"] for f in figures)
        / local["requests_per_s"],
    }


def _in_process(
    engine: Path, inp: str, batches: list[np.ndarray], seconds: float, batch: int
) -> dict[str, Any]:
    meta = load_engine(engine)
    latencies = []
    with get_backend(meta.backend).runner(engine, RunnerOptions()) as runner:
        began = time.perf_counter()
        i = 0
        while time.perf_counter() - began < seconds:
            t = time.perf_counter()
            runner.infer({inp: batches[i % len(batches)]})
            latencies.append(time.perf_counter() - t)
            i += 1
        elapsed = time.perf_counter() - began
    return _figures(latencies, elapsed, batch)


def _figures(latencies: list[float], elapsed: float, batch: int) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "requests_per_s": len(latencies) / elapsed,
        "images_per_s": len(latencies) * batch / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


if __name__ == "__main__":
    main()
