"""What a backend is: a name, what it runs, whether it works here (and why not), and how
to make its runner. One module per backend defines its entries; `registry.py` lists them.

Backend modules import their libraries (onnxruntime, torch, tensorrt) only inside the probe
and the runner factory, so listing backends or parsing `--backend` costs nothing.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from quantpipe.engines.base import RunnerContext
from quantpipe.errors import QuantpipeError

# What a backend's runner takes: an ONNX file, a PyTorch module, or a serialized engine.
ModelKind = Literal["onnx", "torch", "engine"]


@dataclass(frozen=True)
class RunnerOptions:
    """Settings every runner honours. threads: intra-op CPU threads, 0 for the library's
    default."""

    threads: int = 0

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
    """

    name: str
    description: str
    runs: ModelKind
    probe: Callable[[], Availability]
    factory: Callable[[Any, RunnerOptions], RunnerContext]

    def runner(self, model: Any, options: RunnerOptions | None = None) -> RunnerContext:
        """A runner for `model`; a clear error when this backend cannot run here."""
        availability = self.probe()
        if not availability.available:
            raise QuantpipeError(
                f"backend {self.name} is not available here: {availability.detail}; "
                "see `quantpipe backends`"
            )
        return self.factory(model, options or RunnerOptions())


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
