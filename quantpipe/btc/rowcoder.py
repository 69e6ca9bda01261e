"""The encoder's engine: code a tensor chunk by chunk of blocks (rows).

A `Plan` holds one tensor's flat input, optional importance, a `Variant` (how modes
are chosen: the sigma rule or fixed modes, with or without clipping) and the
`Outputs` arrays that every chunk writes its rows into.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from quantpipe.btc.clipsearch import search_clip
from quantpipe.btc.kernels import (
    F32,
    FP16_MAX,
    fp16_outward,
    inverse_step,
    levels_for,
    quantize_shifted,
    reconstruct,
    row_min_max,
    row_sse,
    row_sum,
    row_variance,
    step_f32,
)
from quantpipe.btc.parallel import CHUNK_ELEMS, for_row_ranges
from quantpipe.errors import QuantpipeError

_local = threading.local()


def _scratch(i: int, shape: tuple[int, int]) -> np.ndarray:
    """Thread-local float32 scratch buffer number i, viewed as `shape`."""
    size = shape[0] * shape[1]
    bufs: dict[int, np.ndarray] = _local.__dict__.setdefault("bufs", {})
    buf = bufs.get(i)
    if buf is None or buf.size < size:
        buf = bufs[i] = np.empty(max(size, CHUNK_ELEMS), dtype=F32)
    return buf[:size].reshape(shape)


@dataclass(frozen=True, eq=False)
class Variant:
    """One way to choose modes: by the sigma rule (tau2 = tau**2) or fixed `modes`."""

    low_bits: int
    high_bits: int
    tau2: float | None
    modes: np.ndarray | None
    clip_grid: tuple[float, ...] = ()


@dataclass(frozen=True, eq=False)
class Outputs:
    """Per-variant output arrays, written chunk by chunk (disjoint rows per thread)."""

    codes: np.ndarray  # uint8 per weight
    lo: np.ndarray  # float32 per block, values on the FP16 grid
    hi: np.ndarray
    high: np.ndarray  # bool per block
    sse: np.ndarray | None  # float64 per block, None = skip error bookkeeping
    wsse: np.ndarray | None
    rec: np.ndarray | None  # float32 per weight, the encoder's reconstruction
    range_lo: np.ndarray | None = None  # float32 per block: the range before any clipping
    range_hi: np.ndarray | None = None

    @classmethod
    def allocate(
        cls, n: int, nb: int, error: bool, weighted: bool, keep_rec: bool, keep_range: bool = False
    ) -> Outputs:
        """Empty outputs for n weights in nb blocks."""
        return cls(
            range_lo=np.empty(nb, dtype=F32) if keep_range else None,
            range_hi=np.empty(nb, dtype=F32) if keep_range else None,
            codes=np.empty(n, dtype=np.uint8),
            lo=np.empty(nb, dtype=F32),
            hi=np.empty(nb, dtype=F32),
            high=np.empty(nb, dtype=np.bool_),
            sse=np.empty(nb, dtype=np.float64) if error else None,
            wsse=np.empty(nb, dtype=np.float64) if error and weighted else None,
            rec=np.empty(n, dtype=F32) if keep_rec else None,
        )


@dataclass(frozen=True, eq=False)
class Plan:
    """One tensor to code: flat float32 input, optional importance, how, and where to."""

    name: str
    block_size: int
    x: np.ndarray
    weight: np.ndarray | None
    variant: Variant
    out: Outputs


@dataclass(frozen=True, eq=False)
class _Rows:
    """The rows of one chunk: input (r, b), block and element ranges."""

    x: np.ndarray
    blocks: slice
    elems: slice

    def of(self, flat: np.ndarray) -> np.ndarray:
        """This chunk's (r, b) view of a per-weight array."""
        return flat[self.elems].reshape(self.x.shape)


def run_plan(plan: Plan, workers: int) -> None:
    """Code whole blocks (chunked, threaded), then the partial last block if any."""
    b = plan.block_size
    n_full, tail = divmod(plan.x.size, b)

    def chunk(start: int, stop: int) -> None:
        elems = slice(start * b, stop * b)
        _encode_rows(plan, _Rows(plan.x[elems].reshape(-1, b), slice(start, stop), elems))

    for_row_ranges(n_full, b, workers, chunk)
    if tail:
        elems = slice(n_full * b, plan.x.size)
        rows = _Rows(plan.x[elems].reshape(1, tail), slice(n_full, n_full + 1), elems)
        _encode_rows(plan, rows)


