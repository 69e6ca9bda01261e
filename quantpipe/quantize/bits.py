"""Bit widths below 8 on an INT8 graph: what a mixed-precision model quantizes to.

A b-bit weight is stored as INT8 whose values lie on the b-bit grid: symmetric, scale
amax / (2^(b−1) − 1), codes clipped to ±(2^(b−1) − 1). An A-bit activation is clipped to
±(2^(A−1) − 1) · scale before an INT8 QuantizeLinear of scale amax / (2^(A−1) − 1). ONNX
Runtime and TensorRT run both as INT8: below 8 bits, a width is a storage format (weights,
see quantpipe/mixed/packed.py) and an accuracy model (activations), not a faster kernel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from quantpipe.errors import QuantpipeError

MIN_BITS, MAX_BITS = 2, 8


def qmax(bits: int) -> int:
    """The largest code of a symmetric `bits`-bit grid: 2^(bits−1) − 1 (127 at 8 bits)."""
    return 2 ** (bits - 1) - 1


def check_bits(bits: object, what: str) -> int:
    """`bits` when it is an integer in 2..8; else a clear error naming `what`."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise QuantpipeError(
            f"{what}: bit width {bits!r} is not an integer in {MIN_BITS}..{MAX_BITS}"
        )
    return bits


@dataclass(frozen=True)
class BitWidths:
    """Weight bits per node name (absent: 8) and one width for every activation."""

    weights: Mapping[str, int] = field(default_factory=dict)
    activations: int = 8

    def __post_init__(self) -> None:
        for node, bits in self.weights.items():
            check_bits(bits, f"weights of node {node!r}")
        check_bits(self.activations, "activations")
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))

    def weight(self, node: str) -> int:
        return self.weights.get(node, MAX_BITS)

    @property
    def is_int8(self) -> bool:
        return self.activations == MAX_BITS and all(b == MAX_BITS for b in self.weights.values())


INT8 = BitWidths()
