"""Error-optimal clipping of low-bit blocks.

A 4-bit block spends its 16 levels on [min, max]; one outlier stretches the step for
all other weights. Shrinking the range to [lo, hi] = mean + s * ([min, max] - mean)
for s in a small grid, then clamping the outliers, often lowers the block's MSE. The
search evaluates every grid factor for every block at once (an array of shape
(factors, blocks, B)) and keeps, per block, the candidate with the lowest exact MSE
after FP16 rounding of lo/hi, i.e. of what the decoder will use. The unclipped range
is candidate 0 and wins ties, so clipping never increases a block's MSE.

The search minimises the plain (unweighted) MSE of the block, by design: importance
decides *which* blocks get more bits, clipping only decides how a block spends its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantpipe.btc.kernels import F32, inverse_step, row_sum, step_f32

#: Shrink factors tried by default (1.0, the plain min/max range, is always tried too).
DEFAULT_CLIP_GRID: tuple[float, ...] = (0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5)


@dataclass(frozen=True, eq=False)
class ClipChoice:
    """Result for the searched rows: which changed, and their new header, codes and error."""

    changed: np.ndarray  # bool per searched row
    lo: np.ndarray  # float32 on the FP16 grid, for changed rows
    hi: np.ndarray
    q: np.ndarray  # integer-valued float32 codes (changed rows, b)
    rec: np.ndarray  # float32 reconstruction (changed rows, b)
    sse: np.ndarray  # float64 per changed row


def search_clip(
    x2d: np.ndarray,
    mean: np.ndarray,
    mn: np.ndarray,
    mx: np.ndarray,
    plain_sse: np.ndarray,
    levels: float,
    grid: tuple[float, ...],
) -> ClipChoice:
    """Try every shrink factor on every row; return the rows where one beats plain min/max.

    Args:
        x2d: (r, b) float32 weights of low-bit blocks.
        mean, mn, mx: float32 per row: the block's mean, min and max.
        plain_sse: float64 per row, SSE of the unclipped encoding (candidate 0).
        levels: largest code, 2**bits - 1.
        grid: shrink factors in (0, 1).
    """
    s = np.asarray(grid, dtype=F32)[:, None]
    lo = (mean + s * (mn - mean)).astype(np.float16).astype(F32)
    hi = (mean + s * (mx - mean)).astype(np.float16).astype(F32)
    lo32 = lo[..., None]
    step = step_f32(lo, hi, np.full(lo.shape, levels, dtype=F32))[..., None]
    q = np.subtract(x2d[None], lo32)
    q *= inverse_step(step)
    np.clip(q, F32(0.0), F32(levels), out=q)
    np.rint(q, out=q)
    # Same float32 operations, same order, as kernels.reconstruct: bit-exact with decode.
    rec = q * step
    rec += lo32
    err = np.subtract(x2d[None], rec)
    err *= err
    k, r, b = err.shape
    sse = row_sum(err.reshape(k * r, b)).reshape(k, r)
    best = np.argmin(np.concatenate([plain_sse[None], sse]), axis=0)
    changed = best > 0
    pick = best[changed] - 1
    rows = np.flatnonzero(changed)
    return ClipChoice(
        changed=changed,
        lo=lo[pick, rows],
        hi=hi[pick, rows],
        q=q[pick, rows],
        rec=rec[pick, rows],
        sse=sse[pick, rows],
    )


def check_grid(grid: tuple[float, ...]) -> str | None:
    """Return a message if `grid` is not a tuple of distinct factors in (0, 1), else None."""
    if not isinstance(grid, tuple):
        return f"clip_grid must be a tuple of floats, got {type(grid).__name__}"
    for s in grid:
        if not isinstance(s, (int, float)) or not 0.0 < float(s) < 1.0:
            return f"clip_grid factor {s!r} is not allowed: each must be in (0, 1)"
    if len(set(grid)) != len(grid) or len(grid) > 32:
        return f"clip_grid {grid!r}: factors must be distinct, at most 32"
    return None
