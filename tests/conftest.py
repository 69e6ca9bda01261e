"""Shared fixtures: where ../shared is, tiny models and data written per test."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CIFAR_TAR = SHARED / "data" / "cifar10-test-jpeg.tar"
RESNET20 = SHARED / "weights" / "cifar10-resnet20-12fca82f.th"
RESNET32 = SHARED / "weights" / "cifar10-resnet32-d509ac18.th"
ZOO_RESNET20 = SHARED / "weights" / "chenyaofo-cifar10_resnet20-4118986f.pt"
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

needs_shared = pytest.mark.skipif(
    not (CIFAR_TAR.is_file() and RESNET20.is_file()),
    reason="needs ../shared (CIFAR-10 JPEG tar and ResNet checkpoints) beside the checkout",
)
needs_fmnist = pytest.mark.skipif(
    not (FMNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="needs the Debian package dataset-fashion-mnist (make setup installs it)",
)


def digits_run_with_engines(path: Path, batch_sizes: str) -> Path:
    """A run at `path`: digits-mlp trained briefly, exported, quantized (ptq) and built as
    ONNX Runtime CPU engines (FP32, FP16, INT8) with the given batch profile."""
    from quantpipe.cli import main

    where = ["--data", "digits", "--quiet", "--run-dir", str(path)]
    assert main(["train", "--model", "digits-mlp", *where, "--epochs", "2"]) == 0
    assert main(["export", "--model", "digits-mlp", *where]) == 0
    assert main(["ptq", *where, "--calib-count", "64"]) == 0
    engines = ["engines", "--batch-sizes", batch_sizes, "--quiet", "--run-dir", str(path)]
    assert main(engines) == 0
    return path
