"""Fashion-MNIST from its idx files (gzip or plain), e.g. as the Debian package installs them."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from quantpipe.data.sources import Source, array_source
from quantpipe.errors import DataError

DEFAULT_PATH = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {"train": "train", "test": "t10k"}
# idx magic: two zero bytes, a type code (0x08 = unsigned byte), and the number of axes.
_UBYTE = 0x08


def load_fashion_mnist(root: Path) -> dict[str, Source]:
    """Both official pools, `train` (60,000) and `test` (10,000)."""
    return {
        pool: array_source(images, labels, class_names=CLASSES)
        for pool, (images, labels) in read_fashion_mnist(root, "fashion-mnist").items()
    }


def read_fashion_mnist(root: Path, spec: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Pool name → (N×28×28 uint8 images, N int64 labels); `spec` is the data set name
    that errors tell the user to pass a path to (fmnist-seg builds on these files too)."""
    if not root.is_dir():
        raise DataError(
            f"Fashion-MNIST directory not found: {root}; install the Debian package "
            f"dataset-fashion-mnist (make setup does) or pass {spec}:PATH"
        )
    pools = {}
    for pool, stem in _FILES.items():
        images = read_idx(_find(root, f"{stem}-images-idx3-ubyte"))
        labels = read_idx(_find(root, f"{stem}-labels-idx1-ubyte")).astype(np.int64)
        if images.ndim != 3 or len(images) != len(labels):
            raise DataError(
                f"Fashion-MNIST {pool} files in {root} disagree: "
                f"{images.shape} images, {labels.shape} labels"
            )
        pools[pool] = (images, labels)
    return pools


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"{root} lacks {stem}.gz (expected the four Fashion-MNIST idx files): install the "
        "Debian package dataset-fashion-mnist (make setup does) or pass the directory that "
        "holds them"
    )


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (the MNIST family's format) into a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _UBYTE:
        raise DataError(f"{path} is not an unsigned-byte idx file (bad magic)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, file has {len(data)} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)
