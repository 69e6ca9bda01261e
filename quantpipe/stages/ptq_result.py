"""What `ptq` found, typed: per-calibrator scores, the calibration used, the Q/DQ structure,
the ONNX Runtime CPU build and its kernels; and the table the CLI prints."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from quantpipe.artifacts import FP32, INT8_BUILDS, int8_label, onnx_label
from quantpipe.data.selection import DataInfo
from quantpipe.evaluate.evaluate import SplitScores
from quantpipe.pipeline.results import JsonResult
from quantpipe.quantize.placement import FloatNode
from quantpipe.text_table import format_table


@dataclass(frozen=True)
class CalibratorScores(SplitScores):
    val_kl: float  # mean KL divergence from the input model's outputs on val, in nats


@dataclass(frozen=True)
class CalibrationNote:
    reused: list[str]
    computed: list[str]
    keys: dict[str, str]
    data: DataInfo

    def describe(self) -> str:
        parts = []
        if self.reused:
            parts.append(f"reused cached tables for {', '.join(self.reused)}")
        if self.computed:
            parts.append(f"computed {', '.join(self.computed)} on {self.data.count:,} samples")
        return "; ".join(parts)


@dataclass(frozen=True)
class ImportedCalibration:
    imported: str  # the TensorRT cache file given with --calib-cache

    def describe(self) -> str:
        return f"imported TensorRT cache {self.imported}"


@dataclass(frozen=True)
class KernelCensus:
    """Ops ONNX Runtime's CPU provider runs: integer kernels, float compute, Q/DQ left over."""

    integer: dict[str, int]
    float: dict[str, int]
    conversions: dict[str, int]

    def describe(self) -> str:
        """'runs integer kernels: 20 QLinearConv, 8 QLinearAdd; float: 1 Gemm; ...'"""

        def listed(ops: dict[str, int]) -> str:
            return ", ".join(f"{n} {op}" for op, n in ops.items()) or "none"

        return (
            f"runs integer kernels: {listed(self.integer)}; float: {listed(self.float)}; "
            f"Q/DQ conversions: {listed(self.conversions)}"
        )


@dataclass(frozen=True)
class OrtCpuBuild:
    test: float
    uint8_tensors: int
    merged_quantize: int
    seven_bit_weights: int
    kernels: KernelCensus
    bytes: int
    portable_kernels: KernelCensus
    tactics: list[str] = field(default_factory=list)  # the tactic pass's decisions


@dataclass(frozen=True)
class LayerSensitivity:
    node: str
    kl_gain: float  # how much the val KL falls when this layer alone stays float


@dataclass(frozen=True)
class AccuracyControl:
    """What `--max-drop` kept in float, and what it cost and bought."""

    max_drop: float
    ranking: list[LayerSensitivity]
    float_layers: list[str]
    val_drop: float  # input model minus the delivered model, on val
    reached: bool
    evaluations: int  # models built and scored (ranking + walk)
    test_drop: float = math.nan  # the same on test, for the report
    latency_ms: dict[str, float] = field(default_factory=dict)  # CPU build, batch 1

    def lines(self) -> list[str]:
        verdict = "within" if self.reached else "NOT within"
        kept = ", ".join(self.float_layers) or "none"
        lines = [
            f"--max-drop {self.max_drop:g}: val drop {self.val_drop:.2f} ({verdict} the limit), "
            f"test drop {self.test_drop:.2f}, with {len(self.float_layers)} layer(s) in float: "
            f"{kept} ({self.evaluations} models scored)",
        ]
        if self.latency_ms:
            int8, mixed = self.latency_ms["all_int8"], self.latency_ms["with_float_layers"]
            lines.append(
                f"  their latency cost (CPU build, batch 1): {int8:.2f} -> {mixed:.2f} ms "
                f"({mixed / int8:.2f}x)"
            )
        return lines


@dataclass(frozen=True)
class QdqStructure:
    quantize_linear: int
    dequantize_linear: int
    ops: dict[str, int]


