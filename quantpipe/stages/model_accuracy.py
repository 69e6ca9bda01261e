"""The headline accuracy of a PyTorch model on a selection, as one number."""

from __future__ import annotations

from torch import nn

from quantpipe.data.selection import Selection
from quantpipe.engines.torch_runner import TorchRunner
from quantpipe.evaluate.evaluate import EvalSetup, evaluate
from quantpipe.models.spec import ModelSpec

HEADLINE_KEYS = ("top1", "miou", "agreement")


def headline_value(result: dict) -> float:
    """top-1 for classifiers, mIoU for segmentation (percent)."""
    return float(next(result[k] for k in HEADLINE_KEYS if k in result))


def torch_accuracy(net: nn.Module, data: Selection, spec: ModelSpec) -> float:
    with TorchRunner(net) as runner:
        result = evaluate(runner, data, EvalSetup(spec.task, spec.num_classes, progress=False))
    return headline_value(result)
