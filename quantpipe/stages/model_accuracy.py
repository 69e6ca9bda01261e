"""The headline accuracy of a PyTorch model on a selection, as one number."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quantpipe.data.selection import Selection
from quantpipe.engines.torch_runner import TorchRunner
from quantpipe.evaluate.evaluate import EvalSetup, evaluate
from quantpipe.models.spec import ModelSpec

if TYPE_CHECKING:
    from torch import nn


def torch_accuracy(net: nn.Module, data: Selection, spec: ModelSpec) -> float:
    """top-1, mIoU, or agreement when the selection's labels are a reference's predictions."""
    with TorchRunner(net) as runner:
        return evaluate(runner, data, EvalSetup(spec.task, spec.num_classes, progress=False)).value
