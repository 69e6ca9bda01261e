"""`ptq --max-drop D`: keep the fewest layers in float until the val drop is within D.

What NNCF's accuracy control and Intel Neural Compressor's tuning do, in one pass over a
ranked list instead of a search:

1. Rank: for each quantized node (a Conv, ConvTranspose, Gemm or MatMul with quantized
   weights, or an Add or Mul reading quantized tensors: with weighted layers alone, a
   ResNet-20 with clipped ranges stayed 6.5 points down with every layer float), the INT8
   model with that one node left in float is compared with the input
   model on up to ``RANK_COUNT`` val samples; the layer's sensitivity is how much the
   output KL divergence falls (the damage it alone does, measured where it is done, not
   guessed from weight statistics).
2. Walk the ranking: leave the 1, 2, 3, ... most sensitive layers in float and measure
   val accuracy each time, stopping at the first set within D.

Float layers run in FP32 on ONNX Runtime (and in FP16 on TensorRT when the engine build
allows it). Every model here runs in exact Q/DQ arithmetic, as `ptq` scores calibrators.
"""

from __future__ import annotations

import math
from pathlib import Path

from quantpipe.calibration import CalibrationTable
from quantpipe.data.selection import Selection
from quantpipe.engines.onnxruntime_runner import OnnxRuntimeRunner
from quantpipe.engines.ort_session import OrtConfig
from quantpipe.evaluate.fidelity import output_kl
from quantpipe.export.metadata import ModelContract
from quantpipe.quantize import QDQConfig
from quantpipe.stages.ptq_result import AccuracyControl, LayerSensitivity
from quantpipe.stages.ptq_scoring import Quantizer, accuracy

RANK_COUNT = 1000  # val samples the ranking compares on (the walk uses all of val)
# Ops besides the weighted ones that may stay float. Pools, Concat and reshapes are left
# out: they pass their input's scale on, and leaving one float would ask for a range the
# table does not hold (a Flatten after a float GlobalAveragePool).
_MIXING = frozenset({"Add", "Mul"})


def control(
    quantizer: Quantizer,
    table: CalibrationTable,
    max_drop: float,
    input_val: float,
    val: Selection,
    contract: ModelContract,
    threads: int,
    tmp: Path,
) -> AccuracyControl:
    """Rank the quantized layers and keep the fewest in float within ``max_drop``."""
    exact = OrtConfig(threads=threads, qdq_fusions=False)
    base = quantizer.config.exclude
    plan = quantizer.plan()
    readers = {n for a in plan.activations for n, _ in a.uses}
    ops = {n.name: n.op_type for n in quantizer.source.graph.node}
    mixing = {n for n in readers if ops.get(n) in _MIXING}
    layers = sorted({w.node for w in plan.weights} | mixing)
    scorer = _Scorer(quantizer, table, tmp, exact, contract)
    kept: list[str] = []
    drop = input_val - scorer.accuracy(base, val)
    if drop <= max_drop:  # nothing to keep in float: no ranking needed
        return AccuracyControl(max_drop, [], [], drop, True, scorer.evaluations)
    ranking = scorer.rank(layers, base, val.head(min(len(val), RANK_COUNT)))
    for layer in ranking:
        if drop <= max_drop:
            break
        kept.append(layer.node)
        drop = input_val - scorer.accuracy((*base, *kept), val)
    return AccuracyControl(max_drop, ranking, kept, drop, drop <= max_drop, scorer.evaluations)


class _Scorer:
    """Builds the Q/DQ model for an exclusion list and scores it."""

    def __init__(
        self,
        quantizer: Quantizer,
        table: CalibrationTable,
        tmp: Path,
        ort: OrtConfig,
        contract: ModelContract,
    ) -> None:
        self.quantizer, self.table, self.tmp = quantizer, table, tmp
        self.ort, self.contract = ort, contract
        self.evaluations = 0

    def _save(self, exclude: tuple[str, ...]) -> Path:
        self.evaluations += 1
        path = self.tmp / f"control{self.evaluations}.onnx"
        q = Quantizer(self.quantizer.path, QDQConfig(exclude=exclude))
        q.quantize(self.table.amax, self.table.calibrator).save(path)
        return path

    def accuracy(self, exclude: tuple[str, ...], data: Selection) -> float:
        path = self._save(exclude)
        try:
            return accuracy(path, data, self.contract, self.ort)
        finally:
            path.unlink()

    def kl(self, exclude: tuple[str, ...], data: Selection) -> float:
        path = self._save(exclude)
        try:
            with (
                OnnxRuntimeRunner(self.quantizer.path, self.ort) as ref,
                OnnxRuntimeRunner(path, self.ort) as cand,
            ):
                return output_kl(ref, cand, data)
        finally:
            path.unlink()

    def rank(
        self, layers: list[str], base: tuple[str, ...], data: Selection
    ) -> list[LayerSensitivity]:
        everything = self.kl(base, data)
        gains = [LayerSensitivity(n, everything - self.kl((*base, n), data)) for n in layers]
        return sorted(gains, key=lambda s: (-s.kl_gain if math.isfinite(s.kl_gain) else 0, s.node))


def deliver(
    quantizer: Quantizer,
    table: CalibrationTable,
    control: AccuracyControl,
    input_test: float,
    test: Selection,
    contract: ModelContract,
    threads: int,
) -> tuple[Quantizer, AccuracyControl]:
    """The quantizer that leaves ``control``'s layers in float, and ``control`` with the
    delivered model's test drop and the CPU build's batch-1 latency with and without them."""
    import dataclasses
    import tempfile

    from quantpipe.quantize.cpu_tactics import batch1_feed, time_models

    config = QDQConfig(exclude=(*quantizer.config.exclude, *control.float_layers))
    chosen = Quantizer(quantizer.path, config)
    exact = OrtConfig(threads=threads, qdq_fusions=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "delivered.onnx"
        delivered = chosen.quantize(table.amax, table.calibrator)
        delivered.save(path)
        test_drop = input_test - accuracy(path, test, contract, exact)
    latency: dict[str, float] = {}
    feed = batch1_feed(quantizer.source)
    if control.float_layers and feed is not None:
        all_int8 = quantizer.for_ort_cpu(quantizer.quantize(table.amax, table.calibrator))
        with_float = chosen.for_ort_cpu(delivered)
        times = time_models(all_int8.model, with_float.model, feed, threads)
        latency = {"all_int8": times[0], "with_float_layers": times[1]}
    return chosen, dataclasses.replace(control, test_drop=test_drop, latency_ms=latency)
