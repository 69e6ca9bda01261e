import dataclasses
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantpipe.btc.policy import SigmaRule, TargetBits
from quantpipe.btc.retune import (
    RetuneConfig,
    _cosine_cycle_lr,
    _kl,
    affine_parameters,
    fp32_targets,
    retune_affine,
)
from quantpipe.errors import QuantpipeError
from quantpipe.stages.btc import BtcConfig
from quantpipe.stages.btc_modes import TargetBitsMode


def test_modes_and_their_candidates() -> None:
    assert BtcConfig().mode.policies() == [SigmaRule(0.05, 64, 4, 8)]
    assert BtcConfig().retune() == 0  # the paper's rule stays as published
    search = BtcConfig.from_flags(search=True, taus=(0.02, 0.05))
    assert search.mode.name == "paper-search" and len(search.mode.policies()) == 8
    tb = BtcConfig.from_flags(target_bits=4.5)
    # B = 32 and 64 cannot reach 4.5 effective bits: their headers alone cost 1.03 / 0.52.
    assert [p.block_size for p in tb.mode.policies()] == [128, 256]
    assert all(isinstance(p, TargetBits) for p in tb.mode.policies()) and tb.retune() == 300
    ladder = BtcConfig.from_flags(max_drop=0.5).mode.policies()
    assert [p.target_bits for p in ladder] == sorted(p.target_bits for p in ladder)


def test_a_mode_is_found_by_name_with_its_own_fields() -> None:
    cfg = BtcConfig.from_flags(mode="target-bits", target_bits=5.0, calib_count=64)
    assert (cfg.mode, cfg.calib_count) == (TargetBitsMode(5.0), 64)
    with pytest.raises(QuantpipeError, match="unknown BTC mode 'sigma'"):
        BtcConfig.from_flags(mode="sigma")
    with pytest.raises(QuantpipeError, match="target_bits"):
        BtcConfig.from_flags(mode="max-drop", target_bits=5.0)


def test_only_the_paper_modes_measure_the_baselines_unless_told() -> None:
    assert BtcConfig().with_baselines() and BtcConfig.from_flags(search=True).with_baselines()
    assert not BtcConfig.from_flags(target_bits=4.5).with_baselines()
    assert not BtcConfig.from_flags(max_drop=1.0).with_baselines()
    assert BtcConfig.from_flags(target_bits=4.5, baselines=True).params()["baselines"] is True
    with pytest.raises(QuantpipeError, match="baselines must be true or false, got 'yes'"):
        BtcConfig.from_flags(target_bits=4.5, baselines="yes")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_bits": 4.5, "search": True}, "fixes the budget"),
        ({"max_drop": -1}, "--max-drop"),
        ({"tau": -0.1}, "tau"),
        ({"block_size": 0}, "block"),
        ({"retune_steps": -5}, "re-tuning"),
    ],
)
def test_bad_values_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(QuantpipeError, match=match):
        BtcConfig.from_flags(**kwargs)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_affine_parameters_are_norms_and_biases_only() -> None:
    net = _Net()
    params = affine_parameters(net)
    assert {id(p) for p in params} == {id(net.bn.weight), id(net.bn.bias), id(net.fc.bias)}


def test_retune_reduces_the_gap_and_touches_only_affine_parameters() -> None:
    torch.manual_seed(0)
    reference = _Net().eval()
    coded = _Net().eval()
    coded.load_state_dict(reference.state_dict())
    with torch.no_grad():  # a coarse "coding" of the conv weights
        coded.conv.weight.copy_(torch.round(coded.conv.weight * 2) / 2)
    x = np.random.default_rng(0).standard_normal((256, 1, 6, 6)).astype(np.float32)

    def gap(m: nn.Module) -> float:
        with torch.no_grad():
            t = torch.from_numpy(x)
            return float(
                F.kl_div(
                    F.log_softmax(m(t), 1),
                    F.log_softmax(reference(t), 1),
                    log_target=True,
                    reduction="batchmean",
                )
            )

    inputs = torch.from_numpy(x)
    with torch.no_grad():
        targets = fp32_targets(reference(inputs).numpy())
    # The fit itself, not early stopping (the toy's KL starts under the default tolerance).
    cfg = RetuneConfig(steps=200, lr=1e-2, patience=8, kl_tolerance=0.0)
    tuned = retune_affine(coded, inputs, targets, cfg).model
    assert gap(tuned) < 0.5 * gap(coded)
    assert torch.equal(tuned.conv.weight, coded.conv.weight)  # coded weights untouched
    assert torch.equal(tuned.fc.weight, coded.fc.weight)


