"""The ptq stage's working parts: quantize with a table, score every calibrator, write the
ONNX Runtime CPU build and take ONNX Runtime's census of the kernels it runs."""

from __future__ import annotations

import json
import math
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from quantpipe.artifacts import TACTICS_DIR
from quantpipe.calibration import CalibrationTable
from quantpipe.data.selection import Selection
from quantpipe.engines.machine import cpu_info
from quantpipe.engines.onnxruntime_runner import OnnxRuntimeRunner
from quantpipe.engines.ort_session import OrtConfig
from quantpipe.evaluate.evaluate import EvalSetup, evaluate
from quantpipe.evaluate.fidelity import output_kl
from quantpipe.export.metadata import ModelContract, read_metadata
from quantpipe.export.onnx_file import load_onnx
from quantpipe.quantize import QDQConfig, QDQPlan, plan_qdq, quantize_qdq
from quantpipe.quantize.bits import INT8, BitWidths
from quantpipe.quantize.cpu_tactics import Tactic, cache_file, stem_tactics
from quantpipe.quantize.graph import with_unique_node_names
from quantpipe.quantize.ort_census import ort_cpu_kernels
from quantpipe.quantize.ort_cpu import OrtCpuBuild as CpuBuild
from quantpipe.quantize.ort_cpu import build_for_ort_cpu
from quantpipe.quantize.ort_cpu_plan import plan_ort_cpu
from quantpipe.quantize.placement import FloatNode
from quantpipe.quantize.qdq import apply_plan
from quantpipe.stages.ptq_result import CalibratorScores, KernelCensus, OrtCpuBuild, QdqStructure


@dataclass(frozen=True)
class Quantized:
    """A portable Q/DQ model and what made it (the CPU build is made from the same)."""

    model: onnx.ModelProto
    float_nodes: list[FloatNode]
    amax: Mapping[str, float]
    calibrator: str
    bits: BitWidths = INT8

    def save(self, path: Path) -> None:
        onnx.save(self.model, str(path))


class Quantizer:
    """Quantizes one source model with any calibration table; the Q/DQ model keeps the
    source's metadata and says how it was made."""

    def __init__(self, source: Path, config: QDQConfig) -> None:
        self.path = source
        # Unique node names first: the plans, the CPU build and the tactic pass refer to
        # nodes by name (an unnamed Gemm's weights were left unquantized in the CPU build).
        self.source = with_unique_node_names(load_onnx(source))
        self.config = config

    def quantize(
        self, amax: Mapping[str, float], calibrator: str, bits: BitWidths = INT8
    ) -> Quantized:
        """The portable Q/DQ model. ``amax`` may hold more tensors than its plan reads: the
        CPU build (`for_ort_cpu`) quantizes more."""
        result = quantize_qdq(self.source, amax, self.config, bits)
        precision = "int8-qdq" if bits.is_int8 else "mixed-qdq"
        how = {"quantpipe.precision": precision, "quantpipe.calibrator": calibrator}
        replace_metadata(result.model, read_metadata(self.source) | how)
        return Quantized(result.model, result.float_nodes, dict(amax), calibrator, bits)

    def plan(self) -> QDQPlan:
        """The portable placement this quantizer applies."""
        return plan_qdq(self.source, self.config)

    def for_ort_cpu(self, quantized: Quantized, float_convs: Sequence[str] = ()) -> CpuBuild:
        """The ONNX Runtime CPU build of ``quantized``: the source quantized by the widened
        plan (quantize/ort_cpu_plan.py), then rewritten for the CPU kernels (ort_cpu.py);
        ``float_convs`` as the tactic pass chose (quantize/cpu_tactics.py)."""
        plan = plan_ort_cpu(self.source, self.config, quantized.amax, float_convs)
        model = apply_plan(self.source, plan, quantized.amax, quantized.bits)
        build = build_for_ort_cpu(model)
        meta = read_metadata(quantized.model) | {"quantpipe.runtime": "onnxruntime-cpu"}
        replace_metadata(build.model, meta)
        return build

    def tactics(self, quantized: Quantized, run_dir: Path, threads: int) -> list[Tactic]:
        """The tactic pass for ``quantized``'s CPU build on this CPU, cached in the run's
        tactics/ directory."""
        import onnxruntime

        cache = cache_file(run_dir / TACTICS_DIR, cpu_info().model, onnxruntime.__version__)
        return stem_tactics(
            self.source, lambda convs: self.for_ort_cpu(quantized, convs).model, cache, threads
        )


