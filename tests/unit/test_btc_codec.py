"""BTC codec: bit-exact decode, ranges, edge blocks, accounting, the sigma rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantpipe.btc import parallel
from quantpipe.btc.clipsearch import DEFAULT_CLIP_GRID
from quantpipe.btc.codec import (
    decode_tensor,
    encode_tensor,
    encode_tensor_with_error,
    tensor_rmse,
)
from quantpipe.btc.encoded import EncodedTensor
from quantpipe.btc.kernels import fp16_outward
from quantpipe.errors import QuantpipeError

RNG = np.random.default_rng(1234)


def _check_roundtrip(w: np.ndarray, block_size: int, **kw: object) -> EncodedTensor:
    """decode(encode(w)) equals the encoder's reconstruction bit for bit; codes in range."""
    r = encode_tensor_with_error(w, block_size, reconstruction=True, **kw)  # type: ignore[arg-type]
    enc = r.encoded
    dec = decode_tensor(enc)
    assert dec.dtype == np.float32 and dec.shape == w.shape
    assert r.reconstruction is not None
    assert np.array_equal(dec, r.reconstruction)
    bits = np.repeat(enc.bits_per_block().astype(np.int64), block_size)[: enc.n]
    assert (enc.codes.astype(np.int64) < (1 << bits)).all()
    # The FP16 range covers every weight of its block (outward rounding).
    flat = np.asarray(w, dtype=np.float32).reshape(-1)
    lo = np.repeat(enc.mins.astype(np.float32), block_size)[: enc.n]
    hi = np.repeat(enc.maxs.astype(np.float32), block_size)[: enc.n]
    if not kw.get("clip_grid"):
        assert (lo <= flat).all() and (flat <= hi).all()
    # The encoder's SSE is the decoded SSE.
    sse = ((dec.reshape(-1).astype(np.float64) - flat) ** 2).sum()
    assert math.isclose(float(r.block_sse.sum()), sse, rel_tol=1e-5, abs_tol=1e-30)
    return enc


@pytest.mark.parametrize("shape", [(1,), (7,), (63,), (64,), (65,), (3, 5, 7), (129, 3), (1000,)])
@pytest.mark.parametrize("block_size", [2, 32, 64, 256])
def test_roundtrip_bit_exact_odd_sizes(shape: tuple[int, ...], block_size: int) -> None:
    w = (RNG.standard_normal(shape) * 0.05).astype(np.float32)
    enc = _check_roundtrip(w, block_size, tau=0.05)
    # Error bound: half a step per weight (no clipping, range covers the block).
    step = (enc.maxs.astype(np.float32) - enc.mins.astype(np.float32)) / (
        (1 << enc.bits_per_block().astype(np.int64)) - 1
    )
    err = np.abs(decode_tensor(enc).reshape(-1) - w.reshape(-1))
    assert (err <= np.repeat(step, block_size)[: w.size] * 0.5001 + 1e-12).all()


@pytest.mark.parametrize("scale", [1e-12, 1e-7, 1e-3, 1.0, 300.0, 3e4])
def test_roundtrip_tiny_and_huge_scales(scale: float) -> None:
    w = (RNG.standard_normal(1000) * scale).astype(np.float32)
    w = np.clip(w, -65000, 65000)
    _check_roundtrip(w, 64, tau=0.05 * scale)
    _check_roundtrip(w + np.float32(1000 * scale if scale < 10 else 0), 64, tau=0.05 * scale)


def test_constant_blocks_decode_to_the_value() -> None:
    w = np.concatenate([np.full(64, 0.25), np.zeros(64), np.full(10, -3.0)]).astype(np.float32)
    enc = _check_roundtrip(w, 64, tau=0.05)
    assert (enc.codes == 0).all()
    assert np.array_equal(decode_tensor(enc), w)  # FP16-representable constants: exact
    # A constant that FP16 cannot hold: the outward range brackets it, error < FP16 spacing.
    c = np.full(64, 0.1, dtype=np.float32)
    dec = decode_tensor(encode_tensor(c, 64, tau=0.05))
    assert np.abs(dec - c).max() < 2**-14


