"""Encode and decode one tensor with block transform coding (the paper's Section 3).

Per block of B weights: FP16 range [lo, hi] (lo rounded toward -inf and hi toward
+inf from the block's min and max, so the FP16 range covers every weight), mode
b = low_bits or high_bits, L = 2**b levels, step = (hi - lo) / (L - 1) in float32,
code q = clamp(rint((w - lo) / step), 0, L - 1), decoded value lo + q * step.
The encoder quantizes against the FP16 header the decoder will read and evaluates
errors with the decoder's own float32 formula (`kernels.reconstruct`), so what it
measured is bit for bit what the decoder produces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from quantpipe.btc.clipsearch import check_grid
from quantpipe.btc.encoded import (
    EncodedTensor,
    check_bits,
    check_block_size,
    is_real,
    n_blocks_for,
)
from quantpipe.btc.kernels import F32, header_step, levels_for, reconstruct
from quantpipe.btc.parallel import for_row_ranges, resolve_workers
from quantpipe.btc.rowcoder import Outputs, Plan, Variant, run_plan
from quantpipe.errors import QuantpipeError


@dataclass(frozen=True, eq=False)
class EncodeResult:
    """An encoded tensor plus what the encoder measured while coding it.

    Attributes:
        encoded: the coded tensor.
        block_sse: float64 per block, sum of squared errors of the decoded weights.
        block_wsse: float64 per block, importance-weighted SSE (None without importance).
        reconstruction: the encoder's decoded weights (float32, original shape) or None.
    """

    encoded: EncodedTensor
    block_sse: np.ndarray
    block_wsse: np.ndarray | None = None
    reconstruction: np.ndarray | None = None

    @property
    def rmse(self) -> float:
        """Root mean squared error of the decoded weights vs the originals."""
        return math.sqrt(float(self.block_sse.sum()) / self.encoded.n)


def as_flat_float32(w: np.ndarray, name: str) -> np.ndarray:
    """Flatten `w` (C order) as contiguous float32, rejecting non-float or empty input."""
    arr = np.asarray(w)
    if not np.issubdtype(arr.dtype, np.floating):
        raise QuantpipeError(f"tensor {name!r} has dtype {arr.dtype}; BTC codes float weights")
    if arr.size == 0:
        raise QuantpipeError(f"tensor {name!r} is empty (shape {arr.shape}); nothing to code")
    return np.ascontiguousarray(arr, dtype=F32).reshape(-1)


def _check_mode_args(
    n_blocks: int, tau: float | None, modes: np.ndarray | None, name: str
) -> np.ndarray | None:
    """Validate 'exactly one of tau / modes'; return modes as a bool array (or None)."""
    if (tau is None) == (modes is None):
        raise QuantpipeError(
            f"tensor {name!r}: pass exactly one of tau (the paper's sigma rule) or modes"
        )
    if tau is not None:
        if not is_real(tau) or not math.isfinite(tau) or tau < 0:
            raise QuantpipeError(f"tau={tau!r} is not allowed: use a finite number >= 0")
        return None
    m = np.asarray(modes)
    if m.dtype != np.bool_ or m.shape != (n_blocks,):
        raise QuantpipeError(
            f"tensor {name!r}: modes must be a bool array of {n_blocks} blocks "
            f"(True = high bits), got dtype {m.dtype} shape {m.shape}"
        )
    return m


def encode_tensor_with_error(
    w: np.ndarray,
    block_size: int = 64,
    *,
    tau: float | None = None,
    modes: np.ndarray | None = None,
    low_bits: int = 4,
    high_bits: int = 8,
    clip_grid: tuple[float, ...] = (),
    importance: np.ndarray | None = None,
    reconstruction: bool = False,
    name: str = "tensor",
    workers: int | None = None,
) -> EncodeResult:
    """Encode `w` and return the per-block errors the encoder measured.

    Args:
        w: float weights, any shape (flattened in C order).
        block_size: B, weights per block.
        tau: the paper's rule: a block gets high_bits iff its population std >= tau.
        modes: instead of tau, bool per block (True = high_bits).
        low_bits, high_bits: the two code widths (1 <= low < high <= 8).
        clip_grid: shrink factors for error-optimal clipping of low-bit blocks
            (`clipsearch.DEFAULT_CLIP_GRID`); empty = plain min/max.
        importance: non-negative weight per element (same size as w) for `block_wsse`.
        reconstruction: also return the encoder's decoded weights.
        name: the tensor's name, used in error messages.
        workers: threads (None = all available CPUs).
    """
    x, weight = _inputs(w, block_size, importance, name)
    var = _variant(x.size, block_size, tau, modes, low_bits, high_bits, clip_grid, name)
    return _encode(w, x, weight, name, block_size, var, workers, keep_rec=reconstruction)


def encode_tensor(
    w: np.ndarray,
    block_size: int = 64,
    *,
    tau: float | None = None,
    modes: np.ndarray | None = None,
    low_bits: int = 4,
    high_bits: int = 8,
    clip_grid: tuple[float, ...] = (),
    name: str = "tensor",
    workers: int | None = None,
) -> EncodedTensor:
    """Encode `w`; arguments as for `encode_tensor_with_error`.

    Skips the error bookkeeping (reconstruction and SSE) unless clipping needs it.
    """
    x, _ = _inputs(w, block_size, None, name)
    var = _variant(x.size, block_size, tau, modes, low_bits, high_bits, clip_grid, name)
    return _encode(w, x, None, name, block_size, var, workers, error=bool(clip_grid)).encoded


def encode_tensor_low_with_range(
    w: np.ndarray,
    block_size: int = 64,
    *,
    low_bits: int = 4,
    high_bits: int = 8,
    clip_grid: tuple[float, ...] = (),
    importance: np.ndarray | None = None,
    name: str = "tensor",
    workers: int | None = None,
) -> tuple[EncodeResult, np.ndarray, np.ndarray]:
    """Code every block at low_bits and also return each block's unclipped FP16 range.

    What the target-bits allocator needs: the low-bit errors, and the range from which
    the high-bit step (and so the high-bit error) follows. Arguments as for
    `encode_tensor_with_error`.

    Returns:
        (result, range_lo, range_hi), the ranges float32 on the FP16 grid.
    """
    x, weight = _inputs(w, block_size, importance, name)
    nb = n_blocks_for(x.size, block_size)
    var = _variant(
        x.size, block_size, None, np.zeros(nb, np.bool_), low_bits, high_bits, clip_grid, name
    )
    out = Outputs.allocate(x.size, nb, True, weight is not None, False, keep_range=True)
    run_plan(Plan(name, block_size, x, weight, var, out), resolve_workers(workers))
    ranges = (out.range_lo, out.range_hi)
    if ranges[0] is None or ranges[1] is None:  # cannot happen: keep_range=True
        raise RuntimeError("range arrays were not allocated")
    return _result(out, var, tuple(np.shape(w)), block_size), ranges[0], ranges[1]


def _inputs(
    w: np.ndarray, block_size: int, importance: np.ndarray | None, name: str
) -> tuple[np.ndarray, np.ndarray | None]:
    check_block_size(block_size)
    x = as_flat_float32(w, name)
    if importance is None:
        return x, None
    weight = as_flat_float32(importance, f"{name} importance")
    if weight.size != x.size:
        raise QuantpipeError(f"importance for {name!r} has {weight.size} elements, not {x.size}")
    return x, weight


def _variant(
    n: int,
    block_size: int,
    tau: float | None,
    modes: np.ndarray | None,
    low_bits: int,
    high_bits: int,
    clip_grid: tuple[float, ...],
    name: str,
) -> Variant:
    """Validate the mode and bit arguments into a Variant."""
    check_bits(low_bits, high_bits)
    if (msg := check_grid(clip_grid)) is not None:
        raise QuantpipeError(msg)
    m = _check_mode_args(n_blocks_for(n, block_size), tau, modes, name)
    tau2 = None if tau is None else float(tau) ** 2
    return Variant(low_bits, high_bits, tau2, m, tuple(float(s) for s in clip_grid))


def _encode(
    w: np.ndarray,
    x: np.ndarray,
    weight: np.ndarray | None,
    name: str,
    block_size: int,
    var: Variant,
    workers: int | None,
    error: bool = True,
    keep_rec: bool = False,
) -> EncodeResult:
    nb = n_blocks_for(x.size, block_size)
    out = Outputs.allocate(x.size, nb, error, weight is not None, keep_rec)
    run_plan(Plan(name, block_size, x, weight, var, out), resolve_workers(workers))
    return _result(out, var, tuple(np.shape(w)), block_size)


def _result(out: Outputs, var: Variant, shape: tuple[int, ...], block_size: int) -> EncodeResult:
    enc = EncodedTensor(
        shape=shape,
        block_size=block_size,
        high=out.high,
        mins=out.lo.astype(np.float16),  # exact: the values lie on the FP16 grid
        maxs=out.hi.astype(np.float16),
        codes=out.codes,
        low_bits=var.low_bits,
        high_bits=var.high_bits,
    )
    sse = out.sse if out.sse is not None else np.zeros(0)
    rec = None if out.rec is None else out.rec.reshape(shape)
    return EncodeResult(encoded=enc, block_sse=sse, block_wsse=out.wsse, reconstruction=rec)


def decode_tensor(enc: EncodedTensor, *, workers: int | None = None) -> np.ndarray:
    """Decode to float32 of the original shape: lo + code * step per block."""
    b = enc.block_size
    levels = levels_for(enc.high, enc.low_bits, enc.high_bits)
    step = header_step(enc.mins, enc.maxs, levels)
    lo32 = enc.mins.astype(F32)
    out = np.empty(enc.n, dtype=F32)
    n_full, tail = divmod(enc.n, b)

    def rows(s: int, e: int) -> None:
        piece = slice(s * b, e * b)
        reconstruct(
            enc.codes[piece].reshape(-1, b), lo32[s:e], step[s:e], out[piece].reshape(-1, b)
        )

    for_row_ranges(n_full, b, resolve_workers(workers), rows)
    if tail:
        piece = slice(n_full * b, enc.n)
        reconstruct(
            enc.codes[piece].reshape(1, tail), lo32[-1:], step[-1:], out[piece].reshape(1, tail)
        )
    return out.reshape(enc.shape)


def tensor_rmse(w: np.ndarray, enc: EncodedTensor) -> float:
    """RMSE of decode(enc) against the original weights `w` (computed in float64)."""
    diff = decode_tensor(enc).astype(np.float64) - np.asarray(w, dtype=np.float64)
    return math.sqrt(float(np.mean(diff * diff)))
