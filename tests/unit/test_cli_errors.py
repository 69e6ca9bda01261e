"""Bad input: exit code 2, one line on stderr, and no artifact written or damaged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from quantpipe.cli import main
from quantpipe.models.registry import MODELS


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory holding an earlier good export (fake bytes suffice: never read)."""
    d = tmp_path / "run"
    d.mkdir()
    (d / "model.fp32.onnx").write_bytes(b"earlier good model")
    return d


def _fails_cleanly(
    capsys: pytest.CaptureFixture[str], run_dir: Path, argv: list[str], match: str
) -> None:
    before = _snapshot(run_dir)
    code = main([*argv, "--run-dir", str(run_dir), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert match in err, err
    assert _snapshot(run_dir) == before
    assert not list(run_dir.glob(".*.tmp"))


def test_missing_weights_path(capsys, run_dir, tmp_path) -> None:
    _fails_cleanly(
        capsys,
        run_dir,
        ["export", "--model", "digits-mlp", "--weights", str(tmp_path / "missing.pt")],
        "weights file not found",
    )


def test_weights_of_another_architecture(capsys, run_dir, tmp_path) -> None:
    path = tmp_path / "cnn.pt"
    torch.save(MODELS["fmnist-cnn"].build().state_dict(), path)
    _fails_cleanly(
        capsys,
        run_dir,
        ["export", "--model", "digits-mlp", "--weights", str(path)],
        "unexpected keys (e.g. block1.body1.0.weight",
    )


def test_file_that_is_not_a_checkpoint(capsys, run_dir, tmp_path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    _fails_cleanly(
        capsys,
        run_dir,
        ["export", "--model", "digits-mlp", "--weights", str(path)],
        "is not a readable PyTorch checkpoint",
    )


def test_unknown_model_name(capsys, run_dir) -> None:
    _fails_cleanly(capsys, run_dir, ["export", "--model", "resnet-18"], "did you mean resnet18")


def test_missing_data_path(capsys, run_dir, tmp_path) -> None:
    _fails_cleanly(
        capsys,
        run_dir,
        [
            "eval",
            "--onnx",
            str(run_dir / "model.fp32.onnx"),
            "--data",
            f"cifar10:{tmp_path / 'nowhere'}",
        ],
        "data path not found",
    )


def test_image_folder_without_images(capsys, run_dir, tmp_path) -> None:
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    weights = tmp_path / "w.pt"
    torch.save(MODELS["digits-mlp"].build().state_dict(), weights)
    _fails_cleanly(
        capsys,
        run_dir,
        [
            "export",
            "--model",
            "digits-mlp",
            "--weights",
            str(weights),
            "--data",
            f"imagefolder:{tmp_path / 'imgs'}",
        ],
        "no images",
    )


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.ones((3, 1, 8), np.float32), "expected float (N, C, H, W)"),
        (np.array([{"a": 1}], dtype=object), "pickled objects"),
    ],
)
def test_bad_npz(capsys, run_dir, tmp_path, x, match) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=x)
    weights = tmp_path / "w.pt"
    torch.save(MODELS["digits-mlp"].build().state_dict(), weights)
    _fails_cleanly(
        capsys,
        run_dir,
        ["export", "--model", "digits-mlp", "--weights", str(weights), "--data", f"npz:{path}"],
        match,
    )


def test_npz_with_wrong_sample_shape(capsys, run_dir, tmp_path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((4, 1, 9, 9), np.float32), y=np.arange(4))
    weights = tmp_path / "w.pt"
    torch.save(MODELS["digits-mlp"].build().state_dict(), weights)
    _fails_cleanly(
        capsys,
        run_dir,
        ["export", "--model", "digits-mlp", "--weights", str(weights), "--data", f"npz:{path}"],
        "model expects (1, 8, 8)",
    )


def test_not_an_onnx_file(capsys, run_dir) -> None:
    _fails_cleanly(
        capsys,
        run_dir,
        ["eval", "--onnx", str(run_dir / "model.fp32.onnx"), "--data", "digits"],
        "is not a readable ONNX model",
    )


def test_a_checkpoint_of_another_layout_names_its_keys_and_the_model_it_fits(
    capsys, run_dir, tmp_path
) -> None:
    path = tmp_path / "akamaster.pt"  # the akamaster layout: `linear`, option-A shortcuts
    torch.save(MODELS["cifar10-resnet20"].build().state_dict(), path)
    argv = ["export", "--model", "chenyaofo-cifar10-resnet20", "--weights", str(path)]
    _fails_cleanly(capsys, run_dir, argv, "these weights fit model cifar10-resnet20")
    _fails_cleanly(capsys, run_dir, argv, "unexpected keys (e.g. linear.bias")


def test_fmnist_seg_without_the_fashion_mnist_files(capsys, run_dir, tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    argv = ["train", "--model", "fmnist-seg-fcn", "--data", f"fmnist-seg:{tmp_path / 'empty'}"]
    _fails_cleanly(capsys, run_dir, argv, "lacks train-images-idx3-ubyte.gz")
    _fails_cleanly(capsys, run_dir, argv, "install the Debian package dataset-fashion-mnist")


def test_a_cityscapes_tree_missing_a_gtfine_file(capsys, run_dir, tmp_path) -> None:
    from PIL import Image

    for pool in ("train", "val"):
        images, labels = (tmp_path / "cs" / top / pool / "ulm" for top in ("leftImg8bit", "gtFine"))
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for k in range(2):
            stem = f"ulm_{k:06d}_000019"
            Image.new("RGB", (32, 16)).save(images / f"{stem}_leftImg8bit.png")
            if (pool, k) != ("val", 1):
                Image.new("L", (32, 16)).save(labels / f"{stem}_gtFine_labelIds.png")
    argv = ["train", "--model", "fmnist-seg-fcn", "--data", f"cityscapes:{tmp_path / 'cs'}"]
    _fails_cleanly(capsys, run_dir, argv, "ulm_000001_000019_gtFine_labelIds.png")


@pytest.mark.parametrize("value", ["-0.5", "100", "nan"])
def test_max_drop_out_of_range(capsys, run_dir, value) -> None:
    _fails_cleanly(
        capsys,
        run_dir,
        ["ptq", "--data", "digits", "--max-drop", value],
        f"--max-drop {float(value)!r}: give the largest accepted val accuracy drop",
    )