def score_all(
    quantizer: Quantizer,
    tables: dict[str, CalibrationTable],
    tmp: Path,
    splits: tuple[Selection, Selection],
    contract: ModelContract,
    threads: int,
) -> dict[str, CalibratorScores]:
    """Per calibrator: val and test accuracy, and the val KL divergence from the input
    model's outputs, by which `auto` chooses (see evaluate/fidelity.py for why).

    The Q/DQ models run in exact Q/DQ arithmetic (ONNX Runtime's fusions off): what
    TensorRT computes, free of the CPU kernels' saturation (see quantize/ort_cpu.py)."""
    scored = {}
    exact = OrtConfig(threads=threads, qdq_fusions=False)
    val, test = splits
    for name, table in tables.items():
        path = tmp / f"{name}.onnx"
        quantizer.quantize(table.amax, table.calibrator).save(path)
        with (
            OnnxRuntimeRunner(quantizer.path, exact) as ref,
            OnnxRuntimeRunner(path, exact) as cand,
        ):
            kl = output_kl(ref, cand, val)
        scored[name] = CalibratorScores(
            val=accuracy(path, val, contract, exact),
            test=accuracy(path, test, contract, exact),
            val_kl=kl,
        )
    return scored


def choose(scored: Mapping[str, CalibratorScores], val_count: int, task: str) -> str:
    """`auto`'s choice: the lowest val KL, unless its val accuracy is more than noise (one
    standard error of an accuracy on ``val_count`` samples) below the best calibrator's,
    which is then kept instead.

    Why the guard: KL weighs every sample's whole output distribution, which tracks
    accuracy on most models, but an EfficientNet-B0 (SiLU, SE gates) had the lowest KL with
    entropy and lost 3.73 points while percentile lost 2.33. Segmentation keeps the KL
    choice: its mIoU has no such simple noise level.
    """
    by_kl = min(scored, key=lambda k: (scored[k].val_kl, k))
    if task != "classification" or val_count < 1:
        return by_kl
    best = max(scored, key=lambda k: (scored[k].val, -scored[k].val_kl))
    p = min(max(scored[best].val / 100, 0.0), 1.0)
    noise = 100 * math.sqrt(p * (1 - p) / val_count)
    return best if scored[by_kl].val < scored[best].val - noise else by_kl


def ort_cpu_build(
    quantizer: Quantizer,
    quantized: Quantized,
    out: Path,
    portable: Path,
    test: Selection,
    contract: ModelContract,
    threads: int,
    run_dir: Path,
) -> OrtCpuBuild:
    """Write the ONNX Runtime CPU build of the portable model, after the tactic pass; its
    test accuracy and kernels. The engine metadata records the tactics and the CPU."""
    tactics = quantizer.tactics(quantized, run_dir, threads)
    build = quantizer.for_ort_cpu(quantized, [t.node for t in tactics if t.keep_float])
    if tactics:
        decided = {"cpu": cpu_info().model, "convs": [asdict(t) for t in tactics]}
        meta = read_metadata(build.model) | {"quantpipe.cpu_tactics": json.dumps(decided)}
        replace_metadata(build.model, meta)
    onnx.save(build.model, str(out))
    return OrtCpuBuild(
        tactics=[t.describe() for t in tactics],
        test=accuracy(out, test, contract, OrtConfig(threads=threads)),
        uint8_tensors=len(build.uint8_tensors),
        merged_quantize=build.merged_quantize,
        seven_bit_weights=len(build.seven_bit_weights),
        kernels=kernel_census(out),
        bytes=out.stat().st_size,
        portable_kernels=kernel_census(portable),
    )


def kernel_census(path: Path) -> KernelCensus:
    with tempfile.TemporaryDirectory() as tmp:
        return KernelCensus(**ort_cpu_kernels(path, Path(tmp) / "optimized.onnx"))


def replace_metadata(model: onnx.ModelProto, meta: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in meta.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value


def accuracy(path: Path, data: Selection, contract: ModelContract, ort: OrtConfig) -> float:
    setup = EvalSetup(contract.task, contract.num_classes, progress=False)
    with OnnxRuntimeRunner(path, ort) as runner:
        return evaluate(runner, data, setup).value


def structure(model: onnx.ModelProto) -> QdqStructure:
    ops = Counter(n.op_type for n in model.graph.node)
    return QdqStructure(ops["QuantizeLinear"], ops["DequantizeLinear"], dict(sorted(ops.items())))
