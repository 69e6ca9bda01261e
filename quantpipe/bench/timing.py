"""A timed inference loop and its statistics, with trtexec's definitions.

trtexec runs a warm-up (200 ms by default), then iterations until both a minimum duration
(3 s) and a minimum count (10) are reached; it reports latency (per query: host wall time
of one inference, copies included) as min, max, mean, median and percentiles, and
throughput as queries over the total host wall time. quantpipe times the same way, and
where a runner can time the device alone (CUDA events), reports that separately.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

PERCENTILES = (90, 95, 99)


@dataclass(frozen=True)
class TimingPlan:
    warmup_s: float = 0.2
    min_seconds: float = 3.0
    min_iterations: int = 10
    max_iterations: int = 100_000

    def __post_init__(self) -> None:
        from quantpipe.errors import QuantpipeError

        if self.warmup_s < 0 or self.min_seconds < 0 or self.min_iterations < 1:
            raise QuantpipeError(
                f"timing needs warm-up ≥ 0 s, duration ≥ 0 s and ≥ 1 iteration; got "
                f"{self.warmup_s}, {self.min_seconds}, {self.min_iterations}"
            )


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds per inference of one batch."""

    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    min: float
    max: float

    @staticmethod
    def of(seconds: list[float]) -> LatencyStats:
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        p90, p95, p99 = np.percentile(ms, PERCENTILES)
        return LatencyStats(
            float(ms.mean()), float(np.median(ms)), float(p90), float(p95), float(p99),
            float(ms.min()), float(ms.max()),
        )  # fmt: skip


@dataclass(frozen=True)
class Timing:
    iterations: int
    total_s: float
    latency: list[float]  # seconds per inference, in order
    device: list[float]  # seconds of device compute per inference, where the runner times it


def time_inference(
    infer: Callable[[], object],
    plan: TimingPlan,
    device_s: Callable[[], float | None] | None = None,
) -> Timing:
    """Warm up, then call `infer` until the plan's duration and count are both reached.
    `device_s`, if given, reads the device time of the inference that just ran."""
    start = time.perf_counter()
    while time.perf_counter() - start < plan.warmup_s:
        infer()
    latencies: list[float] = []
    device: list[float] = []
    begin = now = time.perf_counter()
    while len(latencies) < plan.max_iterations and (
        len(latencies) < plan.min_iterations or now - begin < plan.min_seconds
    ):
        t0 = time.perf_counter()
        infer()
        now = time.perf_counter()
        latencies.append(now - t0)
        if device_s is not None and (d := device_s()) is not None:
            device.append(d)
    return Timing(len(latencies), now - begin, latencies, device)


def merge(timings: list[Timing]) -> Timing:
    """Rounds of the same measurement (interleaved with other engines) as one."""
    latency = [t for timing in timings for t in timing.latency]
    device = [t for timing in timings for t in timing.device]
    return Timing(len(latency), sum(t.total_s for t in timings), latency, device)
