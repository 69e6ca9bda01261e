"""The runner contract (after Polygraphy's loader/runner split).

Every backend (ONNX Runtime, TensorRT, PyTorch) is used the same way, so accuracy and
latency are measured through one code path:

    with runner:                      # activate() ... deactivate()
        outputs = runner.infer({"input": batch})
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

if TYPE_CHECKING:
    import numpy as np


@runtime_checkable
class Runner(Protocol):
    name: str

    def activate(self) -> None: ...

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def deactivate(self) -> None: ...

    @property
    def input_names(self) -> list[str]: ...


class RunnerContext:
    """Base of quantpipe's runners: the Runner contract plus `with` support in terms of
    activate/deactivate."""

    name: str

    def activate(self) -> None:
        raise NotImplementedError

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def deactivate(self) -> None:
        raise NotImplementedError

    @property
    def input_names(self) -> list[str]:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.activate()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.deactivate()


def first_output(runner: Runner, x: np.ndarray) -> np.ndarray:
    """The first output of an active single-input runner for the batch `x`."""
    outputs = runner.infer({runner.input_names[0]: x})
    return next(iter(outputs.values()))
