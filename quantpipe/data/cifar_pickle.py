"""CIFAR-10 from the standard python pickle batches (cifar-10-batches-py).

They are read with the restricted unpickler of `safe_pickle`, so a crafted file cannot
run code. `cifar_images` is shared with CIFAR-100, whose pickles store images the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from quantpipe.data.safe_pickle import read_pickle_dict
from quantpipe.data.sources import Source, array_source
from quantpipe.errors import DataError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_PIXELS = 3 * 32 * 32


def is_cifar_pickle_dir(path: Path) -> bool:
    return path.is_dir() and (path / "test_batch").is_file()


def load_cifar_pickle(root: Path) -> dict[str, Source]:
    """`train` from data_batch_1..5 (when present) and `test` from test_batch."""
    pools = {"test": _pool([root / "test_batch"])}
    train_files = sorted(root.glob("data_batch_*"))
    if train_files:
        pools["train"] = _pool(train_files)
    return pools


def cifar_images(data: Any, count: int, path: Path) -> np.ndarray:
    """The b"data" entry (N×3072: all red, then green, then blue rows) as N×32×32×3 uint8."""
    flat = np.asarray(data, dtype=np.uint8)
    if flat.shape != (count, _PIXELS):
        raise DataError(
            f"{path} holds data of shape {flat.shape} for {count} labels; "
            f"expected ({count}, {_PIXELS}) (is it a CIFAR pickle?)"
        )
    return flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _pool(files: list[Path]) -> Source:
    images, labels = [], []
    for f in files:
        batch = read_pickle_dict(f, "CIFAR-10 pickle batch", (b"data", b"labels"))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
        images.append(cifar_images(batch[b"data"], len(labels[-1]), f))
    x = np.ascontiguousarray(np.concatenate(images))
    return array_source(x, np.concatenate(labels), class_names=CLASSES)