def _header(name: str, rows: _Rows) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row min/max and the outward-rounded FP16 range, with the input checks."""
    mn, mx = row_min_max(rows.x.reshape(-1), rows.x.shape[1])
    bad = ~(np.isfinite(mn) & np.isfinite(mx))
    if bad.any():
        blk = rows.blocks.start + int(np.flatnonzero(bad)[0])
        raise QuantpipeError(
            f"tensor {name!r} has NaN or Inf weights (first in block {blk}); "
            "BTC needs finite weights: fix or retrain the checkpoint"
        )
    lo, hi = fp16_outward(mn, mx)
    if lo.min() < -FP16_MAX or hi.max() > FP16_MAX:
        peak = float(max(-mn.min(), mx.max()))
        raise QuantpipeError(
            f"tensor {name!r} has weights up to |w| = {peak:.6g}, beyond the FP16 "
            "block header range (65504); leave this tensor out of BTC (it stays FP32)"
        )
    return mn, mx, lo, hi


def _encode_rows(plan: Plan, rows: _Rows) -> None:
    var, out = plan.variant, plan.out
    mn, mx, lo, hi = _header(plan.name, rows)
    d = _scratch(0, rows.x.shape)
    np.subtract(rows.x, lo[:, None], out=d)
    high = row_variance(d) >= var.tau2 if var.modes is None else var.modes[rows.blocks]
    levels = levels_for(high, var.low_bits, var.high_bits)
    step = step_f32(lo, hi, levels)
    quantize_shifted(d, inverse_step(step), levels, rows.of(out.codes), d)
    out.lo[rows.blocks], out.hi[rows.blocks], out.high[rows.blocks] = lo, hi, high
    if out.range_lo is not None and out.range_hi is not None:
        out.range_lo[rows.blocks], out.range_hi[rows.blocks] = lo, hi
    if out.sse is not None:
        _errors(plan, rows, (d, step, lo, high, mn, mx))


def _errors(plan: Plan, rows: _Rows, state: tuple) -> None:
    """Reconstruct with the decoder's formula, record (weighted) SSE, then clip."""
    var, out = plan.variant, plan.out
    q, step, lo, high, mn, mx = state
    rec = rows.of(out.rec) if out.rec is not None else _scratch(2, q.shape)
    reconstruct(q, lo, step, rec)
    weight = None if plan.weight is None else rows.of(plan.weight)
    sse, wsse = row_sse(rows.x, rec, weight, _scratch(3, q.shape))
    if var.clip_grid and not high.all():
        _clip_low_rows(rows, var, out, (high, mn, mx, sse, wsse, weight))
    if out.sse is not None:
        out.sse[rows.blocks] = sse
    if out.wsse is not None and wsse is not None:
        out.wsse[rows.blocks] = wsse


_CLIP_BATCH_ROWS = 512  # bounds the (factors, rows, B) temporaries of the search


def _clip_low_rows(rows: _Rows, var: Variant, out: Outputs, state: tuple) -> None:
    """Replace low-bit rows' encoding by the clipped one where that lowers their SSE."""
    high, mn, mx, sse, wsse, weight = state
    low_all = np.flatnonzero(~high)
    levels = float(2**var.low_bits - 1)
    for i in range(0, low_all.size, _CLIP_BATCH_ROWS):
        low = low_all[i : i + _CLIP_BATCH_ROWS]
        xl = rows.x[low]
        mean = (row_sum(xl) / xl.shape[1]).astype(F32)
        choice = search_clip(xl, mean, mn[low], mx[low], sse[low], levels, var.clip_grid)
        sel = low[choice.changed]
        if sel.size == 0:
            continue
        rows.of(out.codes)[sel] = choice.q
        if out.rec is not None:
            rows.of(out.rec)[sel] = choice.rec
        out.lo[rows.blocks.start + sel] = choice.lo
        out.hi[rows.blocks.start + sel] = choice.hi
        sse[sel] = choice.sse
        if wsse is not None and weight is not None:
            err = rows.x[sel] - choice.rec
            wsse[sel] = np.einsum("ij,ij,ij->i", err, err, weight[sel])
