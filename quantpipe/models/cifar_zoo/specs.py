"""Registry entries of the CIFAR zoo (placeholder until the layouts land)."""

from __future__ import annotations

from quantpipe.models.spec import ModelSpec


def zoo_specs() -> list[ModelSpec]:
    return []
