"""The uniform baselines."""

from __future__ import annotations

import numpy as np
import pytest

from quantpipe.btc.uniform import (
    minmax_decode,
    minmax_encode,
    per_channel_percentile,
    per_tensor_minmax,
)
from quantpipe.errors import QuantpipeError

RNG = np.random.default_rng(21)


def test_per_tensor_minmax_by_hand() -> None:
    w = np.array([[-1.0, 0.0], [0.5, 2.0]], dtype=np.float32)
    codes, lo, step = minmax_encode(w, 8)
    assert lo == -1.0 and step == pytest.approx(3 / 255)
    assert codes.tolist() == [0, 85, 128, 255]
    r = per_tensor_minmax(w)
    assert r.reconstruction.shape == w.shape and r.bits == 8
    assert r.b_eff == pytest.approx(8 + 64 / 4)
    err = r.reconstruction - w
    assert np.abs(err).max() <= step / 2 + 1e-7
    assert r.rmse == pytest.approx(float(np.sqrt(np.mean(err.astype(np.float64) ** 2))))
    assert np.array_equal(minmax_decode(codes, lo, step, w.shape), r.reconstruction)


def test_per_tensor_constant_tensor() -> None:
    r = per_tensor_minmax(np.full(10, 0.3, np.float32))
    assert r.rmse == 0.0


def test_per_channel_percentile_symmetric() -> None:
    w = (RNG.standard_normal((16, 4, 3, 3)) * 0.05).astype(np.float32)
    w[3, 0, 0, 0] = 5.0  # outlier in channel 3
    r100 = per_channel_percentile(w, percentile=100.0)
    amax = np.abs(w).reshape(16, -1).max(axis=1)
    scale = amax / 127
    err = np.abs(r100.reconstruction - w).reshape(16, -1)
    assert (err.max(axis=1) <= scale / 2 * 1.0001).all()
    assert r100.b_eff == pytest.approx(8 + 32 * 16 / w.size)
    # Each channel's codes are integers in [-127, 127] times its scale.
    q = r100.reconstruction.reshape(16, -1) / scale[:, None]
    assert np.allclose(q, np.rint(q), atol=1e-3) and np.abs(np.rint(q)).max() <= 127
    # A lower percentile clips the outlier channel and lowers its other weights' error.
    r99 = per_channel_percentile(w, percentile=95.0)
    others = np.ones(w[3].size, bool)
    others[0] = False
    e100 = np.abs(r100.reconstruction[3].reshape(-1) - w[3].reshape(-1))[others].mean()
    e99 = np.abs(r99.reconstruction[3].reshape(-1) - w[3].reshape(-1))[others].mean()
    assert e99 < e100 / 10


@pytest.mark.parametrize("kw", [{"bits": 1}, {"bits": 9}, {"percentile": 0.0}])
def test_baseline_bad_arguments(kw: dict) -> None:
    with pytest.raises(QuantpipeError):
        per_channel_percentile(np.ones((2, 2), np.float32), **kw)
