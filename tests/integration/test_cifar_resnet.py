"""The ../shared checkpoints through export and eval: the acceptance figures of the spine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantpipe.cli import main
from tests.conftest import CIFAR_TAR, RESNET20, needs_shared

pytestmark = needs_shared
EXPECTED_TOP1 = 81.03  # ../shared/README.md: ResNet-20, all 10,000 JPEG test images


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("r20") / "run"
    code = main(
        [
            "export",
            "--model",
            "cifar10-resnet20",
            "--weights",
            str(RESNET20),
            "--data",
            f"cifar10:{CIFAR_TAR}",
            "--run-dir",
            str(run_dir),
            "--quiet",
        ]
    )
    assert code == 0
    return run_dir


def _stage(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())["stages"][name]


def test_export_parity_with_pytorch(exported: Path) -> None:
    parity = _stage(exported, "export")["results"]["parity"]
    assert parity["samples"] == 1000
    assert parity["max_abs_diff"] <= 1e-4
    assert parity["top1_agreement"] >= 99.9
    assert _stage(exported, "export")["results"]["graph"]["batchnorm_nodes"] == 0


@pytest.mark.parametrize("backend", ["onnxruntime-cpu", "torch-cpu"])
def test_top1_on_all_10000_jpeg_images(exported: Path, backend: str) -> None:
    argv = [
        "eval",
        "--model",
        "cifar10-resnet20",
        "--weights",
        str(RESNET20),
        "--backend",
        backend,
        "--data",
        f"cifar10:{CIFAR_TAR}",
        "--split",
        "all",
        "--run-dir",
        str(exported),
        "--quiet",
    ]
    assert main(argv) == 0
    label = "fp32" if backend.startswith("onnx") else "pytorch"
    result = json.loads((exported / "eval" / f"{label}.{backend}.json").read_text())
    assert result["samples"] == 10_000
    assert result["top1"] == pytest.approx(EXPECTED_TOP1, abs=0.05)
