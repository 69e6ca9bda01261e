"""GPU runners against the CPU reference; skipped (with the reason) where CUDA is absent."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from quantpipe.engines.onnxruntime_runner import OnnxRuntimeRunner, OrtConfig
from quantpipe.engines.torch_runner import TorchRunner
from quantpipe.export.onnx_export import ExportOptions, export_onnx
from quantpipe.models.registry import MODELS

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
needs_ort_cuda = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="onnxruntime has no CUDAExecutionProvider (install quantpipe[gpu] on a CUDA host)",
)


def _batch() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((16, 3, 224, 224), dtype=np.float32)


@needs_cuda
def test_torch_cuda_runner_matches_cpu() -> None:
    torch.manual_seed(0)
    net = MODELS["resnet18"].build().eval()
    x = _batch()
    with TorchRunner(net, "cpu") as cpu:
        ref = cpu.infer({"input": x})["output"]
    with TorchRunner(net, "cuda") as gpu:
        out = gpu.infer({"input": x})["output"]
    # TF32 convolutions on Ampere+ change the low bits; arg-max must not move.
    np.testing.assert_allclose(out, ref, rtol=0, atol=5e-2 * np.abs(ref).max())
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.9


@needs_ort_cuda
def test_onnxruntime_cuda_runner_matches_cpu(tmp_path) -> None:
    torch.manual_seed(0)
    spec = MODELS["resnet18"]
    path = tmp_path / "m.onnx"
    import onnx

    onnx.save(export_onnx(spec.build().eval(), spec, ExportOptions()), str(path))
    x = _batch()
    with (
        OnnxRuntimeRunner(path, OrtConfig("cpu")) as cpu,
        OnnxRuntimeRunner(path, OrtConfig("cuda")) as gpu,
    ):
        ref, out = cpu.infer({"input": x})["output"], gpu.infer({"input": x})["output"]
    np.testing.assert_allclose(out, ref, rtol=0, atol=5e-2 * np.abs(ref).max())
