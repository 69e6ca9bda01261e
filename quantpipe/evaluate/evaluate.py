"""Accuracy of any runner on a data selection, with a progress bar."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from quantpipe.data.selection import Selection
from quantpipe.engines.base import Runner
from quantpipe.errors import QuantpipeError
from quantpipe.evaluate.metrics import Agreement, MeanIoU, TopK


@dataclass(frozen=True)
class EvalSetup:
    task: str
    num_classes: int
    batch_size: int = 256
    progress: bool = True


def evaluate(
    runner: Runner, data: Selection, setup: EvalSetup, reference: Runner | None = None
) -> dict[str, Any]:
    """Run `runner` over `data`; top-1/top-5, mIoU, or agreement with `reference` when
    the data has no labels. Both runners must already be active."""
    has_labels = data.labels is not None
    if not has_labels and reference is None:
        raise QuantpipeError(
            f"{data.dataset.kind} split {data.split} has no labels: give a reference model "
            "(--reference FP32.onnx) to measure agreement instead"
        )
    metric = _metric(setup, has_labels)
    bar = tqdm(
        total=len(data),
        desc=f"eval {runner.name}",
        unit="img",
        disable=not setup.progress,
        leave=False,
    )
    for x, y in data.batches(setup.batch_size):
        logits = _first_output(runner, x)
        if has_labels:
            metric.update(logits, y)  # type: ignore[arg-type]
        else:
            metric.update(logits, _first_output(reference, x))  # type: ignore[arg-type]
        bar.update(len(x))
    bar.close()
    return {**metric.result(), "samples": len(data), "data": _describe(data), "runner": runner.name}


def _metric(setup: EvalSetup, has_labels: bool) -> TopK | MeanIoU | Agreement:
    if not has_labels:
        return Agreement()
    return MeanIoU(setup.num_classes) if setup.task == "segmentation" else TopK()


def _first_output(runner: Runner, x: np.ndarray) -> np.ndarray:
    outputs = runner.infer({runner.input_names[0]: x})
    return next(iter(outputs.values()))


def _describe(data: Selection) -> str:
    where = data.dataset.path or "built-in"
    return f"{data.dataset.kind} ({where}), split {data.split}, {len(data):,} samples"


def headline(result: dict[str, Any]) -> str:
    """One line naming the metric, the data set and its size."""
    if "top1" in result:
        value = f"top-1 {result['top1']:.2f} %, top-5 {result['top5']:.2f} %"
    elif "miou" in result:
        value = f"mIoU {result['miou']:.2f} %"
    else:
        value = f"agreement with reference {result['agreement']:.2f} %"
    return f"{value} on {result['data']}"
