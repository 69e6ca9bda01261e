"""Between BTC's numpy world and a PyTorch model: weights out, decoded weights in, and the
per-weight importance (empirical Fisher diagonal) that the bit allocator weighs errors by."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from quantpipe.data.selection import Selection


def model_state(model: nn.Module) -> dict[str, np.ndarray]:
    """The state dict as numpy arrays (copies, so coding never touches the live model)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def with_weights(model: nn.Module, weights: Mapping[str, np.ndarray]) -> nn.Module:
    """Load `weights` (a subset of the state dict) into `model` in place; returns it."""
    state = model.state_dict()
    for name, value in weights.items():
        state[name] = torch.from_numpy(np.ascontiguousarray(value)).to(state[name].dtype)
    model.load_state_dict(state)
    return model.eval()


def fisher_importance(
    model: nn.Module,
    data: Selection,
    names: Sequence[str],
    device: str = "cpu",
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Σ over samples of (∂ loss / ∂ w)², per weight, with per-sample gradients approximated
    by small-batch gradients (the usual empirical-Fisher shortcut).

    The loss is cross-entropy against the labels, or against the model's own arg-max when
    the data has none. Squared gradient ≈ the curvature the loss has along that weight,
    so weighting the quantization error by it approximates the loss increase (OBS/HAWQ).
    """
    model.to(device).eval()  # BatchNorm keeps its running statistics: we measure, not train
    params = dict(model.named_parameters())
    fisher = {k: torch.zeros_like(params[k]) for k in names}
    for x, y in data.batches(batch_size):
        logits = model(torch.from_numpy(x).to(device))
        labelled = y is not None and y.ndim == 1
        target = torch.from_numpy(y).to(device) if labelled else logits.argmax(1)
        model.zero_grad(set_to_none=True)
        F.cross_entropy(logits, target, reduction="sum").backward()
        for k in names:
            grad = params[k].grad
            if grad is not None:
                fisher[k] += grad.detach() ** 2
    model.zero_grad(set_to_none=True)
    return {k: v.cpu().numpy() for k, v in fisher.items()}
