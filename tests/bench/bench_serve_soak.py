"""Soak test of `quantpipe serve`: a real Triton server on 127.0.0.1 under closed-loop load at
its best sustainable rate for a long time, every answer checked, memory watched.

    python tests/bench/bench_serve_soak.py --duration 600 --out bench-results/serve-soak.json

Serves one engine (default: the INT8 CPU build of a tiny digits run built in a temporary
directory, or --run RUN's engine matching --select), finds the sustainable rate by trying
closed-loop client counts (--clients, default 1, 2, 4, 8, 16 and 32 for 5 s each: each
client waits for its answer, so at most that many requests ever wait and no queue grows)
and keeps the one with the most requests per second and no error, then soaks at it for
--duration seconds. The resident memory of the server's whole process tree (quantpipe,
its watchdog, tritonserver, the Python-backend stubs and theirs; the sum of their VmRSS)
is taken after a warm-up, every 10 s and at the end. Then overload on the same server:
--flood requests (default 2,048, 8x the default queue) sent over gRPC all at once; each
must end within its 30 s deadline, answered correctly or rejected by the bounded queue
(Triton's default_queue_policy, set by serve's --max-queue), and the server must answer
normally afterwards. The JSON holds requests, errors, throughput, p50/p99 latency, RSS
start/end and samples, the flood's counts and times, and the CPU model; stops by itself.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from quantpipe.engines.backend import RunnerOptions
from quantpipe.engines.machine import cpu_info
from quantpipe.engines.metadata import load_engine
from quantpipe.engines.registry import get_backend
from quantpipe.pipeline.atomic import atomic_path
from quantpipe.serving.client import closed_loop, send_at_once, soak, wait_until_ready
from quantpipe.serving.selection import run_engines
from quantpipe.serving.server import free_ports
from quantpipe.serving.triton_config import model_name

ROOT = Path(__file__).parents[2]
SERVE = ROOT / ".venv-serve" / "bin" / "quantpipe"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds of soak (600)")
    p.add_argument("--out", type=Path, default=Path("bench-results/serve-soak.json"))
    p.add_argument("--run", type=Path, help="a run with engines (default: a tiny digits run)")
    p.add_argument("--select", default="*.int8.*", help="the engine to serve (one)")
    p.add_argument("--clients", default="1,2,4,8,16,32", help="client counts to try")
    p.add_argument("--try-seconds", type=float, default=5.0, help="per client count")
    p.add_argument("--max-queue", type=int, default=256, help="the server's --max-queue")
    p.add_argument("--flood", type=int, default=2048, help="requests sent at once after")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve-soak-") as tmp:
        run = args.run or _digits_run(Path(tmp) / "run")
        engine = run_engines(run, (args.select,))[0]
        report = _bench(run, engine, args)
    text = json.dumps(report, indent=2) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as out:
        out.write_text(text)
    s = report["soak"]
    print(
        f"{report['model']}: {s['clients']} clients for {s['seconds']:.0f} s: {s['requests']} "
        f"requests, {s['errors']} errors, {s['requests_per_s']:.1f} req/s, p50 "
        f"{s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms; RSS {s['rss_start'] / 2**20:.1f} -> "
        f"{s['rss_end'] / 2**20:.1f} MiB; CPU {report['cpu']}; wrote {args.out}"
    )
    f = report["flood"]
    print(
        f"flood: {f['requests']} requests at once on a queue of {args.max_queue}: "
        f"{f['answered']} answered ({f['wrong_answers']} wrong), {f['rejected']} rejected, "
        f"{f['other_errors']} other errors, all ended in {f['wall_s']:.2f} s (slowest "
        f"{f['slowest_ms']:.0f} ms); afterwards {f['after']['errors']} errors in "
        f"{f['after']['requests']} requests"
    )
    if s["errors"] or f["other_errors"] or f["wrong_answers"] or f["after"]["errors"]:
        raise SystemExit("errors under soak or overload: see the JSON")


def _digits_run(path: Path) -> Path:
    """digits-mlp trained briefly, quantized and built as ONNX Runtime CPU engines."""
    sys.path.insert(0, str(ROOT))  # run as a script: tests/ is not importable otherwise
    from tests.conftest import digits_run_with_engines

    return digits_run_with_engines(path, "1,16")


def _bench(run: Path, engine: Path, args: argparse.Namespace) -> dict[str, Any]:
    meta = load_engine(engine)
    name = model_name(meta)
    inp, out = meta.inputs[0].name, meta.outputs[0].name
    shape = [d if isinstance(d, int) else 1 for d in meta.inputs[0].shape]
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal(shape).astype(np.float32) for _ in range(64)]
    with get_backend(meta.backend).runner(engine, RunnerOptions(threads=1)) as runner:
        expected = [next(iter(runner.infer({inp: x}).values())) for x in batches]
    with _Server(run, args.select, name, args.max_queue) as (proc, http, grpc):
        # The first requests allocate the server's buffers (measured: ~3 s for the first).
        closed_loop(http, name, batches, expected, 4, args.try_seconds, (inp, out))
        tried = []
        for clients in (int(c) for c in args.clients.split(",")):
            figures = closed_loop(
                http, name, batches, expected, clients, args.try_seconds, (inp, out)
            )
            tried.append({"clients": clients, **figures})
            print(
                f"{clients:>3} clients: {figures['requests_per_s']:8.1f} req/s, p99 "
                f"{figures['p99_ms']:.2f} ms, errors {figures['errors']}"
            )
        clean = [t for t in tried if t["errors"] == 0]
        if not clean:
            raise SystemExit(f"every client count had errors: {tried[0]['first_error']}")
        best = max(clean, key=lambda t: t["requests_per_s"])
        began = time.time()
        figures = soak(
            proc.pid, http, name, batches, expected, best["clients"], args.duration,
            warm_up_s=10.0, sample_every_s=10.0, names=(inp, out),
        )  # fmt: skip
        flood = _flood(grpc, name, batches[0], expected[0], args.flood, (inp, out))
        flood["after"] = closed_loop(http, name, batches, expected, 1, 2.0, (inp, out))
    return {
        "cpu": cpu_info().describe(),
        "server": "Triton Inference Server via nvidia-pytriton 0.7.0 (.venv-serve), HTTP",
        "model": name,
        "engine": engine.name,
        "max_queue": args.max_queue,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(began)),
        "tried": tried,
        "soak": figures,
        "rss_growth_mib": (figures["rss_end"] - figures["rss_start"]) / 2**20,
        "flood": flood,
    }


def _flood(
    grpc: int, model: str, x: np.ndarray, want: np.ndarray, count: int, names: tuple[str, str]
) -> dict[str, Any]:
    began = time.perf_counter()
    outcomes = send_at_once(grpc, model, x, count, count, 30.0, names)
    wall = time.perf_counter() - began
    kinds = [k for k, _, _ in outcomes]
    wrong = sum(
        1 for k, _, a in outcomes if k == "answered" and not np.allclose(a, want, 1e-4, 1e-4)
    )
    errors = [a for k, _, a in outcomes if k == "error"]
    return {
        "requests": count,
        "answered": kinds.count("answered"),
        "rejected": kinds.count("rejected"),
        "other_errors": len(errors),
        "first_other_error": errors[0] if errors else None,
        "wrong_answers": wrong,
        "wall_s": wall,
        "slowest_ms": 1000 * max(s for _, s, _ in outcomes),
    }


class _Server:
    """The serving process on free loopback ports, once its model is ready; stopped with
    SIGTERM on exit."""

    def __init__(self, run: Path, select: str, model: str, max_queue: int) -> None:
        self.run, self.select, self.model, self.max_queue = run, select, model, max_queue

    def __enter__(self) -> tuple[subprocess.Popen, int, int]:
        http, grpc, metrics = free_ports(3)
        argv = [str(SERVE), "serve", str(self.run), "--select", self.select]
        argv += ["--max-queue", str(self.max_queue), "--http-port", str(http)]
        argv += ["--grpc-port", str(grpc), "--metrics-port", str(metrics)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        if wait_until_ready(self.proc, http, [self.model]) is None:
            raise SystemExit(f"the server did not start: {' '.join(argv)}")
        return self.proc, http, grpc

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


if __name__ == "__main__":
    main()
