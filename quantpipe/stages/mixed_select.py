"""Choosing a bit allocation: the thesis's sensitivity (Algorithm 1) and Pareto frontier
(Algorithm 2), the budget, the accuracy-verified search (`--max-drop`), and the same-size
comparison against uniform and random allocations."""

from __future__ import annotations

import time
from dataclasses import dataclass

from quantpipe.errors import QuantpipeError
from quantpipe.mixed import baselines
from quantpipe.mixed.pareto import (
    Allocation,
    best_under_budget,
    pareto_frontier,
)
from quantpipe.mixed.sensitivity import LayerSensitivity, layer_sensitivities
from quantpipe.stages.mixed_result import Comparison, ScoredAllocation
from quantpipe.stages.mixed_session import Evaluator, MixedConfig, Session, pareto_layers

RANKINGS = {False: "S", True: "S/P"}


@dataclass(frozen=True)
class Ranked:
    """The Pareto frontier of one ranking (S or S/P), sizes ascending."""

    ranking: str
    frontier: list[Allocation]


def measure(
    s: Session, config: MixedConfig, progress: bool
) -> tuple[list[LayerSensitivity], float]:
    """S and S/P of every weighted layer on the calib batch (float model), and the seconds."""
    import torch
    import torch.nn.functional as F

    from quantpipe.evaluate.metrics import IGNORE_INDEX
    from quantpipe.qat.graph_module import OnnxGraphModule

    module = OnnxGraphModule(s.model)
    x, y = s.calib.arrays()
    assert y is not None  # labelled by prepare
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y.astype("int64"))
    weights = {layer.node: module.parameter(layer.initializer) for layer in s.layers}

    def loss(model: torch.nn.Module) -> torch.Tensor:
        return F.cross_entropy(model(inputs), targets, ignore_index=IGNORE_INDEX)

    start = time.perf_counter()
    measured = layer_sensitivities(module, weights, loss, config.sensitivity, progress=progress)
    return measured, time.perf_counter() - start


def frontiers(
    s: Session, measured: list[LayerSensitivity], widths: tuple[int, ...]
) -> dict[bool, Ranked]:
    """The frontier for each ranking, keyed by `normalise`."""
    out = {}
    for normalise, ranking in RANKINGS.items():
        scores = {m.name: m.score(normalise) for m in measured}
        out[normalise] = Ranked(ranking, pareto_frontier(pareto_layers(s.layers, scores), widths))
    return out


def budget(s: Session, config: MixedConfig) -> float | None:
    """The byte budget of the weights; None when --max-drop alone decides."""
    if config.budget_bytes is not None:
        return _fits(s, config, config.budget_bytes)
    ratio = config.compression
    if ratio is None:
        if config.max_drop is not None:
            return None
        ratio = config.precision().default_compression
    return _fits(s, config, s.fp32_weight_bytes / ratio)  # Σ P·4 / ratio


def _fits(s: Session, config: MixedConfig, limit: float) -> float:
    """`limit`, if the narrowest allocation fits in it (checked before any measuring)."""
    narrowest = min(config.precision().widths)
    floor = sum(layer.params for layer in s.layers) * narrowest / 8
    if limit < floor:
        raise QuantpipeError(
            f"a budget of {limit:,.0f} bytes is below the all-{narrowest}-bit size of the "
            f"{len(s.layers)} layers, {floor:,.0f} bytes (compression "
            f"{s.fp32_weight_bytes / floor:.2f}×): raise --budget or lower --compression"
        )
    return limit


def choose(
    frontier: list[Allocation],
    limit: float | None,
    config: MixedConfig,
    fp32_val: float,
    evaluator: Evaluator,
) -> tuple[Allocation, list[ScoredAllocation]]:
    """The allocation to deliver, and the frontier points measured to find it.

    Without --max-drop: the least-cost point within the budget (the thesis). With it: the
    smallest point (within the budget, if one was given) whose val accuracy drops by at most
    D from FP32, found by bisection over the frontier's sizes — accuracy is taken to grow
    with size along the frontier, which holds on the whole but not point by point, so the
    answer is the smallest *measured* point within D, not a proof that none smaller is.
    """
    if limit is not None:
        best = best_under_budget(frontier, limit)  # a clear error below the smallest point
        frontier = frontier[: frontier.index(best) + 1]
    if config.max_drop is None:
        return frontier[-1], []
    return _search(frontier, config.max_drop, fp32_val, evaluator)