def test_partial_last_block_statistics_use_real_elements_only() -> None:
    # Last block holds 3 values with a small spread; padding (if it were counted)
    # would change its range and std.
    w = np.concatenate([RNG.standard_normal(64) * 0.2, [1.0, 1.001, 1.002]]).astype(np.float32)
    enc = _check_roundtrip(w, 64, tau=0.05)
    assert enc.n_blocks == 2
    assert enc.mins[1] <= np.float16(1.0) and np.float16(1.002) <= enc.maxs[1]
    assert enc.mins[1] > np.float16(0.99)
    assert list(enc.high) == [True, False]
    assert enc.payload_bits == 64 * 8 + 3 * 4


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weight_names_the_tensor(bad: float) -> None:
    w = RNG.standard_normal(200).astype(np.float32)
    w[130] = bad
    with pytest.raises(QuantpipeError, match=r"layer3\.conv\.weight.*NaN or Inf.*block 2"):
        encode_tensor(w, 64, tau=0.05, name="layer3.conv.weight")


def test_beyond_fp16_range_is_a_clear_error() -> None:
    w = np.array([1.0, 70000.0, 2.0], dtype=np.float32)
    with pytest.raises(QuantpipeError, match=r"'big'.*65504"):
        encode_tensor(w, 2, tau=0.05, name="big")
    # 65504 itself is representable and codes fine.
    _check_roundtrip(np.array([-65504.0, 0.0, 65504.0], dtype=np.float32), 2, tau=0.05)


def test_by_hand_small_case() -> None:
    # 10 weights, B = 4: blocks of 4, 4 and 2; modes high, low, high.
    w = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0.5, 0.5], dtype=np.float32)
    modes = np.array([True, False, True])
    enc = encode_tensor(w, 4, modes=modes)
    assert enc.codes[:4].tolist() == [0, 85, 170, 255]  # step 3/255
    assert enc.codes[4:8].tolist() == [0, 5, 10, 15]  # step 3/15
    assert enc.codes[8:].tolist() == [0, 0]  # constant block
    assert np.array_equal(decode_tensor(enc)[4:], w[4:])
    assert enc.payload_bits == 4 * 8 + 4 * 4 + 2 * 8 == 64
    assert enc.header_bits == 3 * 33 == 99
    assert enc.b_avg == pytest.approx(6.4)
    assert enc.b_eff == pytest.approx(16.3)
    assert enc.frac_high == pytest.approx(2 / 3)


def test_accounting_matches_b_avg_plus_header_per_block() -> None:
    enc = encode_tensor(RNG.standard_normal(64 * 100).astype(np.float32) * 0.05, 64, tau=0.05)
    assert enc.b_eff == pytest.approx(enc.b_avg + 33 / 64)
    n_high = int(enc.high.sum())
    assert enc.b_avg == pytest.approx((n_high * 8 + (100 - n_high) * 4) / 100)


def test_sigma_rule_uses_population_std() -> None:
    a = 0.047  # population std a < tau = 0.05 < sample std a * sqrt(4/3)
    low = np.array([-a, a, -a, a])
    high = np.array([-0.06, 0.06, -0.06, 0.06])  # std 0.06 >= tau
    tight = np.array([0.5, 0.51, 0.52, 0.5])  # large mean, tiny std
    w = np.concatenate([low, high, tight]).astype(np.float32)
    enc = encode_tensor(w, 4, tau=0.05)
    assert enc.high.tolist() == [False, True, False]
    assert enc.bits_per_block().tolist() == [4, 8, 4]
    assert encode_tensor(w, 4, tau=0.0).high.all()  # sigma >= 0 always
    assert not encode_tensor(w, 4, tau=1.0).high.any()


def test_threaded_and_chunked_encode_equal_single_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    w = (RNG.standard_normal(64 * 300 + 17) * 0.05).astype(np.float32)
    ref = encode_tensor_with_error(w, 64, tau=0.05, clip_grid=DEFAULT_CLIP_GRID)
    monkeypatch.setattr(parallel, "CHUNK_ELEMS", 1024)
    monkeypatch.setattr(parallel, "_MIN_PARALLEL_ELEMS", 2048)
    for workers in (1, 3):
        got = encode_tensor_with_error(
            w, 64, tau=0.05, clip_grid=DEFAULT_CLIP_GRID, workers=workers
        )
        for field in ("high", "mins", "maxs", "codes"):
            assert np.array_equal(getattr(got.encoded, field), getattr(ref.encoded, field))
        assert np.array_equal(got.block_sse, ref.block_sse)
        assert np.array_equal(
            decode_tensor(got.encoded, workers=workers), decode_tensor(ref.encoded)
        )


