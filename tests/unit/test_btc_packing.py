"""Bit packing of mode bitmaps and code streams."""

from __future__ import annotations

import numpy as np
import pytest

from quantpipe.btc.packing import (
    merge_streams,
    pack_bitmap,
    pack_codes,
    packed_len,
    split_streams,
    unpack_bitmap,
    unpack_codes,
)

RNG = np.random.default_rng(11)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [0, 1, 2, 7, 8, 9, 1001])
def test_codes_roundtrip_and_length(bits: int, count: int) -> None:
    codes = RNG.integers(0, 1 << bits, count).astype(np.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == packed_len(count, bits)
    assert np.array_equal(unpack_codes(packed, bits, count), codes)


def test_nibble_and_bit_order_by_hand() -> None:
    assert pack_codes(np.array([1, 2, 15], np.uint8), 4).tolist() == [0x21, 0x0F]
    assert pack_codes(np.array([1, 0, 1, 1], np.uint8), 1).tolist() == [0b1101]
    assert pack_codes(np.array([5, 3], np.uint8), 3).tolist() == [0b011101]
    assert pack_bitmap(np.array([1, 0, 0, 0, 0, 0, 0, 0, 1], bool)).tolist() == [1, 1]
    assert unpack_bitmap(np.array([1, 1], np.uint8), 9).tolist() == [True] + [False] * 7 + [True]


@pytest.mark.parametrize("n, b", [(64, 8), (67, 8), (5, 8), (1000, 64), (1003, 64)])
def test_split_merge_streams(n: int, b: int) -> None:
    nb = -(-n // b)
    for high in (RNG.random(nb) < 0.5, np.zeros(nb, bool), np.ones(nb, bool)):
        codes = RNG.integers(0, 256, n).astype(np.uint8)
        low_s, high_s = split_streams(codes, high, b)
        lengths = np.full(nb, b)
        lengths[-1] = n - b * (nb - 1)
        assert high_s.size == lengths[high].sum() and low_s.size == n - high_s.size
        assert np.array_equal(merge_streams(low_s, high_s, high, n, b), codes)
