"""amax searches over a |x| histogram: percentile, entropy (KL) and MSE.

All three take the bin counts and the bin width of a `TensorHistogram` and return amax in
the units of the tensor. They are vectorised over the candidate thresholds; the unit tests
hold each against a plain loop or a brute-force computation on the raw samples.
"""

from __future__ import annotations

import numpy as np

# INT8 symmetric: the KL search quantizes the reference distribution to 128 levels
# (2**(8-1)), TensorRT's and pytorch-quantization's choice.
NUM_QUANT_BINS = 128
QMAX = 127


def percentile_amax(counts: np.ndarray, bin_width: float, percentile: float) -> float:
    """|x| value below which ``percentile`` % of the histogram mass lies.

    The answer is interpolated linearly inside the bin where the cumulative count crosses
    the target (pytorch-quantization returns that bin's lower edge instead).
    """
    cum = np.cumsum(counts, dtype=np.float64)
    total = cum[-1]
    if total == 0:
        return 0.0
    target = total * percentile / 100.0
    j = int(np.searchsorted(cum, target, side="left"))
    j = min(j, len(counts) - 1)
    before = cum[j] - counts[j]
    frac = (target - before) / counts[j] if counts[j] else 1.0
    return float((j + frac) * bin_width)


def entropy_amax(counts: np.ndarray, bin_width: float, start_bin: int = 128) -> float:
    """TensorRT EntropyCalibration2 threshold: the clip minimising KL(P || Q).

    For each candidate i in [start_bin, last non-empty bin + 1]: P = counts[:i] with the outliers
    counts[i:] added to its last bin; Q = counts[:i] merged into 128 groups (bin j goes to
    group floor(128 j / i)) and expanded back, each group's mass spread evenly over its
    non-empty bins. As in pytorch-quantization's ``_compute_amax_entropy``: bin 0 is first
    replaced by bin 1 (post-ReLU zeros would otherwise dominate), both distributions are
    normalised, and the last of equal minima wins. amax = (i + 0.5) * bin_width, TensorRT's
    formula (pytorch-quantization returns i * bin_width).
    """
    h = counts.astype(np.float64)
    if len(h) > 1:
        h[0] = h[1]
    occupied = np.flatnonzero(h)
    if len(occupied) == 0:
        return 0.0
    # Our histogram's range is a power of two above the max, so its top bins can be empty;
    # TensorRT's ends at the max. Candidates stop where the data does (i = last bin + 1,
    # no outliers), as they would in TensorRT's histogram.
    stop = min(max(int(occupied[-1]) + 1, start_bin), len(h))
    divergences = _kl_divergences(h, np.arange(start_bin, stop + 1))
    best = len(divergences) - 1 - int(np.argmin(divergences[::-1]))
    return float((start_bin + best + 0.5) * bin_width)


def _kl_divergences(h: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """KL(P_i || Q_i) for every candidate i in ``cands``, from prefix sums in O(128) each.

    With S_g, N_g the mass and non-empty-bin count of group g, and o the outliers:
    sum_j p_j log q_j = sum_g S_g log(S_g / N_g) + o log q_{i-1}, and the normalisation adds
    log(sum Q / sum P).
    """
    total = h.sum()
    cum = np.concatenate([[0.0], np.cumsum(h)])
    nonzero = np.concatenate([[0], np.cumsum(h > 0)])
    hlogh = np.concatenate([[0.0], np.cumsum(_xlogx(h))])
    g = np.arange(NUM_QUANT_BINS + 1)
    bounds = -((-g[None, :] * cands[:, None]) // NUM_QUANT_BINS)  # ceil(g * i / 128)
    mass = np.diff(cum[bounds], axis=1)
    filled = np.diff(nonzero[bounds], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        level = np.where(filled > 0, mass / filled, 0.0)
        p_log_q = np.sum(np.where(mass > 0, mass * np.log(level), 0.0), axis=1)
        inside = cum[cands]
        outliers = total - inside
        last = h[cands - 1]
        p_last = last + outliers
        p_log_p = hlogh[cands - 1] + _xlogx(p_last)
        q_last = level[:, -1]
        p_log_q += np.where(outliers > 0, outliers * np.log(q_last), 0.0)
        kl = (p_log_p - p_log_q) / total + np.log(inside / total)
    infinite = (inside == 0) | ((outliers > 0) & (last == 0))
    return np.where(infinite, np.inf, kl)


def _xlogx(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, x * np.log(x), 0.0)


def mse_amax(counts: np.ndarray, bin_width: float, start_bin: int = 128) -> float:
    """amax minimising the expected squared error of symmetric INT8 fake quantization.

    Candidates are the bin edges k * bin_width for k in [start_bin, last non-empty bin + 1].
    Values are taken as uniform inside each bin, and the error of a bin is integrated in
    closed form: rounding error below amax, clipping error (x - amax)^2 above it. (A bin's
    centre alone, as pytorch-quantization uses, misjudges rounding when bins are about as
    wide as a quantization step.) The search scans every 4th edge, then every edge around
    the best one: the error curve is smooth at that scale, and it is 4x cheaper (resnet18,
    30 tensors: 0.6 s instead of 2.3 s).
    """
    occupied = np.flatnonzero(counts)
    if len(occupied) == 0:
        return 0.0
    last = int(occupied[-1]) + 1
    edges = np.arange(last + 1, dtype=np.float64) * bin_width
    weights = counts[:last].astype(np.float64) / bin_width
    coarse = np.arange(min(start_bin, last), last + 1, _MSE_STRIDE, dtype=np.float64)
    best = coarse[int(np.argmin(_mse_errors(edges, weights, coarse * bin_width)))]
    fine = np.arange(
        max(best - _MSE_STRIDE + 1, min(start_bin, last)), min(best + _MSE_STRIDE, last + 1)
    )
    return float(fine[int(np.argmin(_mse_errors(edges, weights, fine * bin_width)))] * bin_width)


_MSE_STRIDE = 4


def _mse_errors(edges: np.ndarray, weights: np.ndarray, amaxes: np.ndarray) -> np.ndarray:
    """Total squared error (up to a constant factor) for each candidate amax."""
    blocks = np.array_split(amaxes, max(1, len(amaxes) // 128))
    return np.concatenate([_bin_errors(edges, block) @ weights for block in blocks])


def _bin_errors(edges: np.ndarray, amaxes: np.ndarray) -> np.ndarray:
    """Integral of the squared quantization error over each bin, per candidate amax.

    Returns an array (len(amaxes), len(edges) - 1).
    """
    a = amaxes[:, None]
    return np.diff(_error_integral(edges[None, :], a), axis=1)


def _error_integral(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Integral from 0 to x of (t - Q(t))^2 dt for a symmetric INT8 quantizer clipping at a."""
    s = a / QMAX
    inner = np.minimum(x, a)
    u = inner / s + 0.5
    k = np.floor(u)
    f = u - k
    rounding = s**3 * (k / 12.0 + ((f - 0.5) ** 3 + 0.125) / 3.0) - s**3 / 24.0
    clipping = np.maximum(x - a, 0.0) ** 3 / 3.0
    return rounding + clipping
