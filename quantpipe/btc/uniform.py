"""Uniform baselines BTC is compared against.

1. Per-tensor min/max: asymmetric, 2**bits levels spanning [min, max] of the whole
   flattened tensor (the paper's 8-bit uniform baseline). Overhead: min and step as
   float32, 64 bits per tensor.
2. Per-channel percentile: symmetric, per output channel (axis 0), range
   +-amax_c with amax_c the `percentile` of |w| over the channel and codes in
   [-(2**(bits-1) - 1), 2**(bits-1) - 1]. Symmetric narrow-range because that is
   what ONNX QDQ / TensorRT INT8 weights use (zero point 0), so this baseline is the
   deployable one. Overhead: one float32 scale per channel.

Both are plain whole-array numpy: they are the reference point for speed as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from quantpipe.errors import QuantpipeError

F32 = np.float32


@dataclass(frozen=True, eq=False)
class UniformResult:
    """A baseline's reconstruction and cost.

    Attributes:
        reconstruction: float32, the input's shape.
        bits: payload bits per weight.
        b_eff: payload plus scale/offset overhead, bits per weight.
        rmse: vs the input.
    """

    reconstruction: np.ndarray
    bits: int
    b_eff: float
    rmse: float


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    d = a.astype(np.float64) - b.astype(np.float64)
    return math.sqrt(float(np.mean(d * d)))


def _as_float32(w: np.ndarray, bits: int) -> np.ndarray:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise QuantpipeError(f"bits={bits!r} is not allowed for a uniform baseline: use 2..8")
    x = np.asarray(w, dtype=F32)
    if x.size == 0 or not np.isfinite(x).all():
        raise QuantpipeError("uniform baseline needs a non-empty tensor of finite weights")
    return x


def minmax_encode(w: np.ndarray, bits: int = 8) -> tuple[np.ndarray, float, float]:
    """Per-tensor asymmetric min/max quantization.

    Returns:
        (uint8 codes, flat; lo; step) with w ~ lo + code * step.
    """
    x = _as_float32(w, bits).reshape(-1)
    lo, hi = F32(x.min()), F32(x.max())
    levels = F32(2**bits - 1)
    step = F32((hi - lo) / levels)
    t = np.subtract(x, lo)
    t *= F32(1.0) / step if step > 0 else F32(0.0)
    np.clip(t, F32(0.0), levels, out=t)
    np.rint(t, out=t)
    return t.astype(np.uint8), float(lo), float(step)


def minmax_decode(codes: np.ndarray, lo: float, step: float, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of minmax_encode, float32 of `shape`."""
    out = codes.astype(F32)
    out *= F32(step)
    out += F32(lo)
    return out.reshape(shape)


def per_tensor_minmax(w: np.ndarray, bits: int = 8) -> UniformResult:
    """The per-tensor min/max baseline: reconstruction, bits and RMSE."""
    codes, lo, step = minmax_encode(w, bits)
    rec = minmax_decode(codes, lo, step, np.shape(w))
    return UniformResult(rec, bits, bits + 64 / codes.size, _rmse(rec, np.asarray(w)))


def per_channel_percentile(
    w: np.ndarray, bits: int = 8, percentile: float = 99.99
) -> UniformResult:
    """Symmetric per-output-channel (axis 0) quantization clipped at a percentile of |w|.

    Args:
        w: weights with the output channel on axis 0 (Conv and Linear layout).
        bits: code width (codes in +-(2**(bits-1) - 1)).
        percentile: of |w| per channel, in (0, 100]; 100 = plain per-channel max.
    """
    if not 0 < percentile <= 100:
        raise QuantpipeError(f"percentile={percentile!r} is not allowed: use (0, 100]")
    x = _as_float32(w, bits)
    rows = x.reshape(x.shape[0] if x.ndim else 1, -1)
    amax = np.percentile(np.abs(rows), percentile, axis=1).astype(F32)
    qmax = F32(2 ** (bits - 1) - 1)
    scale = np.where(amax > 0, amax / qmax, F32(1.0)).astype(F32)[:, None]
    q = np.clip(np.rint(rows / scale), -qmax, qmax)
    rec = (q * scale).astype(F32).reshape(x.shape)
    return UniformResult(rec, bits, bits + 32 * rows.shape[0] / x.size, _rmse(rec, x))
