"""Loading user checkpoints safely (`weights_only=True`) with errors a user can act on."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantpipe.errors import ModelError

_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
_BN_COUNTER = "num_batches_tracked"
_HUB_WORDS = ("default", "imagenet", "imagenet1k_v1", "imagenet1k_v2", "pretrained", "hub")


def check_weights_argument(weights: str) -> Path:
    """Reject hub-style weight requests and missing files; return the checkpoint path."""
    if weights.lower() in _HUB_WORDS or "://" in weights:
        raise ModelError(
            f"--weights {weights!r} asks for downloaded weights; quantpipe never downloads at "
            "run time: download the checkpoint yourself and pass its file path"
        )
    path = Path(weights)
    if not path.is_file():
        raise ModelError(f"weights file not found: {weights} (check the path given to --weights)")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a `torch.save` file: plain, or nested under a usual key.

    DataParallel's `module.` prefix is stripped.
    """
    obj = _torch_load(path)
    for key in _NESTED_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(
            f"{path} holds no state dict (expected a dict of tensors, or one under "
            f"{'/'.join(_NESTED_KEYS)}): save it with torch.save(model.state_dict(), path)"
        )
    return {_strip_prefix(k): v for k, v in obj.items()}


def load_weights(model: nn.Module, weights: str, model_name: str) -> None:
    """Load `weights` into `model`; any mismatch (bar BatchNorm step counters) names a few keys."""
    path = check_weights_argument(weights)
    state = read_state_dict(path)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected, wrong_shape = _differences(_shapes_of(model), shapes)
    if missing or unexpected or wrong_shape:
        message = _mismatch_message(path, model_name, missing, unexpected, wrong_shape)
        hint = _layout_hint(shapes, model_name) or (
            "; check that --model names the architecture these weights were trained for"
        )
        raise ModelError(message + hint)
    model.load_state_dict(state, strict=False)


_Shapes = dict[str, tuple[int, ...]]


def _shapes_of(model: nn.Module) -> _Shapes:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _differences(expected: _Shapes, state: _Shapes) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong-shape) keys of `state` against a model's `expected`."""
    # Checkpoints from before PyTorch 0.4.1 lack BatchNorm's step counter; it is unused
    # in eval mode, so its absence is harmless.
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith(_BN_COUNTER))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [k for k in expected if k in state and state[k] != expected[k]]
    return missing, unexpected, wrong_shape


def _family(name: str) -> str:
    """The architecture family of a registry name, for choosing hint candidates.

    `chenyaofo-cifar100-mobilenetv2_x0_5`, `mobilenet_v2` and `fmnist-mobilenetv2` are
    all "mobilenet"; `cifar10-resnet20` and `resnet50` are "resnet".
    """
    last = name.rsplit("-", 1)[-1].rsplit(":", 1)[-1].lower()
    match = re.match(r"[a-z]+", last)
    return match.group(0).removesuffix("v") if match else last


@cache
def _registry_shapes(name: str) -> _Shapes | None:
    """State-dict shapes of registry entry `name`, built on the meta device (no memory,
    no init cost); None where that build fails (a hint is best-effort)."""
    from quantpipe.models.registry import MODELS  # the registry imports this module

    try:
        with torch.device("meta"):
            return _shapes_of(MODELS[name].build())
    except Exception:  # any builder error only means "no hint from this entry"
        return None


def _layout_hint(state: _Shapes, model_name: str) -> str:
    """The end of a mismatch error naming the registry entries that take `state` as is.

    Catches the likely mix-ups: akamaster vs zoo ResNet layouts, CIFAR-10 vs CIFAR-100
    heads, one depth or width for another. Empty when nothing fits. Only entries of the
    same family are built: all 50-odd, even on the meta device, would add seconds to
    every mismatch error.
    """
    from quantpipe.models.registry import MODELS

    family = _family(model_name)
    fits = [
        name
        for name in MODELS
        if name != model_name
        and _family(name) == family
        and (shapes := _registry_shapes(name)) is not None
        and not any(_differences(shapes, state))
    ]
    if not fits:
        return ""
    also = f" (as do {', '.join(fits[1:])})" if len(fits) > 1 else ""
    return f"; these weights fit model {fits[0]}{also}: pass --model {fits[0]}"


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types (UnpicklingError, IndexError, ...)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"{path} is not a readable PyTorch checkpoint ({first_line[:160]}); pass a file "
            "written by torch.save with tensors only"
        ) from None


def _strip_prefix(key: str) -> str:
    return key[len("module.") :] if key.startswith("module.") else key


def _mismatch_message(
    path: Path, name: str, missing: list[str], unexpected: list[str], wrong_shape: list[str]
) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if wrong_shape:
        parts.append(
            f"{len(wrong_shape)} keys of another shape (e.g. {', '.join(wrong_shape[:3])})"
        )
    return f"weights {path} do not fit model {name}: {'; '.join(parts)}"
