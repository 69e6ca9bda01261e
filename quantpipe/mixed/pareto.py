"""Pareto bit allocation for mixed precision (thesis Algorithm 2, eq. 3.4).

Each layer l has a sensitivity S_l and P_l parameters; a bit width b_l from a set B costs
S_l / b_l (the proxy of the accuracy loss) and P_l · b_l / 8 bytes. `pareto_frontier`
returns every allocation no other one beats in both size and cost, `best_under_budget`
picks the cheapest that fits a byte budget.

The frontier is exact: a dynamic programme over the layers keeps, after each layer, only
the partial allocations (size, cost) that no other partial allocation dominates. Size and
cost are sums over layers, so a dominated prefix stays dominated by the same completion of
its dominator, and dropping it loses no Pareto point. Sizes are kept as integer bit counts
so that equal sizes compare equal; costs are floats summed in layer order, and rounding is
monotone, so the pruning agrees with the costs reported.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from quantpipe.errors import QuantpipeError

DEFAULT_WIDTHS = (2, 4, 8)
MIN_WIDTH, MAX_WIDTH = 2, 8
FP32_BYTES = 4


@dataclass(frozen=True)
class Layer:
    """One quantizable layer: its name, parameter count and sensitivity (≥ 0)."""

    name: str
    params: int
    sensitivity: float

    def __post_init__(self) -> None:
        if isinstance(self.params, bool) or not isinstance(self.params, int) or self.params <= 0:
            raise QuantpipeError(
                f"layer {self.name!r} has {self.params!r} parameters; give a positive integer"
            )
        if not math.isfinite(self.sensitivity) or self.sensitivity < 0:
            raise QuantpipeError(
                f"layer {self.name!r} has sensitivity {self.sensitivity!r}; "
                "give a finite number ≥ 0"
            )


@dataclass(frozen=True)
class Allocation:
    """Bit widths per layer name, the weights' size Σ P·b/8 in bytes and the cost Σ S/b."""

    bits: dict[str, int]
    size_bytes: float
    cost: float


@dataclass(frozen=True)
class _Step:
    """Back-pointers of the states kept after one layer: the previous state and the width."""

    parent: np.ndarray
    choice: np.ndarray


def pareto_frontier(
    layers: Sequence[Layer],
    widths: Sequence[int] = DEFAULT_WIDTHS,
    fixed: Mapping[str, int] | None = None,
) -> list[Allocation]:
    """Every Pareto-optimal (size, cost) allocation of bit widths to `layers`.

    Args:
        layers: the layers, names unique.
        widths: the bit widths to choose from, each in 2..8.
        fixed: layer name → width for layers pinned to one width (e.g. first and last at 8);
            each width must be one of `widths`.

    Returns:
        The allocations sorted by size ascending, cost strictly descending; of allocations
        equal in both, one (the same on every call).
    """
    choices = _layer_choices(layers, _check_widths(widths), fixed or {})
    sizes, costs = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.float64)
    steps = []
    for layer, options in zip(layers, choices, strict=True):
        sizes, costs, step = _extend(sizes, costs, layer, options)
        steps.append(step)
    bits = _trace(steps, choices, len(sizes))
    names = [layer.name for layer in layers]
    return [
        Allocation(dict(zip(names, row, strict=True)), size / 8, cost)
        for row, size, cost in zip(bits.tolist(), sizes.tolist(), costs.tolist(), strict=True)
    ]


