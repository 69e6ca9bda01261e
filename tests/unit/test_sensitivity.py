"""Per-layer sensitivity (thesis Algorithm 1) on real torch models with real losses."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantpipe.errors import QuantpipeError
from quantpipe.mixed.sensitivity import (
    LayerSensitivity,
    SensitivityConfig,
    from_json,
    layer_sensitivities,
    plot_sensitivity,
    to_json,
)

Loss = Callable[[nn.Module], torch.Tensor]
M = TypeVar("M", bound=nn.Module)


def _seeded(build: Callable[[], M], seed: int = 0) -> M:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _conv_net() -> nn.Sequential:
    return _seeded(
        lambda: nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 5),
        )
    )


def _mlp(hidden: int = 32, seed: int = 0) -> nn.Sequential:
    return _seeded(
        lambda: nn.Sequential(nn.Linear(12, hidden), nn.ReLU(), nn.Linear(hidden, 5)), seed
    )


def _ce_loss(shape: tuple[int, ...], classes: int = 5, n: int = 64) -> Loss:
    g = torch.Generator().manual_seed(123)
    x, y = torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)
    return lambda model: F.cross_entropy(model(x), y)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: m.weight for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)
    }


def _bits(model: nn.Module) -> dict[str, torch.Tensor]:
    # Integer views: equal means the same bits (torch.equal would take -0.0 for 0.0).
    return {
        k: v.detach().clone().view(torch.int32) if v.is_floating_point() else v.clone()
        for k, v in model.state_dict().items()
    }


def _same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["conv", "mlp"])
def test_weights_are_restored_bit_for_bit_and_nothing_else_changes(kind: str) -> None:
    model = _conv_net() if kind == "conv" else _mlp()
    loss = _ce_loss((3, 8, 8) if kind == "conv" else (12,))
    model.train()
    model[0].eval()  # a mixed mode, which must come back as it was
    frozen = next(iter(_weights(model).values()))
    frozen.requires_grad_(False)
    before = _bits(model)
    layers = layer_sensitivities(model, _weights(model), loss, SensitivityConfig(epsilon=0.1))
    assert _same_bits(before, _bits(model))  # BatchNorm's running statistics included
    assert [m.training for m in model.modules()] == [True, False] + [True] * (len(model) - 1)
    assert not frozen.requires_grad
    assert all(p.requires_grad for p in model.parameters() if p is not frozen)
    assert all(p.grad is None for p in model.parameters())  # no .grad written
    assert [la.name for la in layers] == list(_weights(model))
    assert all(la.sensitivity > 0 and math.isfinite(la.sensitivity) for la in layers)


def test_weights_are_restored_when_the_loss_raises_on_the_second_call() -> None:
    model, loss, calls = _conv_net(), _ce_loss((3, 8, 8)), [0]

    def flaky(m: nn.Module) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("calibration batch went away")
        return loss(m)

    model.train()
    before = _bits(model)
    with pytest.raises(RuntimeError, match="went away"):
        layer_sensitivities(model, _weights(model), flaky, SensitivityConfig(epsilon=0.1))
    assert calls[0] == 2 and _same_bits(before, _bits(model))
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_a_fixed_seed_is_deterministic_and_another_seed_differs() -> None:
    model, loss = _conv_net(), _ce_loss((3, 8, 8))

    def run(seed: int) -> list[LayerSensitivity]:
        return layer_sensitivities(model, _weights(model), loss, SensitivityConfig(seed=seed))

    first, again, other = run(0), run(0), run(1)
    assert first == again
    assert all(a.sensitivity != b.sensitivity for a, b in zip(first, other, strict=True))
    # Each layer's noise depends on (seed, name) only: a subset measures the same values.
    last = list(_weights(model).items())[-1:]
    assert layer_sensitivities(model, dict(last), loss) == first[-1:]


def test_epsilon_zero_gives_the_plain_gradient_l1_norm() -> None:
    model, loss = _mlp(), _ce_loss((12,))
    layers = layer_sensitivities(model, _weights(model), loss, SensitivityConfig(epsilon=0.0))
    grads = torch.autograd.grad(loss(model), list(_weights(model).values()))
    for layer, grad in zip(layers, grads, strict=True):
        assert layer.sensitivity == pytest.approx(float(grad.abs().sum()), rel=1e-6)
        assert layer.per_weight == pytest.approx(layer.sensitivity / grad.numel())
    # The noise moves W (and so the gradient), by an amount that grows with ε.
    noisy = layer_sensitivities(model, _weights(model), loss, SensitivityConfig(epsilon=1.0))
    assert all(a.sensitivity != b.sensitivity for a, b in zip(layers, noisy, strict=True))


def test_widening_a_layer_grows_s_but_not_the_per_weight_score() -> None:
    # Widening the hidden layer 16x (PyTorch's default init, as networks are built) gives
    # the output layer 16x the weights with per-weight gradients of the same size.
    loss = _ce_loss((12,), n=256)

    def output_layer(hidden: int) -> LayerSensitivity:
        model = _mlp(hidden, seed=1)
        return layer_sensitivities(model, {"out": _weights(model)["2"]}, loss)[0]

    narrow, wide = output_layer(16), output_layer(256)
    assert wide.params == 16 * narrow.params
    assert wide.sensitivity / narrow.sensitivity > 8
    assert 0.5 < wide.per_weight / narrow.per_weight < 2


class _DeadBranch(nn.Module):
    """`dead`'s output is multiplied by zero; `unused` never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.live, self.dead, self.unused = nn.Linear(12, 5), nn.Linear(12, 5), nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.live(x) + 0.0 * self.dead(x)