def _search(
    frontier: list[Allocation], max_drop: float, fp32_val: float, evaluator: Evaluator
) -> tuple[Allocation, list[ScoredAllocation]]:
    searched: dict[int, ScoredAllocation] = {}

    def ok(i: int) -> bool:
        if i not in searched:
            searched[i] = evaluator.score("frontier", frontier[i].bits, test=False)
        return fp32_val - searched[i].accuracy.val <= max_drop

    low, high = 0, len(frontier) - 1
    if not ok(high):
        best = searched[high]
        raise QuantpipeError(
            f"--max-drop {max_drop:g}: even the largest allocation allowed "
            f"({best.size_bytes:,.0f} bytes, {best.compression:.2f}×) drops "
            f"{fp32_val - best.accuracy.val:.2f} points on val; raise --max-drop, the budget, "
            "or fine-tune with --qat-epochs"
        )
    while low < high:
        mid = (low + high) // 2
        if ok(mid):
            high = mid
        else:
            low = mid + 1
    return frontier[high], [searched[i] for i in sorted(searched)]


def compare(
    s: Session,
    ranked: dict[bool, Ranked],
    chosen: Allocation,
    config: MixedConfig,
    evaluator: Evaluator,
) -> list[Comparison]:
    """At the size of each uniform allocation (one per width below 8) and at the chosen
    size: the uniform allocation (where it sets the size), the best S- and S/P-ranked
    allocations within that size, and `randoms` random ones."""
    precision = config.precision()
    layers = pareto_layers(s.layers, {layer.node: 0.0 for layer in s.layers})
    sizes: list[tuple[str, float, dict[str, int] | None]] = []
    for width in precision.lowest:
        uniform = baselines.uniform(layers, width)
        sizes.append((f"uniform {width}-bit", baselines.size_bytes(layers, uniform), uniform))
    sizes.append(("chosen", chosen.size_bytes, None))
    out = []
    for at, size, uniform_bits in sizes:
        rows = [] if uniform_bits is None else [evaluator.score(at, uniform_bits)]
        for r in ranked.values():
            try:
                best = best_under_budget(r.frontier, size)
            except QuantpipeError:
                continue  # the size is below every allocation of these widths
            rows.append(evaluator.score(f"sensitivity {r.ranking}", best.bits))
        randoms = baselines.random_allocations(
            layers, precision.widths, size, config.randoms, seed=config.sensitivity.seed
        )
        rows += [evaluator.score(f"random {k + 1}", bits) for k, bits in enumerate(randoms)]
        out.append(Comparison(at, size, rows))
    return out


def pick_measured(
    proxy: ScoredAllocation,
    comparisons: list[Comparison],
    swept: list[ScoredAllocation],
    limit: float | None,
) -> ScoredAllocation:
    """Of every allocation measured within the budget (the proxy's choice, the compared
    ones, the frontier sweep), the best on val; ties go to the smaller. The thesis delivers
    the proxy's choice unmeasured; on fmnist-cnn 2MP-A8 at 6× that lost 3.4 points on test
    where a same-size random allocation lost 0.5 (mixed/report.md), so measuring wins."""
    pool = [proxy, *swept] + [row for c in comparisons for row in c.rows]
    fitting = [p for p in pool if limit is None or p.size_bytes <= limit]
    return max(fitting, key=lambda p: (p.accuracy.val, -p.size_bytes))


def sweep(frontier: list[Allocation], count: int, evaluator: Evaluator) -> list[ScoredAllocation]:
    """`count` frontier points spread evenly in size from the smallest to the largest (the
    least-cost point within each step), measured: the accuracy-versus-size curve."""
    if count < 1:
        return []
    low, high = frontier[0].size_bytes, frontier[-1].size_bytes
    targets = [low + (high - low) * k / max(count - 1, 1) for k in range(count)]
    points = {id(p): p for p in (best_under_budget(frontier, t) for t in targets)}
    return [evaluator.score("frontier", p.bits) for p in points.values()]
