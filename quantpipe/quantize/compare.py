"""Debug comparison of two ONNX models on the same feeds (after Polygraphy's ``run``).

Every tensor that exists by name in both graphs is compared: a QDQ model made by
`quantpipe.quantize.qdq` keeps the float tensor names of the original graph, so its Conv,
Add, Relu… outputs line up with the FP32 model's. Errors are accumulated batch by batch
(max |a - b|, cosine similarity, SQNR in dB), never holding more than one batch.

Both models run with ONNX Runtime's Q/DQ fusions off, i.e. in exact Q/DQ arithmetic (ops in
float on dequantized values, what TensorRT's INT8 kernels compute up to rounding). Why: an
exposed inner tensor changes which fusions ONNX Runtime makes (as with Polygraphy's
``--onnx-outputs mark all``), and some of those integer kernels saturate on CPUs without
VNNI (a MatMul whose output was exposed lost 20 dB SQNR on an AVX2 CPU), so the per-layer
errors would describe the debug run, not the model. How fast and how accurate ONNX Runtime's
integer kernels are is measured on the unmodified model (`quantpipe eval`, the benchmarks).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from quantpipe.calibration.runtime import (
    check_feed,
    input_specs,
    load_model,
    with_outputs,
)
from quantpipe.engines.ort_session import OrtConfig, make_session
from quantpipe.errors import QuantpipeError


@dataclass(frozen=True)
class ErrorRow:
    """Error of one tensor of ``candidate`` against ``reference``."""

    tensor: str
    node: str
    op_type: str
    max_abs: float
    cosine: float
    sqnr_db: float


@dataclass(frozen=True)
class CompareResult:
    """Rows of the graph outputs and of the inner tensors, each worst (lowest SQNR) first."""

    outputs: list[ErrorRow]
    layers: list[ErrorRow]


class _Accumulator:
    """Running sums for one tensor: enough for max abs, cosine and SQNR."""

    def __init__(self) -> None:
        self.max_abs = 0.0
        self.dot = self.ref_sq = self.cand_sq = self.err_sq = 0.0

    def add(self, ref: np.ndarray, cand: np.ndarray) -> None:
        r = np.asarray(ref, dtype=np.float64).ravel()
        c = np.asarray(cand, dtype=np.float64).ravel()
        if r.shape != c.shape:
            raise QuantpipeError(f"shapes differ: reference {ref.shape}, candidate {cand.shape}")
        diff = r - c
        if diff.size:
            self.max_abs = max(self.max_abs, float(np.abs(diff).max()))
        self.dot += float(r @ c)
        self.ref_sq += float(r @ r)
        self.cand_sq += float(c @ c)
        self.err_sq += float(diff @ diff)

    def cosine(self) -> float:
        norm = math.sqrt(self.ref_sq * self.cand_sq)
        if norm == 0.0:
            return 1.0 if self.ref_sq == self.cand_sq else 0.0
        return self.dot / norm

    def sqnr_db(self) -> float:
        if self.err_sq == 0.0:
            return math.inf
        if self.ref_sq == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.ref_sq / self.err_sq)


def compare_models(
    reference: str | os.PathLike[str] | onnx.ModelProto,
    candidate: str | os.PathLike[str] | onnx.ModelProto,
    feeds: Iterable[Mapping[str, np.ndarray]],
    tensors: Sequence[str] | None = None,
    threads: int = 0,
) -> CompareResult:
    """Run both models on ``feeds`` and measure the candidate's error per tensor.

    Args:
        reference: usually the FP32 model.
        candidate: usually its QDQ model.
        feeds: batches ``{input name: array}`` fitting both models (iterated once).
        tensors: inner tensors to compare; None compares every tensor the graphs share.
        threads: ONNX Runtime intra-op threads (0: ONNX Runtime's choice).

    Raises:
        QuantpipeError: a tensor not in both graphs, or a batch that fits neither model.
    """
    ref = reference if isinstance(reference, onnx.ModelProto) else load_model(reference)
    cand = candidate if isinstance(candidate, onnx.ModelProto) else load_model(candidate)
    outputs = [o.name for o in ref.graph.output]
    layers = _layer_tensors(ref, cand, tensors, outputs)
    names = outputs + layers
    exact = OrtConfig(threads=threads, qdq_fusions=False)
    sessions = [make_session(with_outputs(m, names), exact) for m in (ref, cand)]
    specs = input_specs(sessions[0])
    acc = {name: _Accumulator() for name in names}
    for feed in feeds:
        check_feed(feed, specs)
        results = [s.run(names, dict(feed)) for s in sessions]
        for k, name in enumerate(names):
            acc[name].add(results[0][k], results[1][k])
    producers = {out: n for n in ref.graph.node for out in n.output}
    return CompareResult(
        outputs=_rows(outputs, acc, producers), layers=_rows(layers, acc, producers)
    )


def _layer_tensors(
    ref: onnx.ModelProto,
    cand: onnx.ModelProto,
    tensors: Sequence[str] | None,
    outputs: Sequence[str],
) -> list[str]:
    ref_names = [out for n in ref.graph.node for out in n.output if out]
    cand_names = {out for n in cand.graph.node for out in n.output}
    cand_outputs = {o.name for o in cand.graph.output}
    missing_outputs = [o for o in outputs if o not in cand_outputs]
    if missing_outputs:
        raise QuantpipeError(f"candidate model has no output {missing_outputs[0]!r}")
    if tensors is None:
        float_names = _float_tensors(ref)
        return [t for t in ref_names if t in cand_names and t in float_names and t not in outputs]
    unknown = [t for t in tensors if t not in cand_names or t not in set(ref_names)]
    if unknown:
        raise QuantpipeError(f"tensor {unknown[0]!r} is not in both models")
    return [t for t in dict.fromkeys(tensors) if t not in outputs]


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Node outputs that shape inference types as float (all of them where it cannot tell)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    typed = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    names = {out for n in model.graph.node for out in n.output}
    return {t for t in names if typed.get(t, onnx.TensorProto.FLOAT) in floats}


def _rows(
    names: Sequence[str], acc: Mapping[str, _Accumulator], producers: Mapping[str, onnx.NodeProto]
) -> list[ErrorRow]:
    rows = [
        ErrorRow(
            tensor=name,
            node=producers[name].name if name in producers else "",
            op_type=producers[name].op_type if name in producers else "",
            max_abs=acc[name].max_abs,
            cosine=acc[name].cosine(),
            sqnr_db=acc[name].sqnr_db(),
        )
        for name in names
    ]
    return sorted(rows, key=lambda r: (r.sqnr_db, r.cosine))
