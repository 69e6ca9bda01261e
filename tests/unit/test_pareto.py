"""Pareto bit allocation: the frontier equals brute force's Pareto set, budgets, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from quantpipe.errors import QuantpipeError
from quantpipe.mixed.pareto import (
    Allocation,
    Layer,
    best_under_budget,
    budget_for_compression,
    pareto_frontier,
)

SEEDS = range(60)


def _random_case(seed: int) -> tuple[list[Layer], tuple[int, ...], dict[str, int]]:
    """≤ 7 layers; half the cases draw from small sets so that exact ties in size and cost
    occur, and a third pin one layer to a width."""
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 8))
    if seed % 2:
        params = rng.integers(1, 6, count)
        sens = rng.choice([0.0, 0.5, 1.0, 2.0], count)
    else:
        params = rng.integers(1, 100_000, count)
        sens = rng.lognormal(0.0, 2.0, count)
    layers = [
        Layer(f"l{i}", int(p), float(s)) for i, (p, s) in enumerate(zip(params, sens, strict=True))
    ]
    widths = (2, 4, 8) if seed % 4 < 2 else (4, 8)
    fixed = {layers[-1].name: widths[-1]} if seed % 3 == 0 else {}
    return layers, widths, fixed


def _all_allocations(
    layers: list[Layer], widths: tuple[int, ...], fixed: dict[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Size (bits) and cost of every allocation, the cost summed in layer order."""
    options = [(fixed[x.name],) if x.name in fixed else widths for x in layers]
    sizes, costs = [], []
    for bits in itertools.product(*options):
        sizes.append(sum(x.params * b for x, b in zip(layers, bits, strict=True)))
        costs.append(sum(x.sensitivity / b for x, b in zip(layers, bits, strict=True)))
    return np.array(sizes, dtype=np.int64), np.array(costs)


def _brute_pareto(sizes: np.ndarray, costs: np.ndarray) -> list[tuple[int, float]]:
    """The (size, cost) points no other point dominates, by the definition, deduplicated."""
    s, c = sizes[:, None], costs[:, None]
    dominated = ((sizes <= s) & (costs <= c) & ((sizes < s) | (costs < c))).any(axis=1)
    kept = zip(sizes[~dominated].tolist(), costs[~dominated].tolist(), strict=True)
    return sorted(set(kept))


def _points(frontier: list[Allocation]) -> list[tuple[int, float]]:
    return [(round(a.size_bytes * 8), a.cost) for a in frontier]


