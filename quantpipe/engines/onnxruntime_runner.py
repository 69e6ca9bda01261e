"""ONNX Runtime: the runner, and the onnxruntime-cpu / onnxruntime-cuda backends."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantpipe.engines.backend import Availability, Backend, BuildInfo, BuildJob, RunnerOptions
from quantpipe.engines.backend import unavailable_because_missing as missing
from quantpipe.engines.base import RunnerContext
from quantpipe.engines.cuda_driver import visible_gpus
from quantpipe.engines.ort_session import PROVIDERS, OrtConfig, make_session

if TYPE_CHECKING:
    import numpy as np
    import onnx


class OnnxRuntimeRunner(RunnerContext):
    def __init__(
        self, model: str | Path | onnx.ModelProto, config: OrtConfig | None = None
    ) -> None:
        # A file, or an in-memory model (BTC scores its decoded models without writing them).
        self.model = Path(model) if isinstance(model, str | Path) else model
        self.config = config or OrtConfig()
        self.name = f"onnxruntime-{self.config.device}"
        self._session: Any = None

    def activate(self) -> None:
        self._session = make_session(self.model, self.config)

    @property
    def session(self) -> Any:
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


def _probe(device: str) -> Availability:
    try:
        import onnxruntime as ort
    except Exception as e:  # a broken install raises more than ImportError
        return missing("onnxruntime", e, "pip install quantpipe")
    if PROVIDERS[device] not in ort.get_available_providers():
        return Availability(
            False,
            f"onnxruntime {ort.__version__} has no {PROVIDERS[device]} (install quantpipe[gpu] "
            "on a CUDA host)",
        )
    if device != "cpu" and not (gpus := visible_gpus())[0]:
        return Availability(False, gpus[1])
    return Availability(True, f"onnxruntime {ort.__version__}, {PROVIDERS[device]}")


def _build(device: str) -> Any:
    def build(job: BuildJob) -> BuildInfo:
        """ONNX Runtime's "engine" is the ONNX model it runs, copied beside the others so
        that the engines directory is all a serving host needs; ONNX Runtime optimises the
        graph when a session loads it."""
        import onnxruntime as ort

        shutil.copyfile(job.source, job.out)
        return BuildInfo("onnxruntime", ort.__version__, {"provider": PROVIDERS[device]})

    return build


def _tensorrt_options(model: Path) -> tuple[tuple[str, str], ...]:
    """TensorRT provider options: its engine and timing caches beside the model, and the
    batch profile from the engine's metadata when there is one (else TensorRT rebuilds for
    every new input shape). Option names from ONNX Runtime's TensorRT provider documentation."""
    import json

    cache = model.parent / "ort-tensorrt-cache" / model.stem
    options = {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
    }
    meta = model.with_suffix(".json")
    if meta.is_file():
        recorded = json.loads(meta.read_text())
        for key in ("min", "opt", "max"):
            options[f"trt_profile_{key}_shapes"] = _shapes(recorded, recorded["profile"][key])
    return tuple(options.items())


def _shapes(meta: dict[str, Any], batch: int) -> str:
    """`input:8x3x224x224` for every input, at `batch`."""
    dims = ((i["name"], [batch, *(d for d in i["shape"][1:])]) for i in meta["inputs"])
    return ",".join(f"{name}:{'x'.join(map(str, shape))}" for name, shape in dims)


def _factory(device: str) -> Any:
    def make(model: Path, options: RunnerOptions) -> OnnxRuntimeRunner:
        extra = _tensorrt_options(Path(model)) if device == "tensorrt" else ()
        config = OrtConfig(device, options.threads, spinning=options.spinning)
        return OnnxRuntimeRunner(model, dataclasses.replace(config, provider_options=extra))

    return make


ONNXRUNTIME_CPU = Backend(
    "onnxruntime-cpu",
    "ONNX Runtime, CPU execution provider (default)",
    "onnx",
    lambda: _probe("cpu"),
    _factory("cpu"),
    builder=_build("cpu"),
    int8_build="ort",  # the CPU build: every Conv and residual Add on integer kernels
)
ONNXRUNTIME_CUDA = Backend(
    "onnxruntime-cuda",
    "ONNX Runtime, CUDA execution provider",
    "onnx",
    lambda: _probe("cuda"),
    _factory("cuda"),
    builder=_build("cuda"),
)
ONNXRUNTIME_TENSORRT = Backend(
    "onnxruntime-tensorrt",
    "ONNX Runtime, TensorRT execution provider (CUDA for the rest)",
    "onnx",
    lambda: _probe("tensorrt"),
    _factory("tensorrt"),
    builder=_build("tensorrt"),
)
