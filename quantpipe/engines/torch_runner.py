"""PyTorch runner: the reference the exported engines are compared against."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from quantpipe.engines.base import RunnerContext
from quantpipe.errors import QuantpipeError


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
        if self.device == "cuda" and not torch.cuda.is_available():
            raise QuantpipeError("torch has no CUDA device here: use --device cpu")
        if self.threads:
            torch.set_num_threads(self.threads)
        self.model.to(self.device).eval()

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (x,) = feed.values()
        with torch.inference_mode():
            out = self.model(torch.from_numpy(x).to(self.device))
        return {"output": out.float().cpu().numpy()}

    def deactivate(self) -> None:
        if self.device == "cuda":
            self.model.to("cpu")
            torch.cuda.empty_cache()
