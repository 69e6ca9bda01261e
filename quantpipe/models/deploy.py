"""Turning a train-time model into its deploy form (e.g. RepVGG re-parameterization), with
a numerical check that the two compute the same function."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from quantpipe.errors import ModelError

if TYPE_CHECKING:
    from torch import nn

    from quantpipe.models.spec import ModelSpec

# Max |logit| difference allowed between the train-time and the fused model on random
# inputs: float32 re-association of BatchNorm folding stays far below it on every zoo model.
DEPLOY_TOLERANCE = 1e-4
_CHECK_BATCH = 4
_CHECK_SEED = 0


def to_deploy_form(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """`spec.deploy(model)` checked against `model` on seeded random inputs (eval mode)."""
    if spec.deploy is None:
        return model
    model.eval()
    generator = torch.Generator().manual_seed(_CHECK_SEED)
    x = torch.randn((_CHECK_BATCH, *spec.input_shape), generator=generator)
    with torch.no_grad():
        before = model(x)
        deployed = spec.deploy(model).eval()
        after = deployed(x)
    diff = float((before - after).abs().max())
    if not diff <= DEPLOY_TOLERANCE:  # also catches NaN
        raise ModelError(
            f"model {spec.name}: the deploy form ({spec.deploy_form}) differs from the "
            f"train-time model by {diff:.3g} (max |logit| difference, limit "
            f"{DEPLOY_TOLERANCE:g}); the weights may be corrupt: check --weights"
        )
    return deployed
