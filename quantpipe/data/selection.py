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

# A batch a caller does not size holds at most this much model input, and at most
# MAX_DEFAULT_BATCH samples: 256 images of 3×32×32, 32 of 3×224×224. A fixed 256 at 224×224
# made ONNX Runtime's arena hold 7 GiB during `ptq` (the first conv's output alone is
# 0.8 GB at that batch); past a few dozen samples a bigger batch is no faster on a CPU.
DEFAULT_BATCH_BYTES = 32 * 2**20
MAX_DEFAULT_BATCH = 256


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

    @property
    def sample_bytes(self) -> int:
        """Bytes of one preprocessed sample (float32 C×H×W)."""
        return 4 * int(np.prod(self._shape()))

    @property
    def default_batch_size(self) -> int:
        """Samples per batch when the caller does not choose (see DEFAULT_BATCH_BYTES): a
        power of two, so batches match the engine profiles' usual sizes."""
        fits = max(1, min(MAX_DEFAULT_BATCH, DEFAULT_BATCH_BYTES // max(self.sample_bytes, 1)))
        return 1 << (fits.bit_length() - 1)

    def batches(
        self, batch_size: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Yield (inputs N×C×H×W float32, labels or None) in split order, `batch_size` at a
        time (default: `default_batch_size`).

        Labels are read batch by batch, so masks decoded on demand never all sit in memory.
        """
        batch_size = batch_size or self.default_batch_size
        for start in range(0, len(self.indices), batch_size):
            idx = self.indices[start : start + batch_size]
            x = to_model_input(self.source.read(idx), self.source, self.preprocessing)
            yield x, self._batch_labels(idx, start)

    def take(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The samples at `positions` (places in this selection, any order), as `batches`
        yields them: for training loops that draw shuffled batches without holding the
        whole split in memory."""
        idx = self.indices[positions]
        x = to_model_input(self.source.read(idx), self.source, self.preprocessing)
        if self._assigned is not None:
            return x, self._assigned[positions]
        labels = self.source.labels
        return x, None if labels is None else labels[idx]

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
