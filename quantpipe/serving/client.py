"""Client-side helpers for a `quantpipe serve` process (tests and the load benchmarks):
readiness, closed-loop load with every answer checked, an open-loop flood, and the memory
of the server's whole process tree."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quantpipe.serving.watchdog import tree as descendants


def wait_until_ready(
    proc: subprocess.Popen, http_port: int, models: Sequence[str], timeout_s: float = 120.0
) -> Any:
    """An HTTP client of the server on 127.0.0.1:`http_port` once it and every one of
    `models` are ready; None if `proc` exits or `timeout_s` passes first (then `proc` is
    killed, and its output says why)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if client.is_server_ready() and all(map(client.is_model_ready, models)):
                return client
        except Exception:  # not listening yet
            pass
        time.sleep(0.5)
    proc.kill()
    return None


def tree(pid: int) -> list[int]:
    """`pid` and its live descendants (the quantpipe process, its watchdog, tritonserver,
    the Python-backend stubs and theirs)."""
    return descendants([pid])


def tree_rss(pid: int) -> int:
    """Resident memory, in bytes, of `pid` and its descendants: the sum of their VmRSS (so
    memory they share is counted once per process, which is the same at every sample)."""
    total = 0
    for p in tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def closed_loop(
    http_port: int, model: str, batches: Sequence[np.ndarray], expected: Sequence[np.ndarray],
    clients: int, seconds: float, names: tuple[str, str] = ("input", "output"),
) -> dict[str, Any]:  # fmt: skip
    """`clients` threads, each with its own HTTP client, sending `batches` back to back for
    `seconds` (each waits for its answer before sending again, so at most `clients`
    requests are ever queued: the server is kept busy without a queue that grows). An
    error is an exception or an answer that is not `expected` (to 1e-4): counted, with the
    first one's text. Returns requests, errors, first_error, seconds, requests_per_s,
    p50_ms, p95_ms and p99_ms."""
    import tritonclient.http as httpclient

    inp, out = names
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    first_error: list[str] = []
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(k: int) -> None:
        c = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}", network_timeout=60.0)
        start.wait()
        i = k
        while time.perf_counter() < stop_at[0]:
            x, want = batches[i % len(batches)], expected[i % len(batches)]
            one = httpclient.InferInput(inp, list(x.shape), "FP32")
            one.set_data_from_numpy(x)
            t = time.perf_counter()
            try:
                got = c.infer(model, [one]).as_numpy(out)
                if got is None or not np.allclose(got, want, rtol=1e-4, atol=1e-4):
                    errors[k] += 1
                    first_error.append(f"a wrong answer to batch {i % len(batches)}")
            except Exception as e:  # counted and reported: the caller decides
                errors[k] += 1
                first_error.append(str(e)[:300])
            latencies[k].append(time.perf_counter() - t)
            i += clients
        c.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    ms = np.asarray([x for lat in latencies for x in lat]) * 1000
    return {
        "requests": len(ms),
        "errors": sum(errors),
        "first_error": first_error[0] if first_error else None,
        "seconds": elapsed,
        "requests_per_s": len(ms) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p95_ms": float(np.percentile(ms, 95)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
    }


def soak(
    pid: int, http_port: int, model: str, batches: Sequence[np.ndarray],
    expected: Sequence[np.ndarray], clients: int, seconds: float, warm_up_s: float = 3.0,
    sample_every_s: float = 5.0, names: tuple[str, str] = ("input", "output"),
) -> dict[str, Any]:  # fmt: skip
    """`closed_loop` for `seconds` after `warm_up_s` of the same load, with the resident
    memory of the server's process tree (`pid` and descendants) at the start (after the
    warm-up: the first requests allocate buffers and shared memory for good), every
    `sample_every_s` and at the end. The figures of `closed_loop`, plus clients, rss_start,
    rss_end (bytes) and rss_samples_mib."""
    closed_loop(http_port, model, batches, expected, clients, warm_up_s, names)
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(sample_every_s):
            samples.append(round(tree_rss(pid) / 2**20, 1))

    sampler = threading.Thread(target=sample, daemon=True)
    start = tree_rss(pid)
    sampler.start()
    try:
        figures = closed_loop(http_port, model, batches, expected, clients, seconds, names)
    finally:
        done.set()
        sampler.join()
    end = tree_rss(pid)
    return {
        "clients": clients, **figures, "rss_start": start, "rss_end": end,
        "rss_samples_mib": samples,
    }  # fmt: skip


# Triton's answer to a request past a model's bounded queue (gRPC UNAVAILABLE).
REJECTED = "Exceeds maximum queue size"
Outcome = tuple[str, float, Any]  # answered/rejected/error, seconds, the answer or message


def send_at_once(
    grpc_port: int, model: str, x: np.ndarray, count: int, concurrency: int,
    timeout_s: float, names: tuple[str, str] = ("input", "output"),
) -> list[Outcome]:  # fmt: skip
    """`count` requests of `x` over gRPC with `concurrency` of them in flight at once (an
    open loop: nobody waits for an answer before sending), each with a deadline of
    `timeout_s`. Each outcome is "answered" (with the output), "rejected" (the bounded
    queue was full) or "error" (with the message), and the seconds it took."""
    import asyncio

    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as grpcaio
    from tritonclient.utils import InferenceServerException

    inp, out = names

    async def send() -> list[Outcome]:
        client = grpcaio.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        slots = asyncio.Semaphore(concurrency)

        async def one() -> Outcome:
            async with slots:
                request = grpcclient.InferInput(inp, list(x.shape), "FP32")
                request.set_data_from_numpy(x)
                began = time.perf_counter()
                try:
                    got = await client.infer(model, [request], client_timeout=timeout_s)
                    return "answered", time.perf_counter() - began, got.as_numpy(out)
                except Exception as e:  # a dead server's socket errors too: the caller judges
                    full = isinstance(e, InferenceServerException) and REJECTED in str(e)
                    return (
                        "rejected" if full else "error",
                        time.perf_counter() - began,
                        str(e)[:200],
                    )

        try:
            return await asyncio.gather(*(one() for _ in range(count)))
        finally:
            await client.close()

    return asyncio.run(send())
