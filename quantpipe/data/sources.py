"""Sample sources: indexable collections of raw samples with optional labels.

A source hands out *raw* samples (images as H×W×C arrays with a known maximum value,
or ready model tensors); `preprocess.py` turns them into model inputs. Keeping the
two apart lets one data set serve models with different normalisation and sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias

import numpy as np

SampleKind = Literal["image", "tensor"]


class LabelArray(Protocol):
    """Labels that are decoded on demand (e.g. Cityscapes masks: 1.5 GB for the train pool
    at 512×1024 if held in memory). `labels[indices]` returns a real array."""

    @property
    def ndim(self) -> int: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, indices: np.ndarray) -> np.ndarray: ...


# Class indices (N,), masks (N, H, W), masks decoded on demand, or no labels.
Labels: TypeAlias = np.ndarray | LabelArray | None


@dataclass(frozen=True)
class Source:
    """One pool of samples (e.g. the official test set).

    Attributes:
        kind: "image" for raw H×W×C pixels in [0, max_value]; "tensor" for samples that
            are already model inputs (C×H×W float32) and skip preprocessing.
        labels: class index per sample, (N, H, W) masks for segmentation (in memory, or
            a LabelArray that decodes them on demand), or None.
        max_value: the value of full intensity (255 for uint8 images).
        read: returns the raw samples at the given indices, as one stacked array when
            all have the same shape, else a list.
        count: number of samples.
    """

    kind: SampleKind
    count: int
    read: Callable[[np.ndarray], np.ndarray | list[np.ndarray]]
    labels: Labels
    max_value: float = 255.0
    class_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return self.count


def array_source(
    samples: np.ndarray,
    labels: np.ndarray | None,
    kind: SampleKind = "image",
    max_value: float = 255.0,
    class_names: Sequence[str] = (),
) -> Source:
    """A source over an in-memory array (N, ...)."""
    return Source(
        kind=kind,
        count=len(samples),
        read=lambda idx: samples[idx],
        labels=labels,
        max_value=max_value,
        class_names=tuple(class_names),
    )


def lazy_image_source(
    count: int,
    decode: Callable[[int], np.ndarray],
    labels: Labels,
    class_names: Sequence[str],
    cache: bool,
) -> Source:
    """A source that decodes image `i` on demand; `cache` keeps decoded small images."""
    decoded: dict[int, np.ndarray] = {}

    def read(idx: np.ndarray) -> np.ndarray | list[np.ndarray]:
        images = []
        for i in idx.tolist():
            img = decoded.get(i)
            if img is None:
                img = decode(i)
                if cache:
                    decoded[i] = img
            images.append(img)
        return _stack_if_uniform(images)

    return Source("image", count, read, labels, 255.0, tuple(class_names))


def _stack_if_uniform(images: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    if images and all(im.shape == images[0].shape for im in images):
        return np.stack(images)
    return images
