"""fmnist-seg: a small, real-image segmentation task built from Fashion-MNIST.

Each sample is a 56×56 one-channel uint8 canvas holding four garments in its four
28×28 quadrants (top-left, top-right, bottom-left, bottom-right = garments 4i..4i+3 of
the pool's permutation). Its mask gives each pixel its garment's class + 1 (1..10)
where the garment's pixel is ≥ 48, background 0 where it is < 8, and 255 in between:
the usual void label, so that the blurred edges of a garment count for neither side
(mIoU ignores 255).

The pools use every garment once: `train` = 15,000 mosaics of the official train
images, `test` = 2,500 of the official test images, so no test pixel comes from a
training garment. The permutation's seed is fixed, not the user's --seed, so the task
is the same for everybody; --seed only picks the splits of these pools.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quantpipe.data.fashion_mnist import CLASSES as GARMENTS
from quantpipe.data.fashion_mnist import read_fashion_mnist
from quantpipe.data.sources import Source, array_source

CLASSES = ("background", *GARMENTS)
MOSAIC_SEED = 20_251_117  # fixed: part of the task's definition, not a user choice
FOREGROUND_MIN = 48  # pixel value from which a pixel belongs to its garment
BACKGROUND_MAX = 7  # pixel value up to which a pixel is background
IGNORE = 255
_TILE = 28


def load_fmnist_seg(root: Path) -> dict[str, Source]:
    """`train` (15,000 mosaics) and `test` (2,500) from the Fashion-MNIST files in `root`."""
    return {
        pool: array_source(*build_mosaics(images, labels), class_names=CLASSES)
        for pool, (images, labels) in read_fashion_mnist(root, "fmnist-seg").items()
    }


def build_mosaics(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N×28×28 images, N labels) → (N//4 canvases, N//4 masks), both 56×56 uint8.

    Plain element-wise arithmetic on whole arrays (no table look-ups, which numpy does
    with 8-byte indices): about 0.3 s for the 60,000 training garments.
    """
    count = len(images) // 4
    order = np.random.default_rng(MOSAIC_SEED).permutation(len(images))[: 4 * count]
    canvases = _untile(images[order].reshape(count, 2, 2, _TILE, _TILE))
    garment = (labels[order].astype(np.uint8) + 1).reshape(count, 2, 2)
    garment = garment.repeat(_TILE, axis=1).repeat(_TILE, axis=2)  # class + 1 per pixel
    foreground = canvases >= FOREGROUND_MIN
    masks = foreground * garment
    between = (canvases > BACKGROUND_MAX) ^ foreground
    masks |= between.view(np.uint8) * np.uint8(IGNORE)
    return canvases, masks


def _untile(tiles: np.ndarray) -> np.ndarray:
    """(M, 2, 2, 28, 28) quadrants (row, column) → (M, 56, 56) canvases."""
    rows = np.ascontiguousarray(tiles.transpose(0, 1, 3, 2, 4))
    return rows.reshape(len(tiles), 2 * _TILE, 2 * _TILE)
