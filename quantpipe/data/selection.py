"""A split of a data set, preprocessed for one model, served in batches."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantpipe.data.preprocess import to_model_input
from quantpipe.data.registry import Dataset
from quantpipe.data.sources import Source
from quantpipe.data.splits import split_indices
from quantpipe.errors import DataError
from quantpipe.models.spec import Preprocessing


@dataclass(frozen=True)
class DataInfo:
    """What identifies a selection's samples, as results record it (`Selection.provenance`
    is the same as a plain dict, for cache keys)."""

    dataset: str
    path: str | None
    split: str
    pool: str
    count: int
    seed: int
    preprocessing: dict[str, Any]
    truth: str | None = None  # set when the labels are a reference model's predictions

    def where(self) -> str:
        return self.path or "built-in"


@dataclass(frozen=True)
class Selection:
    """The samples of one split (optionally its first `count`), for one model's inputs.

    `truth` says what the labels are: the data set's own (`labels`), or, for data without
    labels, a reference model's predictions attached by `with_labels` (then it names that
    model, and every accuracy measured on this selection is agreement with it).
    """

    dataset: Dataset
    split: str
    seed: int
    pool: str
    indices: np.ndarray
    preprocessing: Preprocessing
    truth: str = "labels"
    _assigned: np.ndarray | None = None  # labels given by `with_labels`, in split order

    @property
    def source(self) -> Source:
        return self.dataset.pools[self.pool]

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labelled(self) -> bool:
        """Whether there are labels, without reading them (masks may be decoded on demand)."""
        return self._assigned is not None or self.source.labels is not None

    @property
    def labels(self) -> np.ndarray | None:
        """All labels in split order; for masks decoded on demand this decodes every one."""
        if self._assigned is not None:
            return self._assigned
        labels = self.source.labels
        return None if labels is None else labels[self.indices]

    def with_labels(self, labels: np.ndarray, truth: str) -> Selection:
        """This selection with `labels` (one per sample, in split order) named `truth`."""
        if len(labels) != len(self):
            raise ValueError(f"{len(labels)} labels for {len(self)} samples")
        return dataclasses.replace(self, truth=truth, _assigned=labels)

    def provenance(self) -> dict[str, Any]:
        """What identifies these samples: part of every cache key and manifest entry."""
        described = {
            **self.dataset.provenance(),
            "split": self.split,
            "pool": self.pool,
            "count": len(self),
            "seed": self.seed,
            "preprocessing": self.preprocessing.to_dict(),
        }
        # Only assigned labels are named: cache keys of labelled data stay as they were.
        return described if self._assigned is None else {**described, "truth": self.truth}

    def info(self) -> DataInfo:
        return DataInfo(**self.provenance())

    def head(self, count: int) -> Selection:
        """The first `count` samples (the split order is class-interleaved, so balanced)."""
        assigned = None if self._assigned is None else self._assigned[:count]
        return dataclasses.replace(self, indices=self.indices[:count], _assigned=assigned)

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Yield (inputs N×C×H×W float32, labels or None) in split order.

        Labels are read batch by batch, so masks decoded on demand never all sit in memory.
        """
        for start in range(0, len(self.indices), batch_size):
            idx = self.indices[start : start + batch_size]
            x = to_model_input(self.source.read(idx), self.source, self.preprocessing)
            yield x, self._batch_labels(idx, start)

    def _batch_labels(self, idx: np.ndarray, start: int) -> np.ndarray | None:
        if self._assigned is not None:
            return self._assigned[start : start + len(idx)]
        labels = self.source.labels
        return None if labels is None else labels[idx]

    def arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """All samples at once (for small selections, e.g. training sets of tiny models)."""
        xs, ys = zip(*self.batches(1024), strict=True) if len(self) else ((), ())
        x = np.concatenate(xs) if xs else np.empty((0, *self._shape()), np.float32)
        y = None if not self.labelled or not ys else np.concatenate(ys)
        return x, y

    def _shape(self) -> tuple[int, ...]:
        return (self.preprocessing.channels, *self.preprocessing.size)


def select(
    dataset: Dataset,
    split: str,
    preprocessing: Preprocessing,
    seed: int = 0,
    count: int | None = None,
) -> Selection:
    """Pick a named split (first `count` samples of it, if given) for a model's preprocessing."""
    pool, indices = split_indices(dataset.pools, split, seed)
    if count is not None and count < 1:
        raise DataError(f"sample count must be at least 1, got {count}")
    if len(indices) == 0:
        raise DataError(f"split {split!r} of {dataset.kind} is empty ({dataset.path})")
    selection = Selection(dataset, split, seed, pool, indices, preprocessing)
    return selection if count is None else selection.head(count)
