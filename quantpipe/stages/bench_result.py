"""What `bench` measured, typed, and the console table it prints."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from quantpipe.artifacts import FP32
from quantpipe.bench.timing import LatencyStats, Timing, TimingPlan
from quantpipe.data.selection import DataInfo
from quantpipe.engines.machine import CpuInfo, GpuInfo
from quantpipe.evaluate.evaluate import Score
from quantpipe.pipeline.results import JsonResult
from quantpipe.text_table import format_table


@dataclass(frozen=True)
class BatchTiming:
    """One engine at one batch size. Latency is per inference of the whole batch (host
    wall time, copies included: trtexec's latency); throughput is queries (inferences)
    per second and samples per second over the total host wall time of the timed loop."""

    batch: int
    iterations: int
    total_s: float
    latency_ms: LatencyStats
    queries_per_s: float
    samples_per_s: float
    device_ms: LatencyStats | None = None  # GPU compute alone (CUDA events), where timed
    speedup_vs_fp32: float | None = None  # FP32 median ÷ this median, same backend and batch

    @staticmethod
    def of(batch: int, timing: Timing) -> BatchTiming:
        per_s = timing.iterations / timing.total_s
        stats = LatencyStats.of(timing.latency)
        device = LatencyStats.of(timing.device) if timing.device else None
        return BatchTiming(
            batch, timing.iterations, timing.total_s, stats, per_s, batch * per_s, device
        )

    def against(self, fp32: BatchTiming) -> BatchTiming:
        """This timing with its speed-up over the FP32 engine's at the same batch."""
        return dataclasses.replace(
            self, speedup_vs_fp32=fp32.latency_ms.median / self.latency_ms.median
        )


@dataclass(frozen=True)
class EngineBench:
    name: str
    kind: str  # "engine" (a run's engine) or "baseline" (ORT quantize_static)
    backend: str
    model: str
    precision: str
    description: str
    bytes: int
    weight_bits: int
    accuracy: Score
    batches: list[BatchTiming]
    compression_vs_fp32: float | None = None  # FP32 engine bytes ÷ these bytes

    def at(self, batch: int) -> BatchTiming | None:
        return next((b for b in self.batches if b.batch == batch), None)


@dataclass(frozen=True)
class Machine:
    cpu: CpuInfo
    gpu: GpuInfo | None
    threads: int
    runtimes: dict[str, str]

    def describe(self) -> str:
        where = self.gpu.describe() if self.gpu else self.cpu.describe()
        versions = ", ".join(f"{k} {v}" for k, v in self.runtimes.items())
        return f"{where}; {self.threads} threads; {versions}"


@dataclass(frozen=True)
class BenchResult(JsonResult):
    machine: Machine
    plan: TimingPlan
    batch_sizes: list[int]
    data: DataInfo
    engines: list[EngineBench]
    rounds: int = 1  # the engines took turns this many times per batch size

    def lines(self) -> list[str]:
        return [f"{len(self.engines)} engines timed on {self.machine.describe()}"]

    def table(self) -> str:
        headers = ["engine", "accuracy", "size", *[f"b{b} p50 ms" for b in self.batch_sizes]]
        headers += [f"b{b} ÷ FP32" for b in self.batch_sizes]
        rows = [self._row(e) for e in self.engines]
        a = self.engines[0].accuracy if self.engines else None
        note = f"Accuracy on {a.data}." if a else ""
        return format_table(headers, rows) + f"\n{note}\nMachine: {self.machine.describe()}."

    def _row(self, e: EngineBench) -> list[str]:
        timings = [e.at(b) for b in self.batch_sizes]
        p50 = [f"{t.latency_ms.median:.2f}" if t else "-" for t in timings]
        speed = [
            f"{1 / t.speedup_vs_fp32:.2f}" if t and t.speedup_vs_fp32 else "-" for t in timings
        ]
        return [e.name, e.accuracy.short(), f"{e.bytes / 1024:.0f} KiB", *p50, *speed]


def with_ratios(benches: list[EngineBench]) -> list[EngineBench]:
    """Speed-up and compression against the FP32 engine of the run's FP32 model on the same
    backend: what every other engine (BTC-decoded, FP16, INT8, a baseline) replaces. The
    PyTorch GPU variants are compared with PyTorch FP32 eager."""
    out = []
    for e in benches:
        ref = _fp32_of(benches, e)
        if ref is None:
            out.append(e)
            continue
        batches = [t.against(r) if (r := ref.at(t.batch)) else t for t in e.batches]
        ratio = ref.bytes / e.bytes
        out.append(dataclasses.replace(e, batches=batches, compression_vs_fp32=ratio))
    return out


def _fp32_of(benches: list[EngineBench], e: EngineBench) -> EngineBench | None:
    kind = "pytorch" if e.kind == "pytorch" else "engine"
    same = (b for b in benches if b.kind == kind and b.backend == e.backend)
    return next((b for b in same if b.model == FP32 and b.precision == "fp32"), None)
