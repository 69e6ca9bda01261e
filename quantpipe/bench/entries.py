"""What `bench` times: a run's engines, ONNX Runtime's own INT8 models as baselines, and on
CUDA hosts the PyTorch model itself (FP32/FP16, eager/CUDA graphs) as the GPU reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantpipe.artifacts import FP32, PYTORCH
from quantpipe.engines.backend import RunnerOptions
from quantpipe.engines.base import RunnerContext
from quantpipe.engines.metadata import EngineMeta, load_engine
from quantpipe.engines.registry import get_backend

WEIGHT_BITS = {"fp32": 32, "fp16": 16, "int8": 8}
# The PyTorch variants timed on a CUDA GPU: (precision, CUDA graphs).
TORCH_CUDA_VARIANTS = (("fp32", False), ("fp16", False), ("fp32", True), ("fp16", True))


@dataclass
class Entry:
    """One model being timed: what it is, its runner (not yet active), its timings."""

    name: str
    kind: str  # engine, baseline or pytorch
    backend: str
    model: str
    precision: str
    description: str
    bytes: int
    runner: RunnerContext
    meta: EngineMeta | None = None
    timings: dict[int, list[Any]] = field(default_factory=dict)

    @property
    def weight_bits(self) -> int:
        return WEIGHT_BITS[self.precision]

    def device_seconds(self) -> Callable[[], float | None] | None:
        """Reads the device time of the last inference, for runners that measure it."""
        if not hasattr(self.runner, "last_device_ms"):
            return None
        return lambda: (ms / 1e3) if (ms := self.runner.last_device_ms) is not None else None  # type: ignore[attr-defined]


def engine_entry(path: Path, options: RunnerOptions) -> Entry:
    """An engine of the run, after its metadata checks (sha256, TensorRT version, GPU)."""
    meta = load_engine(path)
    runner = get_backend(meta.backend).runner(path, options)
    what = (
        f"{meta.model} {meta.precision} on {meta.backend} ({meta.runtime} {meta.runtime_version})"
    )
    size = path.stat().st_size
    return Entry(
        path.name, "engine", meta.backend, meta.model, meta.precision, what, size, runner, meta
    )


def baseline_entry(path: Path, name: str, description: str, options: RunnerOptions) -> Entry:
    """An INT8 model of ONNX Runtime's quantize_static, run on ONNX Runtime's CPU provider."""
    runner = get_backend("onnxruntime-cpu").runner(path, options)
    size = path.stat().st_size
    return Entry(name, "baseline", "onnxruntime-cpu", FP32, "int8", description, size, runner)


def torch_cuda_entries(net: Any, options: RunnerOptions) -> list[Entry]:
    """The PyTorch model on the GPU in each of TORCH_CUDA_VARIANTS."""
    import copy
    import dataclasses

    backend = get_backend("torch-cuda")
    entries = []
    for precision, graphs in TORCH_CUDA_VARIANTS:
        variant = dataclasses.replace(options, precision=precision, cuda_graphs=graphs)  # type: ignore[arg-type]
        mode = "CUDA graphs" if graphs else "eager"
        name = f"{PYTORCH}.torch-cuda.{precision}{'.graphs' if graphs else ''}"
        size = sum(p.numel() for p in net.parameters()) * WEIGHT_BITS[precision] // 8
        runner = backend.runner(copy.deepcopy(net), variant)  # each moves its own copy
        what = f"PyTorch {precision} on CUDA, {mode}"
        entries.append(Entry(name, "pytorch", "torch-cuda", FP32, precision, what, size, runner))
    return entries
