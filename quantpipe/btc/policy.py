"""Mode-allocation policies: the paper's sigma rule, or a target bit budget."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from quantpipe.btc.clipsearch import check_grid
from quantpipe.btc.encoded import HEADER_BITS_PER_BLOCK, check_bits, check_block_size, is_real
from quantpipe.errors import QuantpipeError


def _check_common(block_size: int, low_bits: int, high_bits: int, clip_grid: Any) -> None:
    check_block_size(block_size)
    check_bits(low_bits, high_bits)
    if (msg := check_grid(clip_grid)) is not None:
        raise QuantpipeError(msg)


@dataclass(frozen=True)
class SigmaRule:
    """The paper's rule: a block gets high_bits iff its population std >= tau.

    Attributes:
        tau: global threshold (the paper uses 0.05).
        block_size: B.
        low_bits, high_bits: code widths (4 and 8 in the paper).
        clip_grid: shrink factors for error-optimal clipping of low-bit blocks; () = off.
    """

    tau: float = 0.05
    block_size: int = 64
    low_bits: int = 4
    high_bits: int = 8
    clip_grid: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _check_common(self.block_size, self.low_bits, self.high_bits, self.clip_grid)
        tau = self.tau
        if not is_real(tau) or not math.isfinite(tau) or tau < 0:
            raise QuantpipeError(f"tau={tau!r} is not allowed: use a finite number >= 0")

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (for summaries and container metadata)."""
        return {"policy": "sigma", "tau": self.tau, **_common(self)}


@dataclass(frozen=True)
class TargetBits:
    """Choose high-bit blocks so the model's effective bits per weight meet a budget.

    Effective bits count payload and the 33-bit block headers over all coded weights.
    Blocks are upgraded greedily by importance-weighted error reduction per extra bit.

    Attributes:
        target_bits: the budget X in effective bits per weight, headers included.
        block_size, low_bits, high_bits, clip_grid: as for SigmaRule.
    """

    target_bits: float
    block_size: int = 64
    low_bits: int = 4
    high_bits: int = 8
    clip_grid: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _check_common(self.block_size, self.low_bits, self.high_bits, self.clip_grid)
        x = self.target_bits
        floor = self.low_bits + HEADER_BITS_PER_BLOCK / self.block_size
        ok = is_real(x) and math.isfinite(x)
        if not ok or x < floor:
            raise QuantpipeError(
                f"target_bits={x!r} is not allowed: use effective bits per weight, at least "
                f"{floor:.4g} for low_bits={self.low_bits}, B={self.block_size}"
            )

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (for summaries and container metadata)."""
        return {"policy": "target_bits", "target_bits": self.target_bits, **_common(self)}


Policy = SigmaRule | TargetBits


def _common(p: SigmaRule | TargetBits) -> dict[str, Any]:
    return {
        "block_size": p.block_size,
        "low_bits": p.low_bits,
        "high_bits": p.high_bits,
        "clip_grid": list(p.clip_grid),
    }
