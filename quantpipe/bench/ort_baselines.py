"""ONNX Runtime's own INT8 tool, in the configurations its documentation recommends, as the
baseline our INT8 engines are measured against in the same benchmark run.

`onnxruntime.quantization.quantize_static` defaults to QDQ with S8S8 (signed activations
and weights). Its documentation adds U8S8 (unsigned activations), and `reduce_range`
(7-bit weights) for U8S8 on AVX2 and AVX-512 CPUs without VNNI, whose int16 pair sums
saturate; on VNNI it is not needed. The QOperator format (QLinearConv directly) is the
other representation it writes. Measuring all of them makes the baseline ONNX Runtime's
best on this CPU, not its default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantpipe.data.selection import Selection
from quantpipe.engines.machine import CpuInfo

CALIBRATION_BATCH = 16


@dataclass(frozen=True)
class BaselineConfig:
    name: str
    quant_format: str  # QDQ or QOperator
    activation: str  # QInt8 or QUInt8
    reduce_range: bool

    def describe(self) -> str:
        act = "S8S8" if self.activation == "QInt8" else "U8S8"
        rr = ", reduce_range" if self.reduce_range else ""
        return f"ORT quantize_static {self.quant_format} {act}, per-channel, MinMax{rr}"


def baseline_configs(cpu: CpuInfo) -> list[BaselineConfig]:
    """The documented configurations for this CPU (reduce_range only without VNNI)."""
    no_vnni = not ({"avx512_vnni", "avx_vnni"} & set(cpu.isa))
    return [
        BaselineConfig("ort-qdq-s8s8", "QDQ", "QInt8", False),
        BaselineConfig("ort-qdq-u8s8", "QDQ", "QUInt8", no_vnni),
        BaselineConfig("ort-qoperator-u8s8", "QOperator", "QUInt8", no_vnni),
    ]


def build_baseline(fp32: Path, out: Path, config: BaselineConfig, calib: Selection) -> None:
    """quantize_static of `fp32` into `out` with `config`, calibrated on `calib`, after the
    pre-processing ONNX Runtime's documentation asks for (shape inference and its graph
    optimisations, `quant_pre_process`)."""
    import tempfile

    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="quantpipe-baseline-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))
        _quantize(prepared, out, config, calib)


def _quantize(fp32: Path, out: Path, config: BaselineConfig, calib: Selection) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(fp32),
        str(out),
        _Reader(calib, _input_name(fp32)),
        quant_format=getattr(QuantFormat, config.quant_format),
        activation_type=getattr(QuantType, config.activation),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=config.reduce_range,
        calibrate_method=CalibrationMethod.MinMax,
    )


def _input_name(path: Path) -> str:
    from quantpipe.export.onnx_file import load_onnx

    return str(load_onnx(path, load_external_data=False).graph.input[0].name)


class _Reader:
    """quantize_static's CalibrationDataReader over a selection's batches."""

    def __init__(self, calib: Selection, input_name: str) -> None:
        self.batches = ({input_name: x} for x, _ in calib.batches(CALIBRATION_BATCH))

    def get_next(self) -> dict[str, Any] | None:
        return next(self.batches, None)
