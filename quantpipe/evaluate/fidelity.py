"""How far a compressed model's outputs are from the reference's, independent of labels."""

from __future__ import annotations

import numpy as np

from quantpipe.data.selection import Selection
from quantpipe.engines.base import Runner, first_output


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def output_kl(
    reference: Runner, candidate: Runner, data: Selection, batch_size: int | None = None
) -> float:
    """Mean KL(softmax(reference) ‖ softmax(candidate)) per sample (per pixel for dense
    outputs), in nats. Both runners must be active.

    Why: choosing among near-identical quantized models by accuracy on a few thousand
    labels is mostly label noise (a handful of flips); the KL divergence measures the
    damage itself on every sample.
    """
    total, count = 0.0, 0
    for x, _ in data.batches(batch_size):
        p = _log_softmax(first_output(reference, x))
        q = _log_softmax(first_output(candidate, x))
        kl = (np.exp(p) * (p - q)).sum(axis=1)
        total += float(kl.sum())
        count += kl.size
    return total / max(count, 1)
