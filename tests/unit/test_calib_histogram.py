"""Streaming |x| histogram: growth, exactness, NaN handling, state."""

from __future__ import annotations

import numpy as np
import pytest

from quantpipe.calibration.histogram import (
    MIN_SPATIAL,
    NUM_BINS,
    HistogramCollector,
    SpatialSample,
    merge_bins,
    pow2_above,
)
from quantpipe.errors import QuantpipeError


def _one_shot(data: np.ndarray, range_max: float) -> np.ndarray:
    """Reference: np.histogram of |x| over [0, range_max) with NUM_BINS bins, in float64."""
    counts, _ = np.histogram(np.abs(data.astype(np.float64)), NUM_BINS, (0.0, range_max))
    return counts


def test_pow2_above_is_strictly_greater() -> None:
    assert pow2_above(1.0) == 2.0
    assert pow2_above(0.75) == 1.0
    assert pow2_above(3.0) == 4.0
    assert pow2_above(1e-3) == 2.0**-9


def test_streaming_equals_one_shot_when_range_grows() -> None:
    rng = np.random.default_rng(0)
    # Each batch is wider than the last: the range doubles several times on the way.
    batches = [rng.standard_normal(5000).astype(np.float32) * s for s in (0.3, 1.0, 2.5, 11.0)]
    collector = HistogramCollector()
    for b in batches:
        collector.collect("t", b)
    stats = collector.stats["t"]
    data = np.concatenate(batches)
    assert stats.range_max == pow2_above(float(np.abs(data).max()))
    assert stats.amax == float(np.abs(data).max())
    np.testing.assert_array_equal(stats.counts, _one_shot(data, stats.range_max))
    assert stats.counts.sum() == data.size


def test_histogram_does_not_depend_on_batch_order() -> None:
    rng = np.random.default_rng(1)
    batches = [rng.laplace(size=(4, 300)).astype(np.float32) * s for s in (5.0, 0.1, 1.0)]
    forward, backward = HistogramCollector(), HistogramCollector()
    for b in batches:
        forward.collect("t", b)
    for b in reversed(batches):
        backward.collect("t", b)
    np.testing.assert_array_equal(forward.stats["t"].counts, backward.stats["t"].counts)


def test_bins_are_exact_floors() -> None:
    # Values exactly on bin edges: range 4 -> width 4/2048; x = k * width lands in bin k.
    width = 4.0 / NUM_BINS
    edges = np.array([0, 1, 7, 1000, 2047], dtype=np.float32) * np.float32(width)
    data = np.concatenate([edges, [np.float32(3.9)]])
    collector = HistogramCollector()
    collector.collect("t", data)
    counts = collector.stats["t"].counts
    assert collector.stats["t"].range_max == 4.0
    assert list(np.flatnonzero(counts)) == [0, 1, 7, 1000, int(3.9 / width), 2047]


