"""THE backend registry: every way quantpipe can run a model, by name.

A new backend is one module (a runner class, a probe, a factory; see onnxruntime_runner.py)
plus one entry in `_ENTRIES`. Everything else (the CLI's --backend, eval, `quantpipe
backends`, run configs) asks this module, through `get_backend` and `all_backends`.
"""

from __future__ import annotations

from quantpipe.engines.backend import Backend, pick
from quantpipe.engines.onnxruntime_runner import (
    ONNXRUNTIME_CPU,
    ONNXRUNTIME_CUDA,
    ONNXRUNTIME_TENSORRT,
)
from quantpipe.engines.tensorrt_runner import TENSORRT
from quantpipe.engines.torch_runner import TORCH_CPU, TORCH_CUDA

_ENTRIES = (
    ONNXRUNTIME_CPU,
    ONNXRUNTIME_CUDA,
    ONNXRUNTIME_TENSORRT,
    TORCH_CPU,
    TORCH_CUDA,
    TENSORRT,
)
_BACKENDS: dict[str, Backend] = {b.name: b for b in _ENTRIES}
DEFAULT_BACKEND = ONNXRUNTIME_CPU.name


def get_backend(name: str) -> Backend:
    """The backend called `name`; an unknown name is a user error naming the close ones."""
    return pick(name, _BACKENDS)


def all_backends() -> list[Backend]:
    """Every registered backend, available here or not, in listing order."""
    return list(_BACKENDS.values())
