"""The mixed stage's typed result: the chosen allocation, what it was compared with, its
export and sizes, and the accuracy of each, with the data they were measured on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quantpipe.artifacts import INT8_BUILDS, mp_label, onnx_label
from quantpipe.data.selection import DataInfo
from quantpipe.evaluate.evaluate import SplitScores
from quantpipe.pipeline.results import JsonResult
from quantpipe.qat.config import EpochRecord
from quantpipe.stages.ptq_result import OrtCpuBuild


@dataclass(frozen=True)
class ScoredAllocation:
    """One allocation evaluated with fake quantization (no fine-tuning): val and test."""

    name: str  # "sensitivity S", "uniform 4-bit", "random 2", "frontier", ...
    bits: dict[str, int]
    size_bytes: float  # Σ P·b/8 over the quantized weights
    compression: float  # FP32 weight bytes / size_bytes
    accuracy: SplitScores

    @property
    def mean_bits(self) -> float:
        return 32.0 / self.compression


@dataclass(frozen=True)
class Comparison:
    """Allocations within one size: the uniform one that sets it (or the chosen one), the
    sensitivity ones (S and S/P) and the random ones."""

    at: str  # "uniform 4-bit" or "chosen": what set the size
    size_bytes: float
    rows: list[ScoredAllocation]

    @property
    def degenerate(self) -> bool:
        """Every allocation the same: at this size the widths leave no choice."""
        return len({tuple(sorted(r.bits.items())) for r in self.rows}) == 1

    @property
    def winner(self) -> ScoredAllocation:
        """The best val accuracy (test is reported, never chosen on)."""
        return max(self.rows, key=lambda row: row.accuracy.val)


@dataclass(frozen=True)
class PackedSizes:
    """The packed weights file beside the theoretical Σ P·b/8 and the ONNX model."""

    file_bytes: int  # the whole .qpmix file: codes, scales, biases, table, metadata
    theoretical_bytes: float  # Σ P·b/8 over the quantized weights
    code_bytes: int  # the packed codes alone (Σ ceil(P·b/8))
    scale_bytes: int
    raw_bytes: int  # float32 tensors kept raw (biases, unquantized weights)
    onnx_bytes: int  # the Q/DQ ONNX model, whose weights are INT8 (one byte per weight)


@dataclass(frozen=True)
class ReferencePoint:
    """Another artifact of the run measured on the same splits, for the report's tables
    and plot: FP32, BTC, INT8 PTQ, QAT."""

    name: str
    file: str
    weight_bits: float  # bits per weight of the quantized layers (BTC: its effective bits)
    size_bytes: float  # Σ P · weight_bits / 8 over the same layers
    accuracy: SplitScores


@dataclass(frozen=True)
class MixedResult(JsonResult):
    input: str  # the float model ptq quantized
    precision: str  # 4MP-A8 ...
    widths: list[int]
    activation_bits: int
    ranking: str  # "S" or "S/P": what the frontier was ranked by
    picked_by: str  # "val": best measured on val; "proxy": the thesis's; "max-drop"
    calibrator: str
    budget_bytes: float | None  # None: chosen by --max-drop alone
    max_drop: float | None
    fp32_weight_bytes: int  # Σ P·4 over the quantized weights
    layers: int
    frontier_points: int
    seconds_sensitivity: float
    fp32: SplitScores
    references: list[ReferencePoint]
    chosen: ScoredAllocation  # the delivered allocation, before fine-tuning
    proxy: ScoredAllocation  # the frontier's least-cost point within the budget (the thesis)
    searched: list[ScoredAllocation]  # the frontier points --max-drop evaluated
    sweep: list[ScoredAllocation]  # frontier points evenly spread in size, for the plot
    comparisons: list[Comparison]
    qat_epochs: list[EpochRecord]
    mp: SplitScores  # the exported Q/DQ model (after fine-tuning, if any), in ONNX Runtime
    ort_cpu: OrtCpuBuild
    torch_onnx_agreement: float  # top-1, fake-quant module vs exported ONNX, on test
    packed: PackedSizes
    data_test: DataInfo
    data_val: DataInfo
    truth: str = "labels"

    @property
    def drop(self) -> float:
        return self.fp32.test - self.mp.test

    def artifact_bits(self) -> dict[str, str]:
        """Mean weight bits of the mixed artifacts, by label (for the run summary)."""
        mean = f"{self.chosen.mean_bits:.2f} mixed, A{self.activation_bits}"
        return {mp_label(onnx_label(Path(self.input)), b): mean for b in INT8_BUILDS}

    def _how(self) -> str:
        if self.picked_by == "max-drop":
            return f"smallest within {self.max_drop:g} points on val"
        return {
            "val": "best on val of the allocations measured",
            "proxy": "the thesis's proxy",
        }[self.picked_by]

    def lines(self) -> list[str]:
        d, c = self.data_test, self.chosen
        tuned = f", {len(self.qat_epochs)} QAT epochs" if self.qat_epochs else ""
        return [
            f"mixed precision {self.precision} ({c.name}, {self._how()}{tuned}): "
            f"{c.compression:.2f}× smaller weights than FP32 ({c.mean_bits:.2f} bits/weight), "
            f"test {self.mp.test:.2f} % vs FP32 {self.fp32.test:.2f} % "
            f"(drop {self.drop:+.2f}; {d.count:,} samples of {d.dataset} {d.split})",
            f"packed weights {self.packed.file_bytes:,} bytes (codes alone "
            f"{self.packed.code_bytes:,}; theoretical Σ P·b/8 "
            f"{self.packed.theoretical_bytes:,.0f}); ONNX Q/DQ model {self.packed.onnx_bytes:,} "
            f"bytes, its INT8 weights run as INT8 in ONNX Runtime and TensorRT",
            f"the exported model agrees with the fake-quantized graph on "
            f"{self.torch_onnx_agreement:.2f} % of test (top-1); "
            f"ONNX Runtime CPU build {self.ort_cpu.test:.2f} %",
        ]
