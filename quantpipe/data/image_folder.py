"""Image-folder trees, on disk or inside a .tar: `[pool/]class/image.ext`.

Class indices are the class folder names sorted alphabetically (torchvision's
ImageFolder convention; for CIFAR-10 this is the CIFAR order). When the top level
holds `train/`, `test/` or `val/` folders, each is an official pool.
"""

from __future__ import annotations

import io
import tarfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from quantpipe.data.sources import Source, lazy_image_source
from quantpipe.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}
POOL_NAMES = {"train", "test", "val"}
# Decoded images up to this many pixels are kept in memory (CIFAR: 30 MB for 10,000).
_CACHE_MAX_PIXELS = 64 * 64


def load_image_folder(path: Path) -> dict[str, Source]:
    """Open a directory tree or a .tar of one; returns its pools."""
    if path.is_file() and tarfile.is_tarfile(path):
        return _load_tar(path)
    if not path.is_dir():
        raise DataError(f"image folder not found: {path} (pass a directory or a .tar of one)")
    files = [p.relative_to(path).as_posix() for p in sorted(path.rglob("*")) if _is_image(p.name)]
    return _pools_from_listing(files, lambda rel: (path / rel).read_bytes(), str(path))


def _load_tar(path: Path) -> dict[str, Source]:
    try:
        # Kept open for the life of the source: images are read from it on demand.
        tar = tarfile.open(path)  # noqa: SIM115
        members = {m.name: m for m in tar.getmembers() if m.isfile() and _is_image(m.name)}
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"cannot read tar {path}: {e}") from None

    def read_bytes(name: str) -> bytes:
        f = tar.extractfile(members[name])
        if f is None:
            raise DataError(f"cannot read {name} in {path}")
        return f.read()

    return _pools_from_listing(sorted(members), read_bytes, str(path))


def _pools_from_listing(
    files: list[str], read_bytes: Callable[[str], bytes], where: str
) -> dict[str, Source]:
    parts = [PurePosixPath(f).parts for f in files]
    parts = _strip_common_root(parts)
    if not parts or any(len(p) < 2 for p in parts):
        raise DataError(
            f"no images in class folders under {where}: expected [pool/]class/image.jpg "
            f"(image types: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    by_pool: dict[str, list[tuple[str, str]]] = defaultdict(list)
    pooled = all(len(p) >= 3 and p[0] in POOL_NAMES for p in parts)
    for full, p in zip(files, parts, strict=True):
        pool, cls = (p[0], p[1]) if pooled else ("all", p[-2])
        by_pool[pool].append((full, cls))
    return {pool: _pool_source(items, read_bytes) for pool, items in by_pool.items()}


def _pool_source(items: list[tuple[str, str]], read_bytes: Callable[[str], bytes]) -> Source:
    classes = sorted({cls for _, cls in items})
    labels = np.asarray([classes.index(cls) for _, cls in items], dtype=np.int64)
    names = [name for name, _ in items]

    def decode(i: int) -> np.ndarray:
        return decode_image(read_bytes(names[i]), names[i])

    first = decode(0)
    small = first.shape[0] * first.shape[1] <= _CACHE_MAX_PIXELS
    return lazy_image_source(len(names), decode, labels, classes, cache=small)


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode to H×W×3 uint8 RGB (grayscale and palette images are converted)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot decode image {name}: {e}") from None


def _strip_common_root(parts: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Drop a single top folder that wraps everything (e.g. `cifar10/test/cat/1.jpg`)."""
    while parts and all(len(p) > 3 for p in parts) and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]
    return parts


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES
