"""CIFAR-100 from its python pickles (cifar-100-python: `train`, `test`, `meta`).

Only the 100 fine labels are used (the 20 coarse super-classes are a different task);
their names come from `meta`, so nothing is hard-coded that the files could contradict.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quantpipe.data.cifar_pickle import cifar_images
from quantpipe.data.safe_pickle import read_pickle_dict
from quantpipe.data.sources import Source, array_source
from quantpipe.errors import DataError

_WHAT = "CIFAR-100 pickle"
POOLS = ("train", "test")  # 50,000 and 10,000 samples in the official files


def is_cifar100_pickle_dir(path: Path) -> bool:
    return path.is_dir() and (path / "meta").is_file() and (path / "test").is_file()


def load_cifar100_pickle(root: Path) -> dict[str, Source]:
    """`test` and, when present, `train`, with fine labels and the names from `meta`."""
    meta = read_pickle_dict(root / "meta", f"{_WHAT} meta file", (b"fine_label_names",))
    names = tuple(_text(n) for n in meta[b"fine_label_names"])
    return {
        pool: _pool(root / pool, names)
        for pool in POOLS
        if pool == "test" or (root / pool).is_file()
    }


def _pool(path: Path, names: tuple[str, ...]) -> Source:
    batch = read_pickle_dict(path, _WHAT, (b"data", b"fine_labels"))
    labels = np.asarray(batch[b"fine_labels"], dtype=np.int64)
    if labels.ndim != 1 or (len(labels) and not 0 <= labels.min() <= labels.max() < len(names)):
        raise DataError(
            f"{path} has fine labels outside 0..{len(names) - 1} (the class count in meta); "
            "are `meta` and this file from the same CIFAR-100 copy?"
        )
    images = np.ascontiguousarray(cifar_images(batch[b"data"], len(labels), path))
    return array_source(images, labels, class_names=names)


def _text(name: object) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)
