"""The allocations a sensitivity allocation is measured against, at the same size: uniform
(every layer at one width, first and last layer at 8, as is common practice) and random
(seeded; each filled up to the budget, so that it is a fair same-size rival)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from quantpipe.errors import QuantpipeError
from quantpipe.mixed.pareto import Layer

ENDS_BITS = 8


def size_bytes(layers: Sequence[Layer], bits: Mapping[str, int]) -> float:
    """Σ P·b / 8 over `layers`."""
    return sum(layer.params * bits[layer.name] for layer in layers) / 8


def uniform(layers: Sequence[Layer], width: int) -> dict[str, int]:
    """Every layer at `width`, the first and the last at 8 bits."""
    if not layers:
        raise QuantpipeError("no layers to allocate bit widths to")
    bits = {layer.name: width for layer in layers}
    bits[layers[0].name] = bits[layers[-1].name] = ENDS_BITS
    return bits


def random_allocations(
    layers: Sequence[Layer], widths: Sequence[int], budget: float, count: int, seed: int
) -> list[dict[str, int]]:
    """`count` random allocations within `budget` bytes: start every layer at the narrowest
    width, visit the layers in a random order and give each a width drawn at random from
    those that still fit, then widen layers (another random order) while the budget allows,
    so that each ends close to the budget."""
    narrowest = min(widths)
    floor = sum(layer.params * narrowest for layer in layers) / 8
    if budget < floor:
        raise QuantpipeError(
            f"budget {budget:g} bytes is below the all-{narrowest}-bit size {floor:g} bytes"
        )
    rng = np.random.default_rng(seed)
    return [_one_random(layers, sorted(widths), budget, rng) for _ in range(count)]


def _one_random(
    layers: Sequence[Layer], widths: list[int], budget: float, rng: np.random.Generator
) -> dict[str, int]:
    bits = {layer.name: widths[0] for layer in layers}
    spare = budget * 8 - sum(layer.params * widths[0] for layer in layers)  # in bits
    for k in rng.permutation(len(layers)):
        layer = layers[int(k)]
        fitting = [w for w in widths if layer.params * (w - widths[0]) <= spare]
        choice = int(rng.choice(fitting))
        bits[layer.name] = choice
        spare -= layer.params * (choice - widths[0])
    # Then spend what is left, in a new random order: the next wider width that fits.
    for k in rng.permutation(len(layers)):
        layer = layers[int(k)]
        wider = [w for w in widths if w > bits[layer.name]]
        for w in wider:
            if layer.params * (w - bits[layer.name]) <= spare:
                spare -= layer.params * (w - bits[layer.name])
                bits[layer.name] = w
    return bits