def test_merge_bins_keeps_mass_in_order() -> None:
    counts = np.arange(NUM_BINS, dtype=np.int64)
    merged = merge_bins(counts, 4)
    assert merged.sum() == counts.sum()
    assert merged[0] == 0 + 1 + 2 + 3
    assert merged[NUM_BINS // 4 :].sum() == 0
    assert merge_bins(counts, NUM_BINS * 2)[0] == counts.sum()


def test_all_zero_then_nonzero() -> None:
    collector = HistogramCollector()
    collector.collect("t", np.zeros(10, dtype=np.float32))
    assert collector.stats["t"].range_max == 0.0
    collector.collect("t", np.full(3, 0.5, dtype=np.float32))
    stats = collector.stats["t"]
    assert stats.counts[0] == 10
    assert stats.counts[NUM_BINS // 2] == 3  # 0.5 in [0, 1): the middle bin
    assert stats.amax == 0.5


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_names_the_tensor(bad: float) -> None:
    data = np.ones(100, dtype=np.float32)
    data[17] = bad
    with pytest.raises(QuantpipeError, match=r"'layer3/relu_out'.*NaN or Inf"):
        HistogramCollector().collect("layer3/relu_out", data)


def test_collect_leaves_the_input_untouched() -> None:
    data = np.array([-3.0, 1.0, -0.5], dtype=np.float32)
    HistogramCollector().collect("t", data)
    np.testing.assert_array_equal(data, [-3.0, 1.0, -0.5])


def test_state_dict_round_trip_and_reset() -> None:
    collector = HistogramCollector()
    collector.collect("a", np.linspace(-2, 3, 1000, dtype=np.float32))
    state = collector.state_dict()
    assert set(state["a"]) == {"amax", "counts", "range_max"}
    assert all(isinstance(v, np.ndarray) for v in state["a"].values())
    restored = HistogramCollector()
    restored.load_state_dict(state)
    np.testing.assert_array_equal(restored.stats["a"].counts, collector.stats["a"].counts)
    assert restored.stats["a"].amax == 3.0
    collector.reset()
    assert collector.stats == {}


def test_max_only_collector_keeps_no_histogram() -> None:
    collector = HistogramCollector(with_histogram=False)
    collector.collect("t", np.array([1.0, -4.0], dtype=np.float32))
    assert collector.stats["t"].amax == 4.0
    assert collector.stats["t"].counts.sum() == 0


def test_bad_bin_count_is_rejected() -> None:
    with pytest.raises(QuantpipeError, match="num_bins=1000"):
        HistogramCollector(num_bins=1000)


def test_rotating_samples_visit_every_offset_once_per_cycle() -> None:
    for stride in (2, 3):
        seen = [(s.row, s.col) for s in (SpatialSample.rotating(stride, k) for k in range(9))]
        assert sorted(seen[: stride * stride]) == [
            (r, c) for r in range(stride) for c in range(stride)
        ]
    first = [SpatialSample.rotating(2, k) for k in range(2)]
    assert (first[0].row, first[0].col) == (0, 0) and (first[1].row, first[1].col) == (1, 1)


def test_sample_applies_only_to_image_like_tensors() -> None:
    sample = SpatialSample(2)
    assert sample.applies((8, 16, MIN_SPATIAL, MIN_SPATIAL))
    assert sample.applies((2, 3, 4, 32, 32))  # 3-D convolutions: the last two axes
    assert not sample.applies((8, 16, MIN_SPATIAL - 1, 32))  # too small to sample
    assert not sample.applies((8, 512))  # an MLP's or a pooled tensor
    assert not sample.applies((8, 16, 64))  # one spatial axis: binned whole
    assert not SpatialSample(1).applies((8, 16, 32, 32))
    assert not SpatialSample(9).applies((8, 16, MIN_SPATIAL, MIN_SPATIAL))  # fewer than stride


@pytest.mark.parametrize("shape", [(3, 5, 16, 12), (1, 2, 300, 400)])  # the 2nd: rows of a plane
def test_sampled_counts_are_those_of_the_strided_view_and_the_max_is_exact(
    shape: tuple[int, ...],
) -> None:
    rng = np.random.default_rng(4)
    data = rng.standard_normal(shape).astype(np.float32)
    data[0, 0, 0, 1] = -40.0  # off the (1, 0) grid: only the exact max sees it
    sample = SpatialSample(2, 1, 0)
    collector = HistogramCollector()
    collector.collect("t", data, sample)
    stats = collector.stats["t"]
    assert stats.amax == 40.0 and stats.range_max == 64.0
    view = data[..., 1::2, 0::2]
    assert stats.counts.sum() == view.size
    np.testing.assert_array_equal(stats.counts, _one_shot(view, 64.0))


def test_nan_off_the_sample_is_still_caught() -> None:
    data = np.ones((2, 3, 16, 16), dtype=np.float32)
    data[1, 2, 5, 5] = np.nan  # (odd, odd): not in the (0, 0) sample
    with pytest.raises(QuantpipeError, match="NaN or Inf"):
        HistogramCollector().collect("t", data, SpatialSample(2))


def test_small_tensors_are_binned_whole_under_a_sample() -> None:
    data = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    collector = HistogramCollector()
    collector.collect("t", data, SpatialSample(2))
    assert collector.stats["t"].counts.sum() == data.size