def test_clipped_roundtrip_is_bit_exact_and_rmse_agrees() -> None:
    w = RNG.standard_t(2, size=(37, 41)).astype(np.float32) * 0.01
    enc = _check_roundtrip(w, 32, tau=0.05, clip_grid=DEFAULT_CLIP_GRID)
    r = encode_tensor_with_error(w, 32, tau=0.05, clip_grid=DEFAULT_CLIP_GRID)
    assert r.rmse == pytest.approx(tensor_rmse(w, enc), rel=1e-6)


def test_fp16_outward_matches_nextafter_reference() -> None:
    vals = np.concatenate(
        [
            RNG.standard_normal(5000) * 10.0 ** RNG.integers(-9, 5, 5000),
            [0.0, -0.0, 1e-30, -1e-30, 6e-8, -6e-8, 65504.0, -65504.0, 1.0, 0.1, 2**-24],
        ]
    ).astype(np.float32)
    lo, hi = fp16_outward(vals, vals)
    with np.errstate(over="ignore"):
        h = vals.astype(np.float16)
        ref_lo = np.where(h.astype(np.float32) > vals, np.nextafter(h, np.float16(-np.inf)), h)
        ref_hi = np.where(h.astype(np.float32) < vals, np.nextafter(h, np.float16(np.inf)), h)
    assert np.array_equal(lo, ref_lo.astype(np.float32))
    assert np.array_equal(hi, ref_hi.astype(np.float32))
    assert (lo <= vals).all() and (vals <= hi).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"block_size": 1, "tau": 0.05}, "block_size=1"),
        ({"block_size": 64}, "exactly one of tau"),
        ({"block_size": 64, "tau": -1.0}, "tau=-1.0"),
        ({"block_size": 64, "tau": 0.05, "low_bits": 8, "high_bits": 4}, "low_bits=8"),
        ({"block_size": 64, "tau": 0.05, "clip_grid": (1.5,)}, "clip_grid factor 1.5"),
        ({"block_size": 64, "modes": np.ones(3, dtype=bool)}, "modes must be a bool array"),
    ],
)
def test_bad_arguments_raise_quantpipe_error(kwargs: dict, match: str) -> None:
    with pytest.raises(QuantpipeError, match=match):
        encode_tensor(np.ones(100, dtype=np.float32), **kwargs)


def test_rejects_empty_and_integer_tensors() -> None:
    with pytest.raises(QuantpipeError, match="empty"):
        encode_tensor(np.zeros((0, 3), dtype=np.float32), 64, tau=0.05, name="e")
    with pytest.raises(QuantpipeError, match="dtype int64"):
        encode_tensor(np.ones(5, dtype=np.int64), 64, tau=0.05)


def test_other_bit_widths_roundtrip() -> None:
    w = (RNG.standard_normal(500) * 0.05).astype(np.float32)
    enc = _check_roundtrip(w, 16, tau=0.05, low_bits=2, high_bits=6)
    assert set(enc.bits_per_block().tolist()) <= {2, 6}


def test_sigma_rule_matches_reference_std_per_block() -> None:
    from quantpipe.btc.allocate import block_std, sigma_modes

    scales = np.repeat(RNG.choice([0.01, 0.03, 0.05, 0.08], 300), 32)[: 300 * 32 - 5]
    w = (RNG.standard_normal(scales.size) * scales + 0.3).astype(np.float32)
    tau = 0.04
    enc = encode_tensor(w, 32, tau=tau)
    sigma = block_std(w, 32)
    clear = np.abs(sigma - tau) > 1e-5 * tau  # ties are float-rounding coin flips
    assert clear.sum() > 250
    assert np.array_equal(enc.high[clear], sigma_modes(w, 32, tau)[clear])
    assert 0.2 < enc.high.mean() < 0.8


def test_nan_found_by_a_worker_thread_names_the_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "CHUNK_ELEMS", 1024)
    monkeypatch.setattr(parallel, "_MIN_PARALLEL_ELEMS", 2048)
    w = RNG.standard_normal(64 * 200).astype(np.float32)
    w[64 * 150 + 3] = np.nan
    with pytest.raises(QuantpipeError, match=r"'fc\.weight'.*block 150"):
        encode_tensor(w, 64, tau=0.05, name="fc.weight", workers=2)
