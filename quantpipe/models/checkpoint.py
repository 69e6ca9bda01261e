"""Loading user checkpoints safely (`weights_only=True`) with errors a user can act on, and
writing quantpipe's own (`checkpoint_bytes`)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantpipe.errors import ModelError

_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
_BN_COUNTER = "num_batches_tracked"
_HUB_WORDS = ("default", "imagenet", "imagenet1k_v1", "imagenet1k_v2", "pretrained", "hub")


def checkpoint_bytes(obj: Any) -> bytes:
    """`torch.save(obj)` as bytes, for the caller to write (atomically).

    Not `torch.save(obj, path)`: torch names the archive inside after the file name (a
    random temporary one), which would make identical weights hash differently run to run,
    and a write that fails for want of room surfaces as torch's RuntimeError rather than the
    OSError (ENOSPC, EFBIG) the CLI reports in one line.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


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


def load_weights(
    model: nn.Module,
    weights: str,
    model_name: str,
    layout_hint: Callable[[Shapes], str] | None = None,
) -> None:
    """Load `weights` into `model`; any mismatch (bar BatchNorm step counters) names a few
    keys, and `layout_hint` (the checkpoint's shapes → the end of the message) may name
    the model they fit."""
    path = check_weights_argument(weights)
    state = read_state_dict(path)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected, wrong_shape = differences(shapes_of(model), shapes)
    if missing or unexpected or wrong_shape:
        message = _mismatch_message(path, model_name, missing, unexpected, wrong_shape)
        hint = (layout_hint(shapes) if layout_hint else "") or (
            "; check that --model names the architecture these weights were trained for"
        )
        raise ModelError(message + hint)
    model.load_state_dict(state, strict=False)


Shapes = dict[str, tuple[int, ...]]


def shapes_of(model: nn.Module) -> Shapes:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def differences(expected: Shapes, state: Shapes) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong-shape) keys of `state` against a model's `expected`."""
    # Checkpoints from before PyTorch 0.4.1 lack BatchNorm's step counter; it is unused
    # in eval mode, so its absence is harmless.
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith(_BN_COUNTER))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [k for k in expected if k in state and state[k] != expected[k]]
    return missing, unexpected, wrong_shape


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
