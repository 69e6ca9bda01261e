"""Segmentation masks decoded on demand: a `sources.LabelArray` over mask files.

Cityscapes' 2,975 training masks take 1.5 GB at 512×1024 and about a minute to
decode; every stage opens the data set, and most read only a few hundred samples.
So masks are decoded when indexed, batch by batch, and nothing is kept.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from quantpipe.errors import DataError


class LazyMasks:
    """`count` masks of one size, (H, W) uint8 each; `masks[indices]` → (n, H, W) uint8.

    Args:
        decode: returns mask `i`; `name(i)` names its file in errors.
        size: (H, W) every mask must have (the first one's, decoded once to learn it).
    """

    ndim = 3

    def __init__(
        self,
        count: int,
        decode: Callable[[int], np.ndarray],
        name: Callable[[int], str],
        size: tuple[int, int],
    ) -> None:
        self._count = count
        self._decode = decode
        self._name = name
        self._size = size

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._count, *self._size)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise TypeError(f"masks are indexed by a 1-D integer array, not {indices!r}")
        out = np.empty((len(idx), *self._size), dtype=np.uint8)
        for row, i in enumerate(idx.tolist()):
            mask = self._decode(i)
            if mask.shape != self._size:
                raise DataError(
                    f"mask {self._name(i)} is {mask.shape[1]}×{mask.shape[0]} after scaling, "
                    f"the pool's first is {self._size[1]}×{self._size[0]}; give all images "
                    "one size"
                )
            out[row] = mask
        return out
