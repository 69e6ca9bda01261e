"""PyTorch on CUDA: FP16 and CUDA graphs against FP32 eager; skipped where CUDA is absent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantpipe.engines.backend import RunnerOptions
from quantpipe.engines.registry import get_backend
from quantpipe.models.registry import MODELS

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")


def _outputs(net: torch.nn.Module, x: np.ndarray, **options: object) -> tuple[np.ndarray, float]:
    runner = get_backend("torch-cuda").runner(net, RunnerOptions(**options))  # type: ignore[arg-type]
    with runner:
        runner.infer({"input": x})  # the first call captures the graph / picks kernels
        out = runner.infer({"input": x})["output"]
        return out, runner.last_device_ms  # type: ignore[attr-defined]


@needs_cuda
def test_fp16_and_cuda_graphs_agree_with_fp32_eager() -> None:
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((8, 3, 224, 224), dtype=np.float32)
    ref, ref_ms = _outputs(MODELS["resnet18"].build().eval(), x)
    graphs, _ = _outputs(MODELS["resnet18"].build().eval(), x, cuda_graphs=True)
    half, half_ms = _outputs(MODELS["resnet18"].build().eval(), x, precision="fp16")
    assert ref_ms > 0 and half_ms > 0  # device time from CUDA events
    scale = np.abs(ref).max()
    np.testing.assert_allclose(graphs, ref, rtol=0, atol=1e-3 * scale)  # same kernels, replayed
    assert np.abs(half - ref).max() <= 2e-2 * scale
    assert (half.argmax(1) == ref.argmax(1)).mean() >= 0.75
