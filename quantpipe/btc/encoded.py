"""The coded form of one weight tensor and its exact bit accounting.

A tensor of n weights is flattened (C order) and cut into ceil(n / B) blocks of B
weights; the last block may be partial. Each block carries a header of
`HEADER_BITS_PER_BLOCK` = 33 bits (FP16 min, FP16 max, 1-bit mode flag) and one
code of `low_bits` or `high_bits` per real weight.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantpipe.errors import QuantpipeError

#: FP16 min + FP16 max + the 1-bit mode flag (the paper's 33 bits per block).
HEADER_BITS_PER_BLOCK = 16 + 16 + 1

MIN_BLOCK_SIZE = 2
MAX_BLOCK_SIZE = 65536


def is_real(x: Any) -> bool:
    """A real number (numpy scalars included), not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool | np.bool_)


def check_bits(low_bits: int, high_bits: int) -> None:
    """Raise QuantpipeError unless 1 <= low_bits < high_bits <= 8."""
    if not (isinstance(low_bits, int) and isinstance(high_bits, int)):
        raise QuantpipeError(f"low_bits/high_bits must be ints, got {low_bits!r}/{high_bits!r}")
    if not 1 <= low_bits < high_bits <= 8:
        raise QuantpipeError(
            f"bit widths low_bits={low_bits}, high_bits={high_bits} are not allowed: "
            "need 1 <= low_bits < high_bits <= 8 (the paper uses 4 and 8)"
        )


def check_block_size(block_size: int) -> None:
    """Raise QuantpipeError unless block_size is an int in [2, 65536]."""
    if not isinstance(block_size, int) or isinstance(block_size, bool):
        raise QuantpipeError(f"block_size must be an int, got {block_size!r}")
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise QuantpipeError(
            f"block_size={block_size} is not allowed: use {MIN_BLOCK_SIZE}..{MAX_BLOCK_SIZE} "
            "(the paper uses 32, 64, 128 or 256)"
        )


def n_blocks_for(n: int, block_size: int) -> int:
    """Number of blocks (the last one possibly partial) for n weights."""
    return -(-n // block_size)


def block_lengths(n: int, block_size: int) -> np.ndarray:
    """Real element count of each block (int64): B everywhere, n mod B for a partial last."""
    nb = n_blocks_for(n, block_size)
    lengths = np.full(nb, block_size, dtype=np.int64)
    if nb and n % block_size:
        lengths[-1] = n % block_size
    return lengths


@dataclass(frozen=True, eq=False)
class EncodedTensor:
    """One BTC-coded tensor.

    Attributes:
        shape: the original tensor shape.
        block_size: B.
        high: bool per block; True = `high_bits` mode (the 1-bit header flag).
        mins, maxs: float16 per block, the decoder's range [lo, hi] (after any clipping).
        codes: uint8 per weight (flattened, C order), each < 2**bits of its block.
        low_bits, high_bits: the two bit widths (4 and 8 in the paper).
    """

    shape: tuple[int, ...]
    block_size: int
    high: np.ndarray
    mins: np.ndarray
    maxs: np.ndarray
    codes: np.ndarray
    low_bits: int = 4
    high_bits: int = 8

    def __post_init__(self) -> None:
        check_block_size(self.block_size)
        check_bits(self.low_bits, self.high_bits)
        if self.n < 1:
            raise QuantpipeError(f"EncodedTensor shape {self.shape} has no elements")
        nb = n_blocks_for(self.n, self.block_size)
        expect = {
            "high": (self.high, np.bool_, nb),
            "mins": (self.mins, np.float16, nb),
            "maxs": (self.maxs, np.float16, nb),
            "codes": (self.codes, np.uint8, self.n),
        }
        for field, (arr, dtype, size) in expect.items():
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.shape != (size,):
                got = (getattr(arr, "dtype", type(arr)), getattr(arr, "shape", None))
                raise QuantpipeError(
                    f"EncodedTensor.{field} must be a 1-D {np.dtype(dtype).name} array of "
                    f"{size} elements for shape {self.shape}, B={self.block_size}; got {got}"
                )

    @property
    def n(self) -> int:
        """Number of weights."""
        return math.prod(self.shape)

    @property
    def n_blocks(self) -> int:
        """Number of blocks, the last one possibly partial."""
        return n_blocks_for(self.n, self.block_size)

    def block_lengths(self) -> np.ndarray:
        """Real element count per block (int64)."""
        return block_lengths(self.n, self.block_size)

    def bits_per_block(self) -> np.ndarray:
        """Code width per block (uint8): high_bits where `high`, else low_bits."""
        return np.where(self.high, self.high_bits, self.low_bits).astype(np.uint8)

    @property
    def n_high_weights(self) -> int:
        """Weights that sit in high-bit blocks (partial last block counted by its length)."""
        return int(self.block_lengths()[self.high].sum())

    @property
    def payload_bits(self) -> int:
        """Sum over blocks of bits x real block length."""
        n_high = self.n_high_weights
        return n_high * self.high_bits + (self.n - n_high) * self.low_bits

    @property
    def header_bits(self) -> int:
        """33 bits per block."""
        return HEADER_BITS_PER_BLOCK * self.n_blocks

    @property
    def b_avg(self) -> float:
        """Payload bits per weight."""
        return self.payload_bits / self.n

    @property
    def b_eff(self) -> float:
        """Payload plus header bits per weight (b_avg + 33 / B for whole blocks)."""
        return (self.payload_bits + self.header_bits) / self.n

    @property
    def frac_high(self) -> float:
        """Fraction of blocks in high-bit mode."""
        return float(np.count_nonzero(self.high)) / self.n_blocks
