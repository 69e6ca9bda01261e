"""ONNX Runtime runner: CPU execution provider by default, thread count configurable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from quantpipe.calibration.runtime import DISABLE_QDQ_FUSIONS
from quantpipe.engines.base import RunnerContext
from quantpipe.errors import QuantpipeError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


@dataclass(frozen=True)
class OrtConfig:
    """device: cpu or cuda; threads: intra-op threads, 0 for ONNX Runtime's default (one per
    physical core); qdq_fusions: False runs a Q/DQ model in exact Q/DQ arithmetic (float ops
    on dequantized values) instead of ONNX Runtime's integer kernels."""

    device: str = "cpu"
    threads: int = 0
    qdq_fusions: bool = True

    def __post_init__(self) -> None:
        if self.device not in PROVIDERS:
            raise QuantpipeError(f"unknown ONNX Runtime device {self.device!r}: use cpu or cuda")
        if self.threads < 0:
            raise QuantpipeError(f"threads must be 0 (auto) or positive, got {self.threads}")


class OnnxRuntimeRunner(RunnerContext):
    def __init__(self, model_path: str | Path, config: OrtConfig | None = None) -> None:
        self.model_path = Path(model_path)
        self.config = config or OrtConfig()
        self.name = f"onnxruntime-{self.config.device}"
        self._session: ort.InferenceSession | None = None

    def activate(self) -> None:
        provider = PROVIDERS[self.config.device]
        if provider not in ort.get_available_providers():
            raise QuantpipeError(
                f"ONNX Runtime here has no {provider}; install quantpipe[gpu] on a CUDA host "
                "or use --device cpu"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.config.threads
        options.inter_op_num_threads = 1
        if not self.config.qdq_fusions:
            options.add_session_config_entry(DISABLE_QDQ_FUSIONS, "1")
        try:
            self._session = ort.InferenceSession(
                str(self.model_path), options, providers=[provider]
            )
        except Exception as e:  # ORT raises its own exception types, not exported stably
            raise QuantpipeError(f"ONNX Runtime cannot load {self.model_path}: {e}") from None

    @property
    def session(self) -> ort.InferenceSession:
        if self._session is None:
            raise RuntimeError("runner used before activate()")
        return self._session

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(None, feed)
        return dict(zip(self.output_names, outputs, strict=True))

    def deactivate(self) -> None:
        self._session = None
