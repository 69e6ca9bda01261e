"""A backend that exists only for the tests: ONNX's own reference evaluator (pure Python).

It shows what adding a backend takes: this module and one registry entry. The test that
uses it puts the entry into the registry; nothing else in quantpipe changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from quantpipe.engines.backend import Availability, Backend, RunnerOptions
from quantpipe.engines.base import RunnerContext


class ReferenceRunner(RunnerContext):
    def __init__(self, path: Path) -> None:
        self.path, self.name = path, "onnx-reference"
        self._evaluator: Any = None

    def activate(self) -> None:
        from onnx.reference import ReferenceEvaluator

        self._evaluator = ReferenceEvaluator(str(self.path))

    @property
    def input_names(self) -> list[str]:
        return list(self._evaluator.input_names)

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._evaluator.run(None, feed)
        return dict(zip(self._evaluator.output_names, outputs, strict=True))

    def deactivate(self) -> None:
        self._evaluator = None


def _probe() -> Availability:
    import onnx

    return Availability(True, f"onnx {onnx.__version__} reference evaluator")


def _factory(model: Path, options: RunnerOptions) -> ReferenceRunner:
    return ReferenceRunner(model)


ONNX_REFERENCE = Backend(
    "onnx-reference", "ONNX reference evaluator (tests only)", "onnx", _probe, _factory
)
