"""What a backend is: a name, what it runs, whether it works here (and why not), and how
to make its runner. One module per backend defines its entries; `registry.py` lists them.

Backend modules import their libraries (onnxruntime, torch, tensorrt) only inside the probe
and the runner factory, so listing backends or parsing `--backend` costs nothing.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from quantpipe.engines.base import RunnerContext
from quantpipe.errors import QuantpipeError

# What a backend's runner takes: an ONNX file, a PyTorch module, or a serialized engine.
ModelKind = Literal["onnx", "torch", "engine"]
Precision = Literal["fp32", "fp16", "int8"]


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes an engine accepts (TensorRT's optimization profile on the batch axis)."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise QuantpipeError(
                f"batch profile {self.min}/{self.opt}/{self.max} is not 1 ≤ min ≤ opt ≤ max"
            )

    def admits(self, batch: int) -> bool:
        return self.min <= batch <= self.max


def outside_profile(engine: str, batch: int, low: int, high: int) -> QuantpipeError:
    """The one-line refusal of a batch size an engine's profile does not admit."""
    return QuantpipeError(
        f"batch size {batch} is outside the profile of engine {engine} (min {low}, max "
        f"{high}): choose batch sizes in that range, or rebuild the engine with --batch-sizes "
        "covering it"
    )


@dataclass(frozen=True)
class BuildJob:
    """One engine to build.

    Attributes:
        source: the ONNX model to build from (FP32, FP16 or Q/DQ INT8, per `precision`).
        out: where to write the engine (a temporary name; the stage renames it).
        precision: what the engine computes in.
        profile: the batch sizes it must accept.
        workspace_mib: TensorRT's workspace memory pool limit.
        cache_dir: where timing caches live (one per GPU and runtime version).
    """

    source: Path
    out: Path
    precision: Precision
    profile: BatchProfile
    workspace_mib: int = 4096
    cache_dir: Path | None = None


@dataclass(frozen=True)
class BuildInfo:
    """What a builder reports: the runtime and version that built it, and its options."""

    runtime: str
    runtime_version: str
    options: dict[str, Any]


@dataclass(frozen=True)
class RunnerOptions:
    """Settings every runner honours where they apply.

    Attributes:
        threads: intra-op CPU threads, 0 for the library's default.
        spinning: False where runners take turns on the same cores (benchmarks): ONNX
            Runtime's idle threads then stop spinning, which slowed the next session by up
            to 2.6× here.
    """

    threads: int = 0
    spinning: bool = True
    precision: Precision = "fp32"  # PyTorch CUDA runners: the dtype the model runs in
    cuda_graphs: bool = False  # PyTorch CUDA runners: replay each input shape as a CUDA graph

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise QuantpipeError(f"threads must be 0 (auto) or positive, got {self.threads}")


@dataclass(frozen=True)
class Availability:
    """`detail` is what runs (e.g. a version) when available, else why it is not."""

    available: bool
    detail: str


@dataclass(frozen=True)
class Backend:
    """One way to run a model.

    Attributes:
        name: what users pass as --backend.
        description: one line for `quantpipe backends`.
        runs: the kind of model its runner takes.
        probe: checks, without side effects, whether it can run here.
        factory: makes a runner for a model of kind `runs`.
        builder: turns an ONNX model into the engine file this backend runs (None: the
            backend builds no engines, e.g. PyTorch).
        engine_suffix: the engine file's suffix (.onnx for ONNX Runtime, .plan for TensorRT).
        int8_build: which INT8 model of a run it builds from: the portable Q/DQ model
            ("qdq") or the ONNX Runtime CPU build ("ort").
    """

    name: str
    description: str
    runs: ModelKind
    probe: Callable[[], Availability]
    factory: Callable[[Any, RunnerOptions], RunnerContext]
    builder: Callable[[BuildJob], BuildInfo] | None = None
    engine_suffix: str = ".onnx"
    int8_build: Literal["qdq", "ort"] = "qdq"

    def runner(self, model: Any, options: RunnerOptions | None = None) -> RunnerContext:
        """A runner for `model`; a clear error when this backend cannot run here."""
        self.require_available()
        return self.factory(model, options or RunnerOptions())

    def build(self, job: BuildJob) -> BuildInfo:
        """Build the engine of `job`; a clear error when this backend builds none or cannot
        run here."""
        if self.builder is None:
            raise QuantpipeError(f"backend {self.name} builds no engine files")
        self.require_available()
        return self.builder(job)

    def require_available(self) -> None:
        availability = self.probe()
        if not availability.available:
            raise QuantpipeError(
                f"backend {self.name} is not available here: {availability.detail}; "
                "see `quantpipe backends`"
            )


def pick(name: str, backends: dict[str, Backend]) -> Backend:
    """The backend called `name`, or an error naming the close ones."""
    if name in backends:
        return backends[name]
    close = difflib.get_close_matches(name, list(backends), n=2, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise QuantpipeError(
        f"unknown backend {name!r}: {hint}use one of {', '.join(backends)} "
        "(`quantpipe backends` says which work here)"
    )


def unavailable_because_missing(module: str, error: BaseException, install: str) -> Availability:
    """The usual reason: a library that does not import (missing or broken)."""
    return Availability(False, f"{module} does not import ({_first_line(error)}); {install}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:160] if text else type(error).__name__
