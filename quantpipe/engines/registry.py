"""Backends and whether they can run here; an unavailable one says why, never crashes."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import onnxruntime as ort
import torch


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    available: bool
    reason: str = ""


def _ort_cuda() -> Backend:
    ok = "CUDAExecutionProvider" in ort.get_available_providers()
    why = (
        ""
        if ok
        else (
            "this onnxruntime build has no CUDAExecutionProvider "
            "(install quantpipe[gpu] on a CUDA host)"
        )
    )
    return Backend("onnxruntime-cuda", "ONNX Runtime, CUDA execution provider", ok, why)


def _torch_cuda() -> Backend:
    ok = torch.cuda.is_available()
    return Backend("torch-cuda", "PyTorch eager, CUDA", ok, "" if ok else "no CUDA device visible")


def _tensorrt() -> Backend:
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as e:
        return Backend(
            "tensorrt",
            "TensorRT engine (.plan)",
            False,
            f"tensorrt is not installed ({e}); pip install quantpipe[tensorrt] on a GPU host",
        )
    if not torch.cuda.is_available():
        return Backend(
            "tensorrt",
            "TensorRT engine (.plan)",
            False,
            f"tensorrt {trt.__version__} is installed but no CUDA device is visible",
        )
    return Backend("tensorrt", f"TensorRT {trt.__version__} engine (.plan)", True)


def list_backends() -> list[Backend]:
    return [
        Backend("onnxruntime-cpu", "ONNX Runtime, CPU execution provider (default)", True),
        _ort_cuda(),
        Backend("torch-cpu", "PyTorch eager, CPU (reference)", True),
        _torch_cuda(),
        _tensorrt(),
    ]
