"""Calibrators against independent computations on synthetic Gaussian/Laplacian data."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from quantpipe.calibration import (
    CALIBRATORS,
    EntropyConfig,
    HistogramCollector,
    MaxConfig,
    MseConfig,
    PercentileConfig,
    compute_all,
    make_calibrator,
    make_config,
)
from quantpipe.calibration.search import entropy_amax, mse_amax
from quantpipe.errors import QuantpipeError

SAMPLES = 200_000


def _data(kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return rng.normal(0.0, 1.5, SAMPLES).astype(np.float32)
    if kind == "laplacian":
        return rng.laplace(0.0, 0.7, SAMPLES).astype(np.float32)
    return np.maximum(rng.normal(0.3, 1.0, SAMPLES), 0).astype(np.float32)  # post-ReLU


def _collected(data: np.ndarray, batches: int = 4) -> HistogramCollector:
    collector = HistogramCollector()
    for part in np.array_split(data, batches):
        collector.collect("t", part)
    return collector


def _loop_entropy(counts: np.ndarray, start_bin: int = 128) -> tuple[int, dict[int, float]]:
    """Plain-loop KL search after pytorch-quantization's _compute_amax_entropy.

    Candidates run to the end of the data (pytorch-quantization: to the end of its histogram,
    which ends at the max). Returns (chosen i, divergence per candidate i).
    """
    bins = counts.astype(np.float64).copy()
    bins[0] = bins[1]
    total = bins.sum()
    stop = int(np.flatnonzero(bins)[-1]) + 1
    divergences = {}
    for i in range(start_bin, stop + 1):
        space = np.linspace(0, i, num=128 + 1)
        digitized = np.digitize(range(i), space) - 1
        digitized[bins[:i] == 0] = -1
        merged = np.zeros(128)
        for idx, d in enumerate(digitized):
            if d != -1:
                merged[d] += bins[idx]
        counter = Counter(digitized)
        for key, val in counter.items():
            if key != -1:
                merged[key] /= val
        q = np.array([merged[d] if d != -1 else 0.0 for d in digitized])
        p = bins[:i].copy()
        p[-1] += bins[i:].sum()
        p, q = p / total, q / q.sum()
        if np.any((p > 0) & (q == 0)):
            divergences[i] = np.inf
            continue
        mask = p > 0
        divergences[i] = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
    best = min(divergences.values())
    return max(i for i, d in divergences.items() if d == best), divergences


def _assert_same_choice(counts: np.ndarray, width: float, amax: float) -> None:
    chosen, divergences = _loop_entropy(counts)
    ours = round(amax / width - 0.5)
    assert amax == pytest.approx((ours + 0.5) * width, rel=1e-12)
    # Same candidate, or one whose divergence ties the loop's minimum to rounding error.
    best = divergences[chosen]
    assert ours == chosen or divergences[ours] == pytest.approx(best, rel=1e-9, abs=1e-15)


def _sample_mse(data: np.ndarray, amax: float) -> float:
    """Brute force: fake-quantize the samples to symmetric INT8 and measure the MSE."""
    scale = amax / 127.0
    x = data.astype(np.float64)
    q = np.clip(np.round(x / scale), -127, 127) * scale
    return float(np.mean((x - q) ** 2))


@pytest.mark.parametrize("kind", ["gaussian", "laplacian", "relu"])
def test_max_is_the_absolute_max(kind: str) -> None:
    data = _data(kind)
    amax = make_calibrator(MaxConfig(), _collected(data)).compute()["t"]
    assert amax == float(np.abs(data).max())


@pytest.mark.parametrize("kind", ["gaussian", "laplacian"])
@pytest.mark.parametrize("percentile", [99.9, 99.99, 99.999])
def test_percentile_matches_np_percentile_within_one_bin(kind: str, percentile: float) -> None:
    data = _data(kind)
    collector = _collected(data)
    amax = make_calibrator(PercentileConfig(percentile), collector).compute()["t"]
    expected = float(np.percentile(np.abs(data), percentile))
    assert abs(amax - expected) <= collector.stats["t"].bin_width


@pytest.mark.parametrize("kind", ["gaussian", "laplacian", "relu"])
def test_entropy_matches_a_plain_loop(kind: str) -> None:
    collector = _collected(_data(kind, seed=3))
    stats = collector.stats["t"]
    raw = entropy_amax(stats.counts, stats.bin_width)
    _assert_same_choice(stats.counts, stats.bin_width, raw)
    amax = make_calibrator(EntropyConfig(), collector).compute()["t"]
    assert amax == min(raw, stats.amax)
    # The KL clip cuts the tail: well above the bulk, below the max.
    assert np.percentile(np.abs(_data(kind, seed=3)), 99) < amax <= stats.amax


def test_entropy_on_a_hand_made_histogram() -> None:
    # A triangle on bins [0, 1000) plus a far outlier bin: the KL clip lands inside the data.
    counts = np.zeros(2048, dtype=np.int64)
    counts[:1000] = np.arange(1000, 0, -1)
    counts[1900] = 3
    raw = entropy_amax(counts, 1.0)
    _assert_same_choice(counts, 1.0, raw)
    assert raw < 1000


@pytest.mark.parametrize("kind", ["gaussian", "laplacian"])
def test_mse_is_near_the_brute_force_optimum(kind: str) -> None:
    data = _data(kind, seed=5)
    collector = _collected(data)
    stats = collector.stats["t"]
    amax = make_calibrator(MseConfig(), collector).compute()["t"]
    grid = np.linspace(0.2, 1.0, 161) * stats.amax
    errors = [_sample_mse(data, a) for a in grid]
    best = float(grid[int(np.argmin(errors))])
    # Within 1 % of the best achievable MSE, and the two clips agree within 5 %.
    assert _sample_mse(data, amax) <= 1.01 * min(errors)
    assert amax == pytest.approx(best, rel=0.05)
    # Far better than not clipping at all for a long-tailed law.
    assert _sample_mse(data, amax) < _sample_mse(data, stats.amax)


def test_mse_candidates_are_bin_edges() -> None:
    counts = np.zeros(2048, dtype=np.int64)
    counts[:300] = 10
    amax = mse_amax(counts, 0.01)
    assert (amax / 0.01) == pytest.approx(round(amax / 0.01))
    assert 128 * 0.01 <= amax <= 300 * 0.01


def test_one_pass_serves_all_four() -> None:
    data = _data("laplacian")
    shared = _collected(data)
    configs = [MaxConfig(), PercentileConfig(99.9), EntropyConfig(), MseConfig()]
    together = compute_all(shared, configs)
    for config in configs:
        alone = make_calibrator(config)
        for part in np.array_split(data, 4):
            alone.collect("t", part)
        assert together[config]["t"] == alone.compute()["t"]
    values = [together[c]["t"] for c in configs]
    assert values[0] == max(values)  # every other method clips below the max


def test_reset_and_state_dict() -> None:
    calibrator = make_calibrator(EntropyConfig())
    calibrator.collect("t", _data("gaussian")[:1000])
    state = calibrator.state_dict()
    other = make_calibrator(EntropyConfig())
    other.load_state_dict(state)
    assert other.compute() == calibrator.compute()
    calibrator.reset()
    assert calibrator.compute() == {}


def test_registry_names() -> None:
    assert sorted(CALIBRATORS) == ["entropy", "max", "mse", "percentile"]
    assert make_config("percentile", percentile=99.9) == PercentileConfig(99.9)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: PercentileConfig(101.0), r"percentile=101\.0: allowed values are .*\(50, 100\]"),
        (lambda: PercentileConfig(True), "percentile=True"),
        (lambda: EntropyConfig(start_bin=0), r"start_bin=0: allowed values are .*\[1, 2048\)"),
        (lambda: MseConfig(start_bin=4096), "start_bin=4096"),
        (lambda: make_config("kl"), r"calibrator 'kl': allowed values are \['entropy', 'max'"),
        (lambda: make_config("max", percentile=99.0), "has no parameter 'percentile'"),
    ],
)
def test_bad_config_names_value_and_allowed(build, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(QuantpipeError, match=message):
        build()
