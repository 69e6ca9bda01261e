"""The CPU tactic pass: keep the stem convolution in float where this CPU runs it faster so.

TensorRT times every candidate kernel of a layer and keeps the fastest. ONNX Runtime's CPU
provider has no such choice, and its integer kernels are not always the faster ones: a
stem convolution with 3 input channels ran 1.30-1.44x *slower* as QLinearConv than as a
float Conv on an AVX-512 VNNI Xeon (tests/bench/bench_ptq.py, conv floor), while 3x3
convolutions with many channels ran at 0.33-0.57x.

Only a Conv that reads the graph input can stay float in the CPU build: ONNX Runtime
(1.32) quantizes the float weights of a Conv between a DequantizeLinear and a
QuantizeLinear itself and runs it as QLinearConv anyway, and cutting those conversions
out would cost the integer kernels around it. Timing the Conv alone misleads (alone, both
ways pay the NCHW/NHWC transposes that the whole graph pays once), so each candidate is
decided by timing the whole CPU build both ways, interleaved, at batch 1 and 8: float
where it is faster by ``MARGIN`` at both.

The times are cached per CPU model and ONNX Runtime version in a JSON file (the run
directory's ``tactics/``, as TensorRT keeps a timing cache), keyed by the model's sha256
and the node: a rerun decides the same way; a build on another CPU measures afresh. The
portable Q/DQ model is not touched.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from quantpipe.quantize.graph import GraphIndex

MARGIN = 0.97  # float only where the whole model takes at most 97 % of the integer time
BATCHES = (1, 8)  # float only where it is faster at both: latency and throughput serving
_WARMUP, _ROUNDS = 2, 15
_BUDGET_S = 3.0  # timed seconds per batch size and candidate, about
_CACHE_FORMAT = 3


@dataclass(frozen=True)
class Tactic:
    """One candidate Conv and the whole CPU build's latency each way, in ms, at each of
    ``BATCHES``."""

    node: str
    int8_ms: tuple[float, ...]
    fp32_ms: tuple[float, ...]

    @property
    def keep_float(self) -> bool:
        return all(f <= MARGIN * i for i, f in zip(self.int8_ms, self.fp32_ms, strict=True))

    def describe(self) -> str:
        way = "float" if self.keep_float else "INT8"
        times = "; ".join(
            f"batch {b}: {i:.2f} ms with it INT8, {f:.2f} ms float"
            for b, i, f in zip(BATCHES, self.int8_ms, self.fp32_ms, strict=True)
        )
        return f"{self.node}: {way} (whole model, {times})"


def cache_file(directory: Path, cpu_model: str, ort_version: str) -> Path:
    """`<directory>/cpu.<cpu model>.ort<version>.json` (non-alphanumerics as '-')."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", cpu_model).strip("-") or "unknown-cpu"
    return directory / f"cpu.{slug}.ort{ort_version}.json"


def input_convs(model: onnx.ModelProto) -> list[str]:
    """The candidates: Convs with constant weights that read a graph input."""
    index = GraphIndex(model)
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Conv"
        and n.input[0] in index.inputs
        and index.constant(n.input[1]) is not None
    ]


def stem_tactics(
    model: onnx.ModelProto,
    build: Callable[[list[str]], onnx.ModelProto],
    cache: Path,
    threads: int,
) -> list[Tactic]:
    """Each candidate of ``model`` timed both ways, ``build(float_convs)`` making the CPU
    build; read from ``cache`` where it was timed before (written atomically otherwise).
    A model whose input shape is not static apart from the batch is not timed."""
    from quantpipe.pipeline.atomic import atomic_write_text

    candidates = input_convs(model)
    feed = batch1_feed(model) if candidates else None
    if feed is None:
        return []
    feeds = [{k: np.repeat(v, batch, axis=0) for k, v in feed.items()} for batch in BATCHES]
    sha = hashlib.sha256(model.SerializeToString()).hexdigest()
    known = _read_cache(cache)
    tactics, measured = [], False
    baseline = None
    for node in candidates:
        key = f"{sha}:{node}"
        if key not in known:
            baseline = baseline or build([])
            floating = build([node])
            known[key] = [time_models(baseline, floating, f, threads) for f in feeds]
            measured = True
        int8, fp32 = zip(*known[key], strict=True)
        tactics.append(Tactic(node, tuple(int8), tuple(fp32)))
    if measured:
        payload = {"format": _CACHE_FORMAT, "cases": known}
        atomic_write_text(cache, json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return tactics


def _read_cache(path: Path) -> dict[str, list[list[float]]]:
    """The cached times, or none when the file is missing, damaged or of another format
    (the pass then measures again: a cache is never an error)."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(payload, dict) or payload.get("format") != _CACHE_FORMAT:
        return {}
    cases = payload.get("cases")
    if not isinstance(cases, dict):
        return {}
    return {k: [[float(t) for t in pair] for pair in v] for k, v in cases.items() if _valid(v)}


def _valid(value: object) -> bool:
    """[[int8 ms, float ms] per batch of BATCHES]."""
    return (
        isinstance(value, list)
        and len(value) == len(BATCHES)
        and all(
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(t, int | float) and t > 0 for t in pair)
            for pair in value
        )
    )


def batch1_feed(model: onnx.ModelProto) -> dict[str, np.ndarray] | None:
    """Seeded float inputs at batch 1, or None if an input is not float or not static."""
    index = GraphIndex(model)
    rng = np.random.default_rng(0)
    feed = {}
    for value in model.graph.input:
        if value.name not in index.inputs:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]
        if tensor.elem_type != onnx.TensorProto.FLOAT or not dims or not all(dims[1:]):
            return None
        feed[value.name] = rng.normal(size=(1, *dims[1:])).astype(np.float32)
    return feed


def time_models(
    integer: onnx.ModelProto, floating: onnx.ModelProto, feed: dict[str, np.ndarray], threads: int
) -> list[float]:
    """[integer ms, float ms]: medians of interleaved whole-model runs."""
    from quantpipe.engines.ort_session import OrtConfig, make_session

    config = OrtConfig(threads=threads, spinning=False)
    sessions = [make_session(m, config) for m in (integer, floating)]
    times: list[list[float]] = [[], []]
    start = time.perf_counter()
    for _ in range(_WARMUP):
        for s in sessions:
            s.run(None, feed)
    # A large model (a segmentation net at 512x1024) gets fewer rounds, so the pass stays
    # within a few seconds per batch size: at least 3, at most _ROUNDS.
    per_round = (time.perf_counter() - start) / _WARMUP
    rounds = max(3, min(_ROUNDS, int(_BUDGET_S / max(per_round, 1e-6))))
    for _ in range(rounds):
        for k, s in enumerate(sessions):
            start = time.perf_counter()
            s.run(None, feed)
            times[k].append(time.perf_counter() - start)
    return [float(np.median(t)) * 1e3 for t in times]
