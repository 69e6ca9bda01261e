"""Fashion-MNIST from its idx files (gzip or plain), e.g. as the Debian package installs them.

An idx header declares its array's dims; only that many bytes are read (decompressed), and
never more than `MAX_IDX_BYTES`, so a crafted header or a .gz decompression bomb is refused
before it can fill memory.
"""

from __future__ import annotations

import gzip
import math
import zlib
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
# The largest idx file read: Fashion-MNIST's train images are 47 MB.
MAX_IDX_BYTES = 256 * 2**20


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
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != _UBYTE:
                raise DataError(f"{path} is not an unsigned-byte idx file (bad magic)")
            raw_dims = f.read(4 * head[3])
            dims = [int.from_bytes(raw_dims[i : i + 4], "big") for i in range(0, len(raw_dims), 4)]
            size = _checked_size(path, dims, head[3])
            data = f.read(size + 1)  # one byte more: a file longer than declared is refused
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(data) != size:
        state = "is truncated" if len(data) < size else "holds more than"
        raise DataError(f"{path} {state}: header says {dims} ({size:,} bytes)")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _checked_size(path: Path, dims: list[int], ndim: int) -> int:
    """Bytes the header declares, refused past MAX_IDX_BYTES before any is read."""
    if len(dims) != ndim:
        raise DataError(f"{path} is truncated: its header is cut short")
    size = math.prod(dims)
    if size > MAX_IDX_BYTES:
        raise DataError(
            f"{path} declares dims {dims} = {size:,} bytes, over MAX_IDX_BYTES "
            f"({MAX_IDX_BYTES:,}): refused before reading (a crafted header or a .gz "
            "decompression bomb; Fashion-MNIST's largest file is 47 MB)"
        )
    return size