@dataclass(frozen=True)
class PtqResult(JsonResult):
    """`fp32` holds the input model's scores (FP32, or e.g. the BTC-decoded model)."""

    input: str
    calibrator: str
    per_calibrator: dict[str, CalibratorScores]
    fp32: SplitScores
    calibration: CalibrationNote | ImportedCalibration
    float_nodes: list[FloatNode]
    qdq: QdqStructure
    ort_cpu: OrtCpuBuild
    size: dict[str, int]
    data_val: DataInfo
    data_test: DataInfo
    truth: str = "labels"
    input_form: str = ""  # the input's deploy form (e.g. fused RepVGG), when it has one
    accuracy_control: AccuracyControl | None = None  # what --max-drop kept in float

    @property
    def kept(self) -> CalibratorScores:
        return self.per_calibrator[self.calibrator]

    def lines(self) -> list[str]:
        how = (
            f"reused cached tables for {', '.join(self.calibration.reused)}; "
            if isinstance(self.calibration, CalibrationNote) and self.calibration.reused
            else ""
        )
        return [
            f"INT8 Q/DQ ({self.calibrator} calibration kept on val; {how}"
            f"{self.qdq.quantize_linear} QuantizeLinear): test {self.kept.test:.2f} % vs "
            f"{self._input_name()} {self.fp32.test:.2f} % ({self.data_test.count:,} samples"
            f"{self._truth_note()})",
            *([f"quantized the deploy form: {self.input_form}"] if self.input_form else []),
            *(self.accuracy_control.lines() if self.accuracy_control else []),
        ]

    def artifact_bits(self) -> dict[str, str]:
        """Weight bits of the INT8 artifacts, by label (for the run summary)."""
        source = onnx_label(Path(self.input))
        bits = "8" if source == FP32 else f"8 of {source.upper()}"
        return {int8_label(source, build): bits for build in INT8_BUILDS}

    def table(self) -> str:
        """All calibrators side by side: val (selection) and test (report) figures."""
        fp32 = self.fp32
        rows = [(self._input_name(), f"{fp32.val:.2f}", "0", f"{fp32.test:.2f}", "", "")]
        for name, acc in self.per_calibrator.items():
            kept = f"← kept ({self._why_kept()})" if name == self.calibrator else ""
            delta = f"{acc.test - fp32.test:+.2f}"
            row = (f"INT8 {name}", f"{acc.val:.2f}", f"{acc.val_kl:.2e}", f"{acc.test:.2f}")
            rows.append((*row, delta, kept))
        ort = self.ort_cpu
        delta = f"{ort.test - fp32.test:+.2f}"
        rows.append(("INT8 ONNX Runtime CPU build", "", "", f"{ort.test:.2f}", delta, ""))
        d = self.data_test
        metric = "agreement" if self.truth != "labels" else "headline metric"
        form = f" Quantized form: deploy ({self.input_form})." if self.input_form else ""
        note = (
            f"Accuracy (%, {metric}) on {d.dataset} val/test splits; test = {d.count:,} "
            f"samples ({d.where()}){self._truth_note()}. Calibration: "
            f"{self.calibration.describe()}.{form}"
            f"\nONNX Runtime CPU: the Q/DQ model {ort.portable_kernels.describe()};"
            f"\n  its CPU build {ort.kernels.describe()}."
            + "".join(f"\n  CPU tactic: {line}" for line in ort.tactics)
        )
        headers = ("model", "val acc", f"val KL vs {self._input_name()}", "test acc", "test Δ", "")
        return format_table(headers, rows) + "\n" + note

    def _why_kept(self) -> str:
        lowest = min(self.per_calibrator, key=lambda k: (self.per_calibrator[k].val_kl, k))
        if len(self.per_calibrator) == 1:
            return "the one asked for"
        if lowest == self.calibrator:
            return "lowest val KL"
        return f"best val accuracy; {lowest}'s lowest KL lost more than noise on val"

    def _input_name(self) -> str:
        source = onnx_label(Path(self.input))
        return "FP32" if source == FP32 else source

    def _truth_note(self) -> str:
        return "" if self.truth == "labels" else f"; no labels: agreement with {self.truth}"
