"""Mode allocation: target-bits budget, greedy optimality, clipping, whole-model encode."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from quantpipe.btc.allocate import greedy_upgrades
from quantpipe.btc.clipsearch import DEFAULT_CLIP_GRID
from quantpipe.btc.codec import decode_tensor, encode_tensor_with_error
from quantpipe.btc.model import decode_model, encode_model, select_weight_names
from quantpipe.btc.policy import SigmaRule, TargetBits
from quantpipe.errors import QuantpipeError

B = 32


def _model_state(seed: int = 0) -> dict[str, np.ndarray]:
    """Tensors whose blocks vary in scale and shape: 30 % heavy-tailed (a small std
    but a wide range, which the sigma rule misjudges)."""
    rng = np.random.default_rng(seed)
    state = {}
    for i, shape in enumerate([(16, 8, 3, 3), (40, 33), (7, 5, 5), (1000,)]):
        n = math.prod(shape)
        nb = -(-n // B)
        scales = np.repeat(rng.choice([0.005, 0.02, 0.05, 0.1], size=nb), B)[:n]
        heavy = np.repeat(rng.random(nb) < 0.3, B)[:n]
        x = np.where(heavy, rng.standard_t(2, n), rng.standard_normal(n))
        state[f"t{i}.weight"] = (x * scales).astype(np.float32).reshape(shape)
    return state


def _importance(state: dict[str, np.ndarray], seed: int = 1) -> dict[str, np.ndarray]:
    """Importance varying mostly per block (as Fisher information does per channel)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in state.items():
        per_block = np.repeat(rng.gamma(0.5, 1.0, -(-v.size // B)), B)[: v.size]
        out[k] = (per_block * rng.gamma(2.0, 1.0, v.size)).astype(np.float32).reshape(v.shape)
    return out


def test_greedy_by_hand() -> None:
    gains = np.array([10.0, 1.0, 5.0, -2.0, 8.0])
    costs = np.array([4.0, 4.0, 4.0, 4.0, 2.0])
    # Ratios 2.5, 0.25, 1.25, -, 4: order 4, 0, 2, 1; cumulative costs 2, 6, 10, 14.
    assert greedy_upgrades(gains, costs, 9).tolist() == [True, False, False, False, True]
    assert greedy_upgrades(gains, costs, 10).tolist() == [True, False, True, False, True]
    assert greedy_upgrades(gains, costs, 100).tolist() == [True, True, True, False, True]
    assert not greedy_upgrades(gains, costs, 0).any()


def _greedy_reference(gains: np.ndarray, costs: np.ndarray, extra: float) -> np.ndarray:
    """Walk blocks by decreasing gain/cost (stable), stop at the first that does not fit."""
    chosen = np.zeros(gains.size, bool)
    left = extra
    for i in np.argsort(-(gains / costs), kind="stable"):
        if gains[i] <= 0 or costs[i] > left:
            break
        chosen[i] = True
        left -= costs[i]
    return chosen


@pytest.mark.parametrize("seed", range(20))
def test_greedy_matches_reference_walk(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    gains = rng.integers(-3, 12, n).astype(np.float64)  # many ties and non-positive gains
    costs = rng.choice([4.0, 4.0, 4.0, 8.0, 2.0], n)
    extra = float(rng.integers(0, int(costs.sum()) + 10))
    got = greedy_upgrades(gains, costs, extra)
    assert np.array_equal(got, _greedy_reference(gains, costs, extra))
    assert costs[got].sum() <= extra


@pytest.mark.parametrize("target", [5.1, 5.5, 6.3, 7.9, 8.9])
@pytest.mark.parametrize("use_importance", [False, True])
def test_target_bits_meets_budget_within_one_block(target: float, use_importance: bool) -> None:
    state = _model_state()
    imp = _importance(state) if use_importance else None
    enc = encode_model(state, list(state), TargetBits(target, block_size=B), imp)
    s = enc.summary
    n = s.n
    assert s.n == sum(v.size for v in state.values())
    total = s.payload_bits + s.header_bits
    assert total <= target * n
    assert total > target * n - 4 * B  # one block's worth of upgrade
    assert s.b_eff == pytest.approx(total / n)


@pytest.mark.parametrize(
    "use_importance, tau, max_ratio",
    [(False, 0.03, 1.0), (False, 0.06, 0.95), (True, 0.01, 0.9), (True, 0.06, 0.3)],
)
@pytest.mark.parametrize("clip", [(), DEFAULT_CLIP_GRID])
def test_target_bits_beats_sigma_rule_at_equal_bits(
    use_importance: bool, tau: float, max_ratio: float, clip: tuple
) -> None:
    state = _model_state()
    imp = _importance(state) if use_importance else None
    sigma = encode_model(state, list(state), SigmaRule(tau, block_size=B, clip_grid=clip), imp)
    x = sigma.summary.b_eff
    target = encode_model(state, list(state), TargetBits(x, block_size=B, clip_grid=clip), imp)
    assert target.summary.b_eff <= x
    err = "wsse" if use_importance else "sse"
    e_sigma, e_target = getattr(sigma.summary, err), getattr(target.summary, err)
    assert e_target <= max_ratio * e_sigma, (e_target, e_sigma)


def test_clipping_never_increases_block_mse() -> None:
    rng = np.random.default_rng(5)
    w = (rng.laplace(size=64 * 400) * 0.01).astype(np.float32)
    modes = np.zeros(400, dtype=bool)
    plain = encode_tensor_with_error(w, 64, modes=modes)
    clipped = encode_tensor_with_error(w, 64, modes=modes, clip_grid=DEFAULT_CLIP_GRID)

    # Recompute per-block MSE from the decoded weights, independently of the encoder.
    def block_mse(enc):
        d = decode_tensor(enc).astype(np.float64) - w
        return (d * d).reshape(-1, 64).mean(axis=1)

    mp, mc = block_mse(plain.encoded), block_mse(clipped.encoded)
    assert (mc <= mp * (1 + 1e-6) + 1e-18).all()
    assert mc.sum() < 0.97 * mp.sum()  # about 6 % lower on Laplace blocks
    changed = (clipped.encoded.mins != plain.encoded.mins) | (
        clipped.encoded.maxs != plain.encoded.maxs
    )
    assert changed.any()
    assert np.allclose(clipped.block_sse / 64, mc, rtol=1e-5)


def test_clipping_leaves_high_bit_blocks_alone() -> None:
    rng = np.random.default_rng(6)
    w = (rng.standard_t(3, size=64 * 50) * 0.01).astype(np.float32)
    modes = np.ones(50, dtype=bool)
    plain = encode_tensor_with_error(w, 64, modes=modes).encoded
    clipped = encode_tensor_with_error(w, 64, modes=modes, clip_grid=DEFAULT_CLIP_GRID).encoded
    assert np.array_equal(plain.mins, clipped.mins) and np.array_equal(plain.codes, clipped.codes)


def test_encode_model_summary_is_consistent() -> None:
    state = _model_state()
    names = list(state)
    enc = encode_model(state, names, SigmaRule(0.03, block_size=B))
    s = enc.summary
    assert [x.name for x in s.layers] == names
    assert s.payload_bits == sum(e.payload_bits for e in enc.encoded.values())
    assert s.header_bits == sum(33 * -(-v.size // B) for v in state.values())
    for layer, (k, e) in zip(s.layers, enc.encoded.items(), strict=True):
        assert layer.frac_high == pytest.approx(e.high.mean())
        dec = decode_tensor(e).astype(np.float64)
        assert layer.rmse == pytest.approx(math.sqrt(((dec - state[k]) ** 2).mean()), rel=1e-5)
    decoded = decode_model(enc.encoded)
    sse = sum(((decoded[k].astype(np.float64) - state[k]) ** 2).sum() for k in names)
    assert s.rmse == pytest.approx(math.sqrt(sse / s.n), rel=1e-5)
    d = s.to_dict()
    assert d["policy"]["policy"] == "sigma" and len(d["layers"]) == len(names)


def test_encode_model_input_errors() -> None:
    state = _model_state()
    with pytest.raises(QuantpipeError, match="not in the state dict"):
        encode_model(state, ["nope.weight"], SigmaRule())
    with pytest.raises(QuantpipeError, match="importance has no entry"):
        encode_model(state, list(state), SigmaRule(), {})
    bad = _importance(state)
    bad["t0.weight"] = -bad["t0.weight"] - 1
    with pytest.raises(QuantpipeError, match="finite and >= 0"):
        encode_model(state, list(state), SigmaRule(), bad)
    with pytest.raises(QuantpipeError, match="below this model's minimum"):
        # Partial blocks push the minimum above 4 + 33/B.
        encode_model({"w": np.ones(33, np.float32)}, ["w"], TargetBits(4 + 33 / B, block_size=B))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SigmaRule(tau=float("nan")), "tau=nan"),
        (lambda: SigmaRule(block_size=0), "block_size=0"),
        (lambda: TargetBits(3.0), "target_bits=3.0"),
        (lambda: TargetBits(6.0, high_bits=9), "high_bits=9"),
        (lambda: TargetBits(6.0, clip_grid=(0.5, 0.5)), "distinct"),
    ],
)
def test_policy_validation(make, match: str) -> None:
    with pytest.raises(QuantpipeError, match=match):
        make()


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 4, 3)
        self.c2 = nn.Conv2d(4, 8, 3, groups=2, bias=False)
        self.dw = nn.Conv2d(8, 8, 3, groups=8)
        self.c3 = nn.Conv3d(2, 2, 1)
        self.up = nn.ConvTranspose2d(8, 4, 2)
        self.bn = nn.BatchNorm2d(8)
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        self.attn = nn.MultiheadAttention(4, 2)


def test_select_weight_names() -> None:
    net = _Net()
    names = select_weight_names(net)
    assert names == [
        "c1.weight",
        "c2.weight",
        "dw.weight",
        "c3.weight",
        "up.weight",
        "head.1.weight",
        "attn.out_proj.weight",
    ]
    sd = net.state_dict()
    assert all(isinstance(sd[k], torch.Tensor) for k in names)


@pytest.mark.parametrize("target", [5.6, 8.9])
@pytest.mark.parametrize("clip", [(), DEFAULT_CLIP_GRID])
def test_target_bits_coding_equals_plain_coding_under_its_modes(target: float, clip: tuple) -> None:
    state = _model_state()
    imp = _importance(state)
    enc = encode_model(state, list(state), TargetBits(target, block_size=B, clip_grid=clip), imp)
    tails_high = 0
    for k, e in enc.encoded.items():
        ref = encode_tensor_with_error(
            state[k], B, modes=e.high, clip_grid=clip, importance=imp[k], name=k
        )
        for field in ("high", "mins", "maxs", "codes"):
            assert np.array_equal(getattr(e, field), getattr(ref.encoded, field)), (k, field)
        layer = next(x for x in enc.summary.layers if x.name == k)
        assert layer.sse == pytest.approx(float(ref.block_sse.sum()), rel=1e-12)
        assert layer.wsse == pytest.approx(float(ref.block_wsse.sum()), rel=1e-12)
        tails_high += int(e.n % B != 0 and e.high[-1])
    if target > 8:
        assert tails_high > 0  # the partial-block path was exercised


def test_high_bit_error_estimate_is_close_to_exact() -> None:
    from quantpipe.btc.allocate import code_low

    state = _model_state()
    for k, w in state.items():
        est = code_low(w, TargetBits(6.0, block_size=B), None, k, None).est_high
        nb = est.size
        exact = encode_tensor_with_error(w, B, modes=np.ones(nb, bool)).block_sse
        assert est.sum() == pytest.approx(exact.sum(), rel=0.1)
