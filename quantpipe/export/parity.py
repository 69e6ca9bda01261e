"""Does the exported ONNX model compute what the PyTorch model computes, on real data?"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantpipe.data.selection import Selection
from quantpipe.engines.base import Runner, first_output

MIN_TOP1_AGREEMENT = 99.9  # percent, over the parity samples


@dataclass(frozen=True)
class Parity:
    samples: int
    max_abs_diff: float
    top1_agreement: float
    reference_abs_max: float
    data: str


def check_parity(
    reference: Runner, candidate: Runner, data: Selection, batch_size: int | None = None
) -> Parity:
    """Max |Δlogit| and arg-max agreement (per sample, or per pixel for segmentation)."""
    max_diff, ref_max, same, total = 0.0, 0.0, 0, 0
    for x, _ in data.batches(batch_size):
        ref = first_output(reference, x)
        out = first_output(candidate, x)
        max_diff = max(max_diff, float(np.abs(ref - out).max()))
        ref_max = max(ref_max, float(np.abs(ref).max()))
        agree = ref.argmax(1) == out.argmax(1)
        same += int(agree.sum())
        total += agree.size
    description = f"{data.dataset.kind} split {data.split}, {len(data):,} samples"
    return Parity(len(data), max_diff, 100.0 * same / max(total, 1), ref_max, description)
