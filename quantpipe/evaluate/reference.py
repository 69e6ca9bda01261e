"""Data without labels: a reference model's predictions stand in for them.

Deployment engineers often hold samples without labels. Every stage that scores or
selects then measures agreement with the FP32 model: its arg-max (per sample, or per
pixel for segmentation) becomes the selection's labels, named by `truth`, so accuracy,
the calibrator choice and the BTC search all run unchanged and say what they measured.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from quantpipe.data.selection import Selection
from quantpipe.engines.base import RunnerContext, first_output


def ensure_labels(
    selection: Selection,
    make_reference: Callable[[], RunnerContext],
    truth: str,
    batch_size: int | None = None,
) -> Selection:
    """`selection` as it is when it has labels; else labelled by the reference's arg-max.

    Args:
        make_reference: builds the reference runner, only when it is needed.
        truth: how reports name the reference (e.g. "predictions of model.fp32.onnx").
    """
    if selection.labelled:
        return selection
    with make_reference() as reference:
        labels = [first_output(reference, x).argmax(1) for x, _ in selection.batches(batch_size)]
    return selection.with_labels(np.concatenate(labels), truth)
