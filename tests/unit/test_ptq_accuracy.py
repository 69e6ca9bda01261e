"""`ptq --max-drop`'s walk over the ranked layers (quantpipe.stages.ptq_accuracy.control),
with a scorer whose accuracies are known, so the choice itself is what is tested."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from quantpipe.stages import ptq_accuracy
from quantpipe.stages.ptq_result import LayerSensitivity

# The layers and what leaving each in float wins back on val (points), most first.
GAINS = {"conv_a": 1.0, "conv_b": 0.6, "conv_c": 0.3, "conv_d": 0.1}


class _FakeScorer:
    def __init__(self, *args: object) -> None:
        self.evaluations = 0

    def rank(
        self, layers: list[str], base: tuple[str, ...], data: object
    ) -> list[LayerSensitivity]:
        self.evaluations += len(layers) + 1
        return sorted((LayerSensitivity(n, GAINS[n]) for n in layers), key=lambda s: -s.kl_gain)

    def accuracy(self, exclude: tuple[str, ...], data: object) -> float:
        self.evaluations += 1
        return 90.0 - LOSS[0] + sum(GAINS[n] for n in exclude if n in GAINS)


LOSS = [2.0]  # what all-INT8 loses on val; the float layers win GAINS back


class _Val:
    def __len__(self) -> int:
        return 100

    def head(self, count: int) -> _Val:
        return self


@pytest.fixture
def control(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(ptq_accuracy, "_Scorer", _FakeScorer)
    plan = SimpleNamespace(weights=[SimpleNamespace(node=n) for n in GAINS], activations=[])
    graph = SimpleNamespace(node=[SimpleNamespace(name=n, op_type="Conv") for n in GAINS])
    quantizer = SimpleNamespace(
        config=SimpleNamespace(exclude=()), plan=lambda: plan, source=SimpleNamespace(graph=graph)
    )
    val = _Val()
    LOSS[0] = 2.0

    def run(max_drop: float):  # type: ignore[no-untyped-def]
        return ptq_accuracy.control(
            quantizer,
            None,
            max_drop,
            90.0,
            val,
            None,
            1,
            Path("/nonexistent"),  # type: ignore[arg-type]
        )

    return run


def test_the_fewest_most_sensitive_layers_stay_float(control) -> None:  # type: ignore[no-untyped-def]
    result = control(0.5)
    assert result.float_layers == ["conv_a", "conv_b"]  # 2.0 - 1.0 - 0.6 = 0.4 <= 0.5
    assert result.reached and abs(result.val_drop - 0.4) < 1e-9
    assert [s.node for s in result.ranking] == list(GAINS)


def test_nothing_stays_float_when_int8_is_within_the_limit(control) -> None:  # type: ignore[no-untyped-def]
    result = control(2.5)
    assert result.float_layers == [] and result.reached
    assert result.ranking == [] and result.evaluations == 1  # not ranked: not needed


def test_an_unreachable_limit_keeps_every_layer_float_and_says_so(control) -> None:  # type: ignore[no-untyped-def]
    LOSS[0] = 2.5  # 0.5 of it is not in any layer's weights (say, an activation's range)
    result = control(0.2)
    assert result.float_layers == list(GAINS)
    assert not result.reached and abs(result.val_drop - 0.5) < 1e-9
    assert "NOT within the limit" in result.lines()[0]
    assert result.evaluations == 1 + len(GAINS) + 1 + len(GAINS)  # all-INT8, rank, walk