@pytest.mark.parametrize("seed", SEEDS)
def test_the_frontier_is_brute_forces_pareto_set(seed: int) -> None:
    layers, widths, fixed = _random_case(seed)
    frontier = pareto_frontier(layers, widths, fixed)
    expected = _brute_pareto(*_all_allocations(layers, widths, fixed))
    got = _points(frontier)
    assert [size for size, _ in got] == [size for size, _ in expected]
    assert [cost for _, cost in got] == pytest.approx([c for _, c in expected], rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_each_allocation_has_the_size_and_cost_it_reports(seed: int) -> None:
    layers, widths, fixed = _random_case(seed)
    for allocation in pareto_frontier(layers, widths, fixed):
        assert list(allocation.bits) == [x.name for x in layers]
        assert set(allocation.bits.values()) <= set(widths)
        assert all(allocation.bits[name] == width for name, width in fixed.items())
        bits = [allocation.bits[x.name] for x in layers]
        assert (
            allocation.size_bytes
            == sum(x.params * b for x, b in zip(layers, bits, strict=True)) / 8
        )
        expected_cost = sum(x.sensitivity / b for x, b in zip(layers, bits, strict=True))
        assert allocation.cost == pytest.approx(expected_cost, rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_frontier_ascends_in_size_and_descends_strictly_in_cost(seed: int) -> None:
    frontier = pareto_frontier(*_random_case(seed))
    sizes = [a.size_bytes for a in frontier]
    costs = [a.cost for a in frontier]
    assert all(a < b for a, b in itertools.pairwise(sizes))
    assert all(a > b for a, b in itertools.pairwise(costs))


@pytest.mark.parametrize("seed", SEEDS)
def test_best_under_budget_is_brute_forces_best_feasible(seed: int) -> None:
    layers, widths, fixed = _random_case(seed)
    frontier = pareto_frontier(layers, widths, fixed)
    sizes, costs = _all_allocations(layers, widths, fixed)
    rng = np.random.default_rng(1000 + seed)
    for budget_bits in rng.integers(sizes.min(), sizes.max() + 1, 5):
        budget = float(budget_bits) / 8
        best = best_under_budget(frontier, budget)
        assert best.size_bytes <= budget
        assert best.cost == pytest.approx(costs[sizes <= budget_bits].min(), rel=1e-12)


def test_a_budget_below_the_smallest_allocation_says_so() -> None:
    layers = [Layer("a", 100, 1.0), Layer("b", 300, 2.0)]
    frontier = pareto_frontier(layers, (2, 4, 8), {"a": 8})
    assert frontier[0].size_bytes == (100 * 8 + 300 * 2) / 8
    with pytest.raises(QuantpipeError, match=r"budget 174 bytes .* smallest .* 175 bytes"):
        best_under_budget(frontier, 174)
    assert best_under_budget(frontier, 175).bits == {"a": 8, "b": 2}
    with pytest.raises(QuantpipeError, match="budget 0 bytes"):
        best_under_budget(frontier, 0)


def test_the_whole_budget_buys_the_widest_allocation() -> None:
    layers = [Layer("a", 10, 1.0), Layer("b", 20, 3.0), Layer("c", 5, 0.5)]
    best = best_under_budget(pareto_frontier(layers), 35.0)
    assert best.bits == {"a": 8, "b": 8, "c": 8}
    assert best.cost == pytest.approx(4.5 / 8)


def test_budget_for_compression_divides_the_fp32_bytes() -> None:
    layers = [Layer("a", 100, 1.0), Layer("b", 300, 2.0)]
    assert budget_for_compression(layers, 8.0) == 200.0
    assert budget_for_compression(layers, 4) == 400.0
    with pytest.raises(QuantpipeError, match="compression ratio 0"):
        budget_for_compression(layers, 0)


def test_pinned_layers_keep_their_width_on_every_point() -> None:
    layers = [Layer(f"l{i}", 10 * (i + 1), float(i + 1)) for i in range(5)]
    frontier = pareto_frontier(layers, (2, 4, 8), {"l0": 8, "l4": 8})
    assert len(frontier) > 1
    assert all(a.bits["l0"] == 8 and a.bits["l4"] == 8 for a in frontier)
    assert {a.bits["l2"] for a in frontier} == {2, 4, 8}


def test_the_frontier_is_deterministic_and_independent_of_width_order() -> None:
    layers, widths, fixed = _random_case(1)  # small values: exact ties in size and cost
    first = pareto_frontier(layers, widths, fixed)
    assert pareto_frontier(layers, widths, fixed) == first
    assert pareto_frontier(layers, tuple(reversed(widths)) + widths, fixed) == first


def test_ties_in_size_and_cost_keep_one_allocation_the_same_way() -> None:
    # a=4, b=2 and a=2, b=4 tie exactly; the later layer's narrower width is kept.
    layers = [Layer("a", 1, 1.0), Layer("b", 1, 1.0)]
    for widths in [(2, 4, 8), (8, 4, 2)]:
        frontier = pareto_frontier(layers, widths)
        assert [a.size_bytes * 8 for a in frontier] == [4, 6, 8, 12, 16]
        assert frontier[1].bits == {"a": 4, "b": 2}


@pytest.mark.parametrize(
    ("widths", "message"),
    [
        ((2, 9), "bit width 9 is not in 2..8"),
        ((1, 4), "bit width 1 is not in 2..8"),
        ((), "no bit widths given"),
        ((4.0,), "bit width 4.0 is not an integer"),
    ],
)
def test_bad_widths_are_named(widths: tuple[int, ...], message: str) -> None:
    with pytest.raises(QuantpipeError, match=message):
        pareto_frontier([Layer("a", 1, 1.0)], widths)


@pytest.mark.parametrize(
    ("params", "sensitivity", "message"),
    [
        (0, 1.0, "layer 'x' has 0 parameters"),
        (-5, 1.0, "layer 'x' has -5 parameters"),
        (2.5, 1.0, "layer 'x' has 2.5 parameters"),
        (3, -0.1, "layer 'x' has sensitivity -0.1"),
        (3, float("nan"), "layer 'x' has sensitivity nan"),
        (3, float("inf"), "layer 'x' has sensitivity inf"),
    ],
)
def test_bad_layers_are_named(params: int, sensitivity: float, message: str) -> None:
    with pytest.raises(QuantpipeError, match=message):
        Layer("x", params, sensitivity)


def test_bad_layer_sets_and_pins_are_named() -> None:
    layers = [Layer("a", 1, 1.0), Layer("b", 2, 1.0)]
    with pytest.raises(QuantpipeError, match="no layers given"):
        pareto_frontier([])
    with pytest.raises(QuantpipeError, match="layer name 'a' appears twice"):
        pareto_frontier([*layers, Layer("a", 3, 1.0)])
    with pytest.raises(QuantpipeError, match=r"fixed width 6 for layer 'a' .* \(2, 4, 8\)"):
        pareto_frontier(layers, (2, 4, 8), {"a": 6})
    with pytest.raises(QuantpipeError, match="fixed layer 'fc' is not one of the 2 layers"):
        pareto_frontier(layers, (2, 4, 8), {"fc": 8})