def test_a_layer_with_zero_gradient_scores_zero() -> None:
    model = _seeded(_DeadBranch)
    layers = layer_sensitivities(model, _weights(model), _ce_loss((12,)))
    scores = {la.name: (la.sensitivity, la.per_weight) for la in layers}
    assert scores["dead"] == scores["unused"] == (0.0, 0.0)
    assert scores["live"][0] > 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("trials", 0),
        ("trials", 2.0),
        ("trials", True),
        ("epsilon", -1e-3),
        ("epsilon", math.nan),
        ("epsilon", math.inf),
        ("epsilon", "0.001"),
        ("seed", -1),
        ("seed", 2**32),
        ("normalise", "yes"),
    ],
)
def test_bad_config_values_are_named(field: str, value: object) -> None:
    with pytest.raises(QuantpipeError, match=f"{field} .*{re.escape(repr(value))}"):
        SensitivityConfig(**{field: value})  # type: ignore[arg-type]


def test_bad_inputs_are_user_errors() -> None:
    model, loss = _mlp(), _ce_loss((12,))
    with pytest.raises(QuantpipeError, match="'stray' is not a parameter"):
        layer_sensitivities(model, {"stray": nn.Parameter(torch.ones(3))}, loss)
    with pytest.raises(QuantpipeError, match="scalar"):
        layer_sensitivities(model, _weights(model), lambda m: m(torch.ones(2, 12)))
    with torch.no_grad():
        with pytest.raises(QuantpipeError, match="no gradient"):
            layer_sensitivities(model, _weights(model), lambda m: loss(m).detach())
        _weights(model)["0"].zero_()
    with pytest.raises(QuantpipeError, match=r"norm 0\.0"):
        layer_sensitivities(model, _weights(model), loss)


def test_json_round_trip_and_the_allocators_score() -> None:
    layers = [LayerSensitivity("a", 4, 2.0, 0.5), LayerSensitivity("b", 8, 1.0, 0.125)]
    record = to_json(layers, SensitivityConfig(trials=2))
    assert record["config"] == {"trials": 2, "epsilon": 1e-3, "seed": 0, "normalise": False}
    assert from_json(record) == layers
    assert [la.score(False) for la in layers] == [2.0, 1.0]
    assert [la.score(True) for la in layers] == [0.5, 0.125]
    with pytest.raises(QuantpipeError, match="not a sensitivity record"):
        from_json({"layers": [{"name": "a"}]})


def test_the_plot_is_a_png_with_one_bar_per_layer(tmp_path: Path) -> None:
    import matplotlib.image

    layers = [
        LayerSensitivity(f"block{i // 2}.conv{i % 2}", 100 * (i + 1), 1e-3 * (i + 1) ** 2, 0.0)
        for i in range(60)
    ]
    path = tmp_path / "sensitivity.png.tmp"  # a stage's temporary name, no .png suffix
    plot_sensitivity(layers, path, "60 layers")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(path, format="png").shape
    assert width == 11 * 110 and height >= 60 * 0.2 * 110  # room for every label
    with pytest.raises(QuantpipeError, match="no layers"):
        plot_sensitivity([], tmp_path / "empty.png", "none")
