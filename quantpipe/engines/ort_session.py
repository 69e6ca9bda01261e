"""Every ONNX Runtime session quantpipe makes is made here: providers, threads, thread
spinning, Q/DQ fusions and the optimised-graph dump are one config.

Runners, calibration, the model comparison and the kernel census all call `make_session`,
so a setting that changes what is measured (e.g. spinning, which slowed interleaved
sessions by up to 2.6× in bench-ptq) is decided once.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantpipe.errors import QuantpipeError

if TYPE_CHECKING:
    import onnx

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
# Keep QuantizeLinear/DequantizeLinear as separate ops instead of fusing DQ -> op -> Q into
# integer kernels; the ops then run in float on dequantized values, which is exact Q/DQ
# arithmetic (what TensorRT's INT8 kernels compute, up to rounding).
DISABLE_QDQ_FUSIONS = "session.disable_quant_qdq"
# Protobuf's hard limit; larger in-memory models go through a file with external data.
_MAX_PROTO_BYTES = 2**31 - 1


@dataclass(frozen=True)
class OrtConfig:
    """How to run a model in ONNX Runtime.

    Attributes:
        device: cpu or cuda.
        threads: intra-op threads; 0 for ONNX Runtime's default (one per physical core).
        qdq_fusions: False runs a Q/DQ model in exact Q/DQ arithmetic instead of ONNX
            Runtime's integer kernels.
        spinning: False stops idle intra-op threads from spinning, for sessions that share
            the cores with other work of ours between runs.
        optimized_model_path: where ONNX Runtime writes the graph it actually runs.
        provider_options: options of the device's execution provider (name, value), e.g. the
            TensorRT provider's engine and timing caches.
    """

    device: str = "cpu"
    threads: int = 0
    qdq_fusions: bool = True
    spinning: bool = True
    optimized_model_path: str | None = None
    provider_options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.device not in PROVIDERS:
            raise QuantpipeError(
                f"unknown ONNX Runtime device {self.device!r}: use {', '.join(PROVIDERS)}"
            )
        if self.threads < 0:
            raise QuantpipeError(f"threads must be 0 (auto) or positive, got {self.threads}")


def make_session(model: str | os.PathLike[str] | onnx.ModelProto, config: OrtConfig) -> Any:
    """An `onnxruntime.InferenceSession` for a model file or an in-memory model."""
    import onnxruntime as ort

    provider = PROVIDERS[config.device]
    if provider not in ort.get_available_providers():
        raise QuantpipeError(
            f"ONNX Runtime here has no {provider}: install quantpipe[gpu] on a CUDA host, "
            "or use --backend onnxruntime-cpu"
        )
    options = _session_options(ort, config)
    if isinstance(model, str | os.PathLike):
        return _load(ort, str(model), options, config, str(model))
    if model.ByteSize() < _MAX_PROTO_BYTES:
        return _load(ort, model.SerializeToString(), options, config, "an in-memory model")
    import onnx

    with tempfile.TemporaryDirectory(prefix="quantpipe-ort-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path), save_as_external_data=True, location="model.onnx.data")
        return _load(ort, str(path), options, config, "an in-memory model")


def _session_options(ort: Any, config: OrtConfig) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT's warnings are about its own graph passes
    if not config.qdq_fusions:
        options.add_session_config_entry(DISABLE_QDQ_FUSIONS, "1")
    if not config.spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if config.optimized_model_path:
        options.optimized_model_filepath = config.optimized_model_path
    return options


def _providers(config: OrtConfig) -> list[Any]:
    """The provider with its options; the TensorRT provider with CUDA behind it for the
    nodes TensorRT does not take (as ONNX Runtime's documentation recommends)."""
    main = (PROVIDERS[config.device], dict(config.provider_options))
    return [main, PROVIDERS["cuda"]] if config.device == "tensorrt" else [main]


def _load(ort: Any, model: str | bytes, options: Any, config: OrtConfig, what: str) -> Any:
    try:
        return ort.InferenceSession(model, options, providers=_providers(config))
    except Exception as e:  # ORT raises its own exception types, not exported stably
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QuantpipeError(f"ONNX Runtime cannot load {what}: {first}") from None
