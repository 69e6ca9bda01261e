"""The report's comparison table: per engine its variant, accuracy, shipped size, bits per
weight, compression, latency, throughput and speed-up (the columns of the BTC paper's
Table 2 and of the usual accuracy/size/latency tables, in one place), as markdown."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from quantpipe.bench.timing import TimingPlan

_FP32_VARIANTS = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8 PTQ"}
# Row order: the run's engines, then the PyTorch GPU reference, then ORT's baselines.
KINDS = ("engine", "pytorch", "baseline")


@dataclass(frozen=True)
class BatchFigures:
    """One engine at one batch size: latency per inference of the whole batch (ms)."""

    p50_ms: float
    p99_ms: float
    samples_per_s: float
    speedup: float | None  # FP32 engine's p50 ÷ this p50, same backend and batch


@dataclass(frozen=True)
class Row:
    """One engine of the bench, as the report shows it.

    Attributes:
        kind: `engine` (the run's), `pytorch` (the PyTorch GPU reference) or `baseline`
            (ONNX Runtime's quantize_static), as bench.json records it.
        shipped: the file a serving team receives (the engine, or `model.btc` for BTC).
        bits: weight bits per weight (BTC: effective bits, headers included).
        ratio: the FP32 engine's bytes ÷ `shipped_bytes` (same backend); None without one.
        batches: figures per batch size timed.
        note: what a reference or baseline is (its configuration).
    """

    variant: str
    backend: str
    kind: str
    accuracy: str
    accuracy_pct: float
    shipped: str
    shipped_bytes: int
    bits: float
    ratio: float | None
    batches: dict[int, BatchFigures] = field(default_factory=dict)
    note: str = ""

    @property
    def baseline(self) -> bool:
        return self.kind == "baseline"

    @property
    def reference(self) -> bool:
        """Not one of the run's engines: a point of comparison."""
        return self.kind != "engine"

    def latency_per_sample(self) -> dict[int, float]:
        """p50 ms per sample, by batch size (what batching buys)."""
        return {b: f.p50_ms / b for b, f in sorted(self.batches.items())}


def variant(model: str, precision: str) -> str:
    """What an engine is, from its model label and precision: `fp32`/`int8` → `INT8 PTQ`,
    `btc`/`fp32` → `BTC`, `btc`/`int8` → `BTC + INT8` (later labels, e.g. `qat`, alike)."""
    if model == "fp32":
        return _FP32_VARIANTS.get(precision, precision.upper())
    return model.upper() if precision == "fp32" else f"{model.upper()} + {precision.upper()}"


def variant_of(kind: str, model: str, precision: str, name: str) -> str:
    """What a bench entry is, by its kind (see `Row`)."""
    if kind == "baseline":
        return baseline_variant(name)
    return pytorch_variant(precision, name) if kind == "pytorch" else variant(model, precision)


def baseline_variant(name: str) -> str:
    """`ort-qdq-s8s8.onnx` → `ORT baseline qdq-s8s8`."""
    return f"ORT baseline {name.removesuffix('.onnx').removeprefix('ort-')}"


def pytorch_variant(precision: str, name: str) -> str:
    """`fp16`, `pytorch.torch-cuda.fp16.graphs` → `PyTorch FP16 (CUDA graphs)`."""
    mode = "CUDA graphs" if name.endswith(".graphs") else "eager"
    return f"PyTorch {precision.upper()} ({mode})"


def ordered(rows: Sequence[Row]) -> list[Row]:
    """The run's engines grouped by backend (in order of first appearance), then the
    PyTorch reference, baselines last; the order within a group is kept (the bench's,
    FP32 first)."""
    backends = list(dict.fromkeys(r.backend for r in rows))
    return sorted(rows, key=lambda r: (KINDS.index(r.kind), backends.index(r.backend)))


def comparison_table(rows: Sequence[Row], shown: Sequence[int], throughput_batch: int) -> str:
    """The markdown table: latency p50/p99 and speed-up at each `shown` batch size,
    throughput at `throughput_batch`."""
    headers = ["variant", "backend", "shipped file", "size", "bits/weight", "vs FP32 size"]
    headers += ["accuracy"]
    headers += [f"b{b} {q} ms" for b in shown for q in ("p50", "p99")]
    headers += [f"b{throughput_batch} samples/s"]
    headers += [f"b{b} speed-up" for b in shown]
    return markdown_table(headers, [_cells(r, shown, throughput_batch) for r in rows])


def _cells(row: Row, shown: Sequence[int], throughput_batch: int) -> list[str]:
    timed = [row.batches.get(b) for b in shown]
    cells = [row.variant, row.backend, f"`{row.shipped}`", size_text(row.shipped_bytes)]
    cells += [bits_text(row.bits), "-" if row.ratio is None else f"{row.ratio:.2f}×"]
    cells += [row.accuracy]
    cells += [ms_text(v) if t else "-" for t in timed for v in _p50_p99(t)]  # 2 per size
    top = row.batches.get(throughput_batch)
    cells += [f"{top.samples_per_s:,.0f}" if top else "-"]
    cells += [f"{t.speedup:.2f}×" if t and t.speedup else "-" for t in timed]
    return cells


def _p50_p99(t: BatchFigures | None) -> tuple[float, float]:
    return (t.p50_ms, t.p99_ms) if t else (0.0, 0.0)


def comparison_caption(metric: str, data: str) -> str:
    """What the accuracy and size columns mean, under the table."""
    return (
        f"Accuracy: {metric} on {data}, through each engine's own runner. Size: the shipped "
        "file (for BTC the `model.btc` container, decoded at load time, and its effective "
        "bits per weight, headers included)."
    )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table (pipes in cells escaped)."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *map(line, rows)])


def size_text(n: int) -> str:
    """Bytes as KiB below 1 MiB, else MiB: readable from tiny MLPs to ResNet-50."""
    return f"{n / 1024:,.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):,.2f} MiB"


def bits_text(bits: float) -> str:
    """`32`, `8`, `4.98`."""
    return f"{bits:.0f}" if float(bits).is_integer() else f"{bits:.2f}"


def ms_text(ms: float) -> str:
    """About three significant digits, never in exponent notation."""
    if ms >= 100:
        return f"{ms:,.0f}"
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 1 else f"{ms:.3f}"


def timing_method(plan: TimingPlan, rounds: int) -> list[str]:
    """How the latencies and throughputs were measured (trtexec's definitions)."""
    return [
        f"- Timing (trtexec's method): per engine and batch size, {plan.warmup_s:g} s of "
        f"warm-up, then inferences until both {plan.min_seconds:g} s and "
        f"{plan.min_iterations} iterations are reached, in {rounds} rounds in which the "
        "engines take turns (so that a shared machine's drift hits all alike).",
        "- Latency is the host wall time of one inference of the whole batch, input and output "
        "copies included; p50 and p99 are its median and 99th percentile.",
        "- Throughput is samples (queries × batch size) ÷ the total host wall time of the timed "
        "loop.",
        "- Speed-up is the FP32 engine's p50 ÷ this engine's p50, on the same backend "
        "and batch size (PyTorch's variants: PyTorch FP32 eager's); `vs FP32 size` is the "
        "same FP32 engine's bytes ÷ the shipped file's.",
    ]


def note_lines(rows: Sequence[Row]) -> list[str]:
    """What each reference and baseline is."""
    return [f"- {r.variant}: {r.note}" for r in rows if r.note]


def calibrator_table(
    scores: Mapping[str, tuple[float, float, float]], reference_test: float, source: str
) -> str:
    """PTQ's calibrators side by side: val %, val KL divergence, test % and the test change
    against the model quantized (`source`, whose test accuracy is `reference_test`)."""
    rows = [
        [name, f"{val:.2f}", f"{kl:.2e}", f"{test:.2f}", f"{test - reference_test:+.2f}"]
        for name, (val, kl, test) in scores.items()
    ]
    head = ["calibrator", "val %", "val KL", "test %", f"test Δ vs {source}"]
    return markdown_table(head, rows)


def figure_links(names: Sequence[str]) -> list[str]:
    """Markdown images, one paragraph each, linked relative to the report beside them."""
    return [line for name in names for line in (f"![{name.removesuffix('.png')}]({name})", "")]
