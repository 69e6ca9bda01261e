"""User models given as `path/to/file.py:factory`.

The factory returns an `nn.Module`. The input shape (C, H, W) comes from
`--input-shape`, else from an `input_shape` attribute on the returned module or on the
factory itself. Optional `mean`/`std` attributes set the normalisation (default: none,
pixels in [0, 1]). Task and class count are read off one forward pass on zeros.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantpipe.errors import ModelError
from quantpipe.models.spec import ModelSpec, Preprocessing


def is_user_model_ref(name: str) -> bool:
    return ".py:" in name


def user_model_spec(ref: str, input_shape: tuple[int, ...] | None) -> ModelSpec:
    """Build the spec of the model that `ref` (`file.py:factory`) makes."""
    factory = _load_factory(ref)
    module = _call_factory(factory, ref)
    shape = input_shape or _declared_shape(module, factory, ref)
    channels = shape[0]
    mean = tuple(getattr(module, "mean", getattr(factory, "mean", (0.0,) * channels)))
    std = tuple(getattr(module, "std", getattr(factory, "std", (1.0,) * channels)))
    task, num_classes = _probe_output(module, shape, ref)
    return ModelSpec(
        name=ref,
        build=lambda: _call_factory(factory, ref),
        preprocessing=Preprocessing(channels, (shape[1], shape[2]), mean, std),
        task=task,
        num_classes=num_classes,
        weights="optional",
        description=f"user model from {ref}",
    )


def _load_factory(ref: str) -> Any:
    file_part, _, func_name = ref.rpartition(":")
    path = Path(file_part)
    if not path.is_file():
        raise ModelError(f"model file not found: {file_part} (from --model {ref})")
    spec = importlib.util.spec_from_file_location(f"quantpipe_user_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ModelError(f"cannot import {file_part} as a Python module (from --model {ref})")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise ModelError(f"importing {file_part} failed: {type(e).__name__}: {e}") from None
    if not callable(getattr(module, func_name, None)):
        raise ModelError(f"{file_part} has no callable named {func_name!r} (from --model {ref})")
    return getattr(module, func_name)


def _call_factory(factory: Any, ref: str) -> nn.Module:
    model = factory()
    if not isinstance(model, nn.Module):
        raise ModelError(f"{ref} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def _declared_shape(module: nn.Module, factory: Any, ref: str) -> tuple[int, ...]:
    shape = getattr(module, "input_shape", None) or getattr(factory, "input_shape", None)
    if shape is None:
        raise ModelError(
            f"no input shape for {ref}: pass --input-shape C,H,W (e.g. 3,32,32) or give the "
            "module an input_shape attribute"
        )
    return parse_input_shape(shape)


def parse_input_shape(value: Any) -> tuple[int, ...]:
    """Accept "3,32,32" or a sequence of three positive ints."""
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        shape = tuple(int(v) for v in items)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ModelError(f"input shape {value!r} is not C,H,W with three positive integers")
    return shape


def _probe_output(module: nn.Module, shape: tuple[int, ...], ref: str) -> tuple[Any, int]:
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, *shape))
    except Exception as e:
        raise ModelError(f"{ref} fails on an input of shape {(1, *shape)}: {e}") from None
    if not isinstance(out, torch.Tensor) or out.ndim not in (2, 4):
        raise ModelError(
            f"{ref} must return a tensor of logits (N, classes) or (N, classes, H, W); "
            f"got {type(out).__name__} {getattr(out, 'shape', '')}"
        )
    return ("classification" if out.ndim == 2 else "segmentation"), int(out.shape[1])
