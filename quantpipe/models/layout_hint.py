"""Which registry entry a mismatching checkpoint fits: the end of a "weights do not fit"
error. The registry passes its own specs in, so this module needs no import of it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache

import torch

from quantpipe.models.checkpoint import Shapes, differences, shapes_of
from quantpipe.models.spec import ModelSpec


def family(name: str) -> str:
    """The architecture family of a registry name, for choosing hint candidates.

    `chenyaofo-cifar100-mobilenetv2_x0_5`, `mobilenet_v2` and `fmnist-mobilenetv2` are
    all "mobilenet"; `cifar10-resnet20` and `resnet50` are "resnet".
    """
    last = name.rsplit("-", 1)[-1].rsplit(":", 1)[-1].lower()
    match = re.match(r"[a-z]+", last)
    return match.group(0).removesuffix("v") if match else last


@cache
def _spec_shapes(spec: ModelSpec) -> Shapes | None:
    """State-dict shapes of `spec`, built on the meta device (no memory, no init cost);
    None where that build fails (a hint is best-effort)."""
    try:
        with torch.device("meta"):
            return shapes_of(spec.build())
    except Exception:  # any builder error only means "no hint from this entry"
        return None


def layout_hint(state: Shapes, model_name: str, specs: Mapping[str, ModelSpec]) -> str:
    """The end of a mismatch error naming the entries of `specs` that take `state` as is.

    Catches the likely mix-ups: akamaster vs zoo ResNet layouts, CIFAR-10 vs CIFAR-100
    heads, one depth or width for another. Empty when nothing fits. Only entries of the
    same family are built: all 50-odd, even on the meta device, would add seconds to
    every mismatch error.
    """
    fits = [
        name
        for name, spec in specs.items()
        if name != model_name
        and family(name) == family(model_name)
        and (shapes := _spec_shapes(spec)) is not None
        and not any(differences(shapes, state))
    ]
    if not fits:
        return ""
    also = f" (as do {', '.join(fits[1:])})" if len(fits) > 1 else ""
    return f"; these weights fit model {fits[0]}{also}: pass --model {fits[0]}"
