"""PyTorch on a CUDA GPU as the GPU reference where TensorRT is absent: FP32 or FP16, eager
or replayed as CUDA graphs, with the device time of each inference from CUDA events.

On a GPU host without TensorRT (the machines lent here have PyTorch and CUDA only) this is
the GPU path that can actually be measured. Latency as trtexec defines it is the host's
(input copy, compute, output copy); `last_device_ms` is the compute alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quantpipe.engines.base import RunnerContext

if TYPE_CHECKING:
    import numpy as np
    from torch import nn


class TorchCudaRunner(RunnerContext):
    def __init__(self, model: nn.Module, precision: str = "fp32", graphs: bool = False) -> None:
        self.model, self.precision, self.graphs = model, precision, graphs
        self.name = f"torch-cuda-{precision}{'-graphs' if graphs else ''}"
        self.last_device_ms: float | None = None
        self._captured: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}

    @property
    def input_names(self) -> list[str]:
        return ["input"]

    def activate(self) -> None:
        import torch

        torch.backends.cudnn.benchmark = True  # the fastest kernels for the shapes timed
        self.model.to("cuda", dtype=self._dtype()).eval()

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        (x,) = feed.values()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.inference_mode():
            gpu_in = torch.from_numpy(x).to("cuda", dtype=self._dtype(), non_blocking=True)
            start.record()
            out = self._replay(gpu_in) if self.graphs else self.model(gpu_in)
            end.record()
            host = out.float().cpu().numpy()  # waits for the GPU
        self.last_device_ms = start.elapsed_time(end)
        return {"output": host}

    def deactivate(self) -> None:
        import torch

        self._captured.clear()
        self.model.to("cpu", dtype=torch.float32)
        torch.cuda.empty_cache()

    def _dtype(self) -> Any:
        import torch

        return torch.float16 if self.precision == "fp16" else torch.float32

    def _replay(self, x: Any) -> Any:
        """Run `x` through a CUDA graph captured once per input shape (static buffers)."""
        shape = tuple(x.shape)
        if shape not in self._captured:
            self._captured[shape] = _capture(self.model, x)
        graph, static_in, static_out = self._captured[shape]
        static_in.copy_(x)
        graph.replay()
        return static_out


def _capture(model: nn.Module, example: Any) -> tuple[Any, Any, Any]:
    """A CUDA graph of `model` on buffers shaped like `example`, warmed up on a side stream
    first, as PyTorch's CUDA graph documentation prescribes."""
    import torch

    static_in = example.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            model(static_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = model(static_in)
    return graph, static_in, static_out