def best_under_budget(frontier: Sequence[Allocation], budget_bytes: float) -> Allocation:
    """The least-cost allocation of `frontier` (as `pareto_frontier` sorts it) within
    `budget_bytes`.

    Raises:
        QuantpipeError: the budget is not a positive number, or even the smallest
            allocation exceeds it.
    """
    if not math.isfinite(budget_bytes) or budget_bytes <= 0:
        raise QuantpipeError(f"budget {budget_bytes!r} bytes is not a positive number")
    if not frontier:
        raise QuantpipeError("the Pareto frontier is empty; build it with pareto_frontier")
    # Sizes ascend and costs descend along the frontier: the largest fitting size is cheapest.
    fits = bisect.bisect_right([a.size_bytes for a in frontier], budget_bytes)
    if fits == 0:
        raise QuantpipeError(
            f"budget {budget_bytes:g} bytes is below the smallest allocation, "
            f"{frontier[0].size_bytes:g} bytes; raise the budget (lower the compression "
            "ratio), unpin fixed layers or allow a narrower bit width"
        )
    return frontier[fits - 1]


def budget_for_compression(layers: Sequence[Layer], ratio: float) -> float:
    """Bytes allowed for compression `ratio` over the FP32 weights: Σ P·4 / ratio."""
    if not math.isfinite(ratio) or ratio <= 0:
        raise QuantpipeError(f"compression ratio {ratio!r} is not a positive number")
    return sum(layer.params for layer in layers) * FP32_BYTES / ratio


def _check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    """The widths sorted and unique, so that ties are broken the same for any order given."""
    if not widths:
        raise QuantpipeError(f"no bit widths given; choose from {MIN_WIDTH}..{MAX_WIDTH}")
    for width in widths:
        if isinstance(width, bool) or not isinstance(width, int):
            raise QuantpipeError(f"bit width {width!r} is not an integer in 2..8")
        if not MIN_WIDTH <= width <= MAX_WIDTH:
            raise QuantpipeError(f"bit width {width} is not in {MIN_WIDTH}..{MAX_WIDTH}")
    return tuple(sorted(set(widths)))


def _layer_choices(
    layers: Sequence[Layer], widths: tuple[int, ...], fixed: Mapping[str, int]
) -> list[tuple[int, ...]]:
    """The widths each layer may take: its pinned width, or all of `widths`."""
    if not layers:
        raise QuantpipeError("no layers given; the allocation needs at least one layer")
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise QuantpipeError(f"layer name {duplicate!r} appears twice; names must be unique")
    for name, width in fixed.items():
        if name not in names:
            raise QuantpipeError(f"fixed layer {name!r} is not one of the {len(names)} layers")
        if width not in widths:
            raise QuantpipeError(
                f"fixed width {width!r} for layer {name!r} is not one of the widths {widths}"
            )
    return [(fixed[n],) if n in fixed else widths for n in names]


def _extend(
    sizes: np.ndarray, costs: np.ndarray, layer: Layer, options: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, _Step]:
    """The non-dominated states after giving `layer` each of `options`, with back-pointers.

    `sizes` ascend strictly and `costs` descend strictly on input, and so on output.
    """
    count = len(sizes)
    new_sizes = np.concatenate([sizes + layer.params * b for b in options])
    new_costs = np.concatenate([costs + layer.sensitivity / b for b in options])
    # Size ascending, then cost ascending; lexsort is stable, so exact ties keep the
    # candidate that comes first (narrowest width, then earliest parent): deterministic.
    order = np.lexsort((new_costs, new_sizes))
    sorted_costs = new_costs[order]
    cheapest_before = np.minimum.accumulate(sorted_costs)
    keep = np.empty(len(order), dtype=bool)
    keep[0] = True
    keep[1:] = sorted_costs[1:] < cheapest_before[:-1]
    kept = order[keep]
    step = _Step(parent=kept % count, choice=(kept // count).astype(np.uint8))
    return new_sizes[kept], new_costs[kept], step


def _trace(steps: list[_Step], choices: list[tuple[int, ...]], count: int) -> np.ndarray:
    """The widths (states × layers) of the `count` final states, read back layer by layer."""
    bits = np.empty((count, len(steps)), dtype=np.int64)
    state = np.arange(count)
    for index in range(len(steps) - 1, -1, -1):
        step = steps[index]
        bits[:, index] = np.asarray(choices[index])[step.choice[state]]
        state = step.parent[state]
    return bits
