"""CIFAR-10 from the standard python pickle batches (cifar-10-batches-py).

These pickles hold only numpy arrays, bytes and lists; they are read with a restricted
unpickler that refuses every class except numpy's array reconstruction, so a crafted
file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from quantpipe.data.sources import Source, array_source
from quantpipe.errors import DataError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def is_cifar_pickle_dir(path: Path) -> bool:
    return path.is_dir() and (path / "test_batch").is_file()


def load_cifar_pickle(root: Path) -> dict[str, Source]:
    """`train` from data_batch_1..5 (when present) and `test` from test_batch."""
    pools = {"test": _pool([root / "test_batch"])}
    train_files = sorted(root.glob("data_batch_*"))
    if train_files:
        pools["train"] = _pool(train_files)
    return pools


def _pool(files: list[Path]) -> Source:
    images, labels = [], []
    for f in files:
        batch = _read_batch(f)
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    x = np.concatenate(images).transpose(0, 2, 3, 1).copy()
    return array_source(x, np.concatenate(labels), class_names=CLASSES)


def _read_batch(path: Path) -> dict[bytes, Any]:
    try:
        with open(path, "rb") as f:
            batch = _SafeUnpickler(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(f"{path} is not a CIFAR-10 pickle batch ({e})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path} is not a CIFAR-10 pickle batch (no data/labels keys)")
    return batch
