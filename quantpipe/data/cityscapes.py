"""Cityscapes (fine annotations) in its official layout, at the thesis model's resolution.

    PATH/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    PATH/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Pools `train` (2,975) and `val` (500); the official test images have no public labels
and are not read. Label IDs map to the 19 train IDs of cityscapesScripts; every other
ID becomes 255, which mIoU ignores.

Images larger than `SIZE` (512×1024, what `fcn-resnet18-19` takes) are scaled down in
the loader, keeping their aspect ratio: the official 1024×2048 frames become exactly
512×1024, images bilinear, masks nearest (a blend of two class IDs is no class).
Smaller images are kept as they are. Scaling here rather than in preprocessing keeps
masks and model outputs the same size and never holds a full-resolution mask.

Nothing is decoded when the data set opens (only file names and two PNG headers are
read): images come from a lazy source and masks from `LazyMasks`, one batch at a time,
so memory stays at a batch whatever the split's size.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from quantpipe.data.lazy_masks import LazyMasks
from quantpipe.data.safe_image import open_image
from quantpipe.data.sources import Source, lazy_image_source
from quantpipe.errors import DataError

BILINEAR, NEAREST = Image.Resampling.BILINEAR, Image.Resampling.NEAREST
SIZE = (512, 1024)  # (H, W): the largest images are scaled down to
POOLS = ("train", "val")
_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"
# cityscapesScripts' labels.py: (label ID, name) of the 19 evaluated classes, by train ID.
_TRAIN_CLASSES = (
    (7, "road"),
    (8, "sidewalk"),
    (11, "building"),
    (12, "wall"),
    (13, "fence"),
    (17, "pole"),
    (19, "traffic light"),
    (20, "traffic sign"),
    (21, "vegetation"),
    (22, "terrain"),
    (23, "sky"),
    (24, "person"),
    (25, "rider"),
    (26, "car"),
    (27, "truck"),
    (28, "bus"),
    (31, "train"),
    (32, "motorcycle"),
    (33, "bicycle"),
)
CLASSES = tuple(name for _, name in _TRAIN_CLASSES)
IGNORE = 255


def _train_id_table() -> list[int]:
    """Label ID → train ID (255 for the rest), as a table for PIL's Image.point."""
    table = [IGNORE] * 256
    for train_id, (label_id, _) in enumerate(_TRAIN_CLASSES):
        table[label_id] = train_id
    return table


TRAIN_IDS = _train_id_table()


def load_cityscapes(root: Path, size: tuple[int, int] = SIZE) -> dict[str, Source]:
    """The `train` and `val` pools present under `root`; images larger than `size` shrink."""
    pools = {
        pool: _pool(root, pool, images, size)
        for pool in POOLS
        if (images := sorted((root / "leftImg8bit" / pool).glob(f"*/*{_IMAGE_SUFFIX}")))
    }
    if not pools:
        raise DataError(
            f"no Cityscapes images under {root}/leftImg8bit/{{train,val}}/<city>/"
            f"*{_IMAGE_SUFFIX}; pass the folder holding leftImg8bit/ and gtFine/"
        )
    return pools


def label_path(root: Path, pool: str, image: Path) -> Path:
    """Where the official layout keeps the labelIds mask of `image`."""
    stem = image.name[: -len(_IMAGE_SUFFIX)]
    return root / "gtFine" / pool / image.parent.name / f"{stem}{_LABEL_SUFFIX}"


def _pool(root: Path, pool: str, images: list[Path], size: tuple[int, int]) -> Source:
    labels = [label_path(root, pool, image) for image in images]
    for image, label in zip(images, labels, strict=True):
        if not label.is_file():
            raise DataError(
                f"Cityscapes image {image} has no label file {label}; "
                "unpack gtFine_trainvaltest.zip next to leftImg8bit/"
            )
    first = _scaled_size(_header_size(labels[0]), size)

    def decode_image(i: int) -> np.ndarray:
        return _decode(images[i], lambda im: _shrink(im.convert("RGB"), size, BILINEAR))

    def decode_mask(i: int) -> np.ndarray:
        def to_train_ids(im: Image.Image) -> Image.Image:
            if im.mode != "L":
                raise DataError(f"{labels[i]} is a {im.mode} image, not 8-bit label IDs (L)")
            if im.size != _header_size(images[i]):
                raise DataError(f"{labels[i]} and {images[i]} differ in size; re-extract both")
            return _shrink(im, size, NEAREST).point(TRAIN_IDS)

        return _decode(labels[i], to_train_ids)

    masks = LazyMasks(len(labels), decode_mask, lambda i: str(labels[i]), first)
    return lazy_image_source(len(images), decode_image, masks, CLASSES, cache=False)


def _scaled_size(wh: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """(H, W) of an image of (width, height) `wh` once shrunk to fit `size` (H, W)."""
    w, h = wh
    scale = min(1.0, size[0] / h, size[1] / w)
    return round(h * scale), round(w * scale)


def _shrink(im: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    h, w = _scaled_size(im.size, size)
    return im if (w, h) == im.size else im.resize((w, h), resample)


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header; the pixels are not decoded."""
    with open_image(path, f"Cityscapes {path}", ("PNG",)) as im:
        return im.size


def _decode(path: Path, transform: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    """The pixels of `transform(image)`, naming the file if it cannot be read or decoded
    (as PNG only, and refused over MAX_IMAGE_PIXELS: see `safe_image`)."""
    with open_image(path, f"Cityscapes {path}", ("PNG",)) as im:
        return np.asarray(transform(im))