def test_retune_stops_once_the_held_out_kl_stops_falling() -> None:
    torch.manual_seed(0)
    reference = _Net().eval()
    coded = _Net().eval()
    coded.load_state_dict(reference.state_dict())  # nothing to recover: KL 0 from the start
    x = np.random.default_rng(0).standard_normal((256, 1, 6, 6)).astype(np.float32)
    inputs = torch.from_numpy(x)
    with torch.no_grad():
        targets = fp32_targets(reference(inputs).numpy())
    batches: list[int] = []
    coded.register_forward_hook(lambda m, inp, out: batches.append(len(inp[0])))
    # No tolerance: the rule on falls alone (a KL of 0 is within any positive tolerance).
    cfg = RetuneConfig(steps=300, batch_size=16, check_every=25, patience=1, kl_tolerance=0.0)
    tuned = retune_affine(coded, inputs, targets, cfg)
    steps = sum(1 for n in batches if n == 16)
    # Two checks without a gain (one more than patience, as none was ever seen), not 300.
    assert steps == tuned.steps == 50
    tuned = tuned.model
    # The best parameters seen are restored: still (almost) the reference, not where the
    # last 25 steps of noise left them.
    t = torch.from_numpy(x)
    with torch.no_grad():
        kl = F.kl_div(
            F.log_softmax(tuned(t), 1), F.log_softmax(reference(t), 1), log_target=True,
            reduction="batchmean",
        )  # fmt: skip
    assert float(kl) < 1e-5


def test_retune_ends_once_the_output_is_within_the_kl_tolerance() -> None:
    torch.manual_seed(0)
    reference = _Net().eval()
    inputs = torch.from_numpy(np.random.default_rng(0).standard_normal((256, 1, 6, 6))).float()
    with torch.no_grad():
        targets = fp32_targets(reference(inputs).numpy())
    cfg = RetuneConfig(steps=300, batch_size=16, lr=1e-2, check_every=10)
    # Already the FP32 model's output: nothing to re-tune, not one step.
    assert retune_affine(reference, inputs, targets, cfg).steps == 0
    coded = _Net().eval()
    coded.load_state_dict(reference.state_dict())
    with torch.no_grad():  # a fine "coding": a small gap that a few steps close
        coded.conv.weight.copy_(torch.round(coded.conv.weight * 16) / 16)
    tolerance = 0.5 * _kl(coded, inputs[-51:], targets[-51:])  # the held-out fifth
    # Patience without end: only the tolerance (or the 300 steps) can stop it.
    cfg = dataclasses.replace(cfg, kl_tolerance=tolerance, patience=1000)
    tuned = retune_affine(coded, inputs, targets, cfg)
    assert 0 < tuned.steps < 300 and tuned.steps % 10 == 0
    assert _kl(tuned.model, inputs[-51:], targets[-51:]) < tolerance


class _ViewNet(_Net):
    """Flattens its feature map with .view, which channels-last memory cannot do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).view(len(x), -1))


@pytest.mark.parametrize("net", [_Net, _ViewNet])
def test_retune_runs_in_the_faster_layout_where_it_can_and_returns_the_default(net: type) -> None:
    torch.manual_seed(0)
    reference = net().eval()
    coded = net().eval()
    coded.load_state_dict(reference.state_dict())
    with torch.no_grad():
        coded.conv.weight.copy_(torch.round(coded.conv.weight * 2) / 2)
    inputs = torch.from_numpy(np.random.default_rng(0).standard_normal((256, 1, 6, 6))).float()
    with torch.no_grad():
        targets = fp32_targets(reference(inputs).numpy())
    layouts: list[bool] = []  # per forward: did the conv run channels-last?
    coded.conv.register_forward_hook(lambda m, inp, out: layouts.append(not out.is_contiguous()))
    tuned = retune_affine(coded, inputs, targets, RetuneConfig(steps=30, batch_size=16)).model
    # The steps ran channels-last for the plain net; the .view net kept the default layout
    # (its trial forward failed) instead of failing.
    assert layouts[-1] is (net is _Net)
    assert tuned.conv.weight.is_contiguous() and tuned.fc.weight.is_contiguous()
    with torch.no_grad():
        channels_last = inputs.contiguous(memory_format=torch.channels_last)
        assert torch.allclose(tuned(inputs), tuned(channels_last))


def test_device_is_checked_before_any_work() -> None:
    from quantpipe.engines.torch_runner import torch_device

    with pytest.raises(QuantpipeError, match="--device 'tpu'"):
        BtcConfig(device="tpu")
    assert torch_device("cpu") == "cpu"
    assert torch_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(QuantpipeError, match="sees no CUDA device"):
            torch_device("cuda")


def test_the_learning_rate_falls_over_each_cycle_and_restarts_at_its_peak() -> None:
    cfg = RetuneConfig(lr=3e-3, check_every=20)
    cycle = [_cosine_cycle_lr(cfg, step) for step in range(1, 21)]
    assert cycle[0] == pytest.approx(3e-3)
    assert all(a > b for a, b in itertools.pairwise(cycle))  # falling throughout
    assert cycle[-1] < 0.01 * 3e-3  # each check measures a model near a minimum, not mid-step
    assert _cosine_cycle_lr(cfg, 21) == pytest.approx(3e-3)  # the next cycle starts again
