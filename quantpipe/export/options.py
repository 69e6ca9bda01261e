"""How to export (torch-free, so stage configs can validate it without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass

from quantpipe.errors import QuantpipeError

MIN_OPSET, MAX_OPSET = 17, 21


@dataclass(frozen=True)
class ExportOptions:
    opset: int = MIN_OPSET
    simplify: bool = True

    def __post_init__(self) -> None:
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise QuantpipeError(
                f"--opset {self.opset} is not supported: use {MIN_OPSET} to {MAX_OPSET}"
            )
