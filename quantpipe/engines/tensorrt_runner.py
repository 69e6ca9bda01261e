"""TensorRT engines (`.plan` files) run through NVIDIA Polygraphy's `TrtRunner`.

Polygraphy's runner follows TensorRT 10/11 (named I/O tensors, `execute_async_v3`, dynamic
shapes set per call); this module only adapts it to quantpipe's runner contract. TensorRT
cannot be installed on the machines this project is developed on (its PyPI package fetches
its libraries from an unreachable host), so this backend is written against Polygraphy's
documented API and is exercised only by tests marked `tensorrt`, which skip there. Engines
are built by `tensorrt_build.build_plan` (strongly typed, from the FP32, FP16 or Q/DQ ONNX);
TensorRT 10's implicit INT8 from a calibration cache is `tensorrt_legacy`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantpipe.engines.backend import (
    Availability,
    Backend,
    BuildInfo,
    BuildJob,
    RunnerOptions,
    outside_profile,
)
from quantpipe.engines.backend import unavailable_because_missing as missing
from quantpipe.engines.base import RunnerContext
from quantpipe.engines.cuda_driver import visible_gpus

if TYPE_CHECKING:
    import numpy as np

INSTALL = "pip install quantpipe[tensorrt] on a GPU host"


class TensorRTRunner(RunnerContext):
    """Deserializes the engine at `engine_path` on activate; one CUDA context per runner."""

    def __init__(self, engine_path: str | Path) -> None:
        self.engine_path = Path(engine_path)
        self.name = "tensorrt"
        self._runner: Any = None
        self._batches: dict[str, tuple[int, int]] = {}  # input -> (min, max) batch

    def activate(self) -> None:
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        # Deserialized here, not by the runner, to read the engine's profile first.
        engine = EngineFromBytes(BytesFromPath(str(self.engine_path)))()
        self._batches = _profile_batches(engine)
        self._runner = TrtRunner(engine)
        self._runner.activate()

    @property
    def input_names(self) -> list[str]:
        return list(self._active().get_input_metadata().keys())

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np

        self._check_batch(feed)
        # Polygraphy may reuse its host output buffers on the next call: keep copies.
        return {k: np.array(v, copy=True) for k, v in self._active().infer(feed).items()}

    def deactivate(self) -> None:
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None

    def _check_batch(self, feed: dict[str, np.ndarray]) -> None:
        """A batch outside the profile, as one line (TensorRT would fail to set the shape)."""
        for name, (low, high) in self._batches.items():
            batch = feed[name].shape[0] if name in feed and feed[name].ndim else None
            if batch is not None and not low <= batch <= high:
                raise outside_profile(self.engine_path.name, batch, low, high)

    def _active(self) -> Any:
        if self._runner is None:
            raise RuntimeError("runner used before activate()")
        return self._runner


def _profile_batches(engine: Any) -> dict[str, tuple[int, int]]:
    """(min, max) batch of each input tensor in the engine's profile 0, the one TrtRunner
    uses unless told otherwise (TensorRT's ICudaEngine.get_tensor_profile_shape)."""
    import tensorrt as trt

    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    batches: dict[str, tuple[int, int]] = {}
    for name in names:
        if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
            continue
        if engine.is_shape_inference_io(name):
            continue  # shape tensors have values, not a batch axis
        low, _, high = engine.get_tensor_profile_shape(name, 0)
        if len(low):
            batches[name] = (int(low[0]), int(high[0]))
    return batches


def _probe() -> Availability:
    try:
        import tensorrt as trt
    except Exception as e:  # a broken install raises more than ImportError
        return missing("tensorrt", e, INSTALL)
    try:
        import polygraphy
    except Exception as e:
        return missing("polygraphy", e, INSTALL)
    gpus, why = visible_gpus()
    if not gpus:
        return Availability(False, f"tensorrt {trt.__version__} is installed but {why}")
    return Availability(True, f"TensorRT {trt.__version__} via Polygraphy {polygraphy.__version__}")


def _factory(model: Path, options: RunnerOptions) -> TensorRTRunner:
    return TensorRTRunner(model)  # threads: TensorRT runs on the GPU


def _build(job: BuildJob) -> BuildInfo:
    """tensorrt_build.build_plan, imported only when a build runs."""
    from quantpipe.engines.tensorrt_build import build_plan

    return build_plan(job)


TENSORRT = Backend(
    "tensorrt",
    "TensorRT engine (.plan) via Polygraphy",
    "engine",
    _probe,
    _factory,
    builder=_build,
    engine_suffix=".plan",
)
