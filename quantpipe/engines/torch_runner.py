"""PyTorch eager: the reference the exported models are compared against; the torch-cpu
and torch-cuda backends. torch is imported only when a runner or probe needs it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quantpipe.engines.backend import Availability, Backend, RunnerOptions
from quantpipe.engines.backend import unavailable_because_missing as missing
from quantpipe.engines.base import RunnerContext
from quantpipe.errors import QuantpipeError

if TYPE_CHECKING:
    import numpy as np
    from torch import nn


class TorchRunner(RunnerContext):
    """Runs an `nn.Module` in eval mode on CPU or CUDA; one input named `input`."""

    def __init__(self, model: nn.Module, device: str = "cpu", threads: int = 0) -> None:
        self.model = model
        self.device = device
        self.threads = threads
        self.name = f"torch-{device}"

    @property
    def input_names(self) -> list[str]:
        return ["input"]

    def activate(self) -> None:
        set_torch_threads(self.threads)
        self.model.to(self.device).eval()

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        (x,) = feed.values()
        with torch.inference_mode():
            out = self.model(torch.from_numpy(x).to(self.device))
        return {"output": out.float().cpu().numpy()}

    def deactivate(self) -> None:
        if self.device == "cuda":
            import torch

            self.model.to("cpu")
            torch.cuda.empty_cache()


def set_torch_threads(threads: int) -> None:
    """Use `threads` CPU threads in PyTorch (0 keeps its default, one per core)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


TORCH_DEVICES = ("auto", "cpu", "cuda")


def check_device_name(requested: str) -> None:
    """A --device value is one of TORCH_DEVICES (checked before torch is imported)."""
    if requested not in TORCH_DEVICES:
        raise QuantpipeError(f"--device {requested!r}: use one of {', '.join(TORCH_DEVICES)}")


def torch_device(requested: str) -> str:
    """`auto` → cuda when PyTorch sees a GPU, else cpu; `cuda` without one is an error."""
    import torch

    check_device_name(requested)
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise QuantpipeError(
            f"--device cuda: torch {torch.__version__} sees no CUDA device; use --device cpu"
        )
    return requested


def _probe(device: str) -> Availability:
    try:
        import torch
    except Exception as e:  # a broken install raises more than ImportError
        return missing("torch", e, "pip install quantpipe (torch is a dependency)")
    if device == "cuda" and not torch.cuda.is_available():
        return Availability(False, f"torch {torch.__version__} sees no CUDA device")
    return Availability(True, f"torch {torch.__version__}, {device}")


def _factory(device: str) -> Any:
    def make(model: nn.Module, options: RunnerOptions) -> RunnerContext:
        if device == "cuda":  # FP16, CUDA graphs and device timing live there
            from quantpipe.engines.torch_cuda import TorchCudaRunner

            return TorchCudaRunner(model, options.precision, options.cuda_graphs)
        return TorchRunner(model, device, options.threads)

    return make


TORCH_CPU = Backend(
    "torch-cpu", "PyTorch eager, CPU (reference)", "torch", lambda: _probe("cpu"), _factory("cpu")
)
TORCH_CUDA = Backend(
    "torch-cuda", "PyTorch eager, CUDA", "torch", lambda: _probe("cuda"), _factory("cuda")
)
