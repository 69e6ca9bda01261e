"""Image-folder trees, on disk or inside a .tar: `[pool/]class/image.ext`.

Class indices are the class folder names sorted alphabetically (torchvision's
ImageFolder convention; for CIFAR-10 this is the CIFAR order). When the top level
holds `train/`, `test/` or `val/` folders, each is an official pool.

Only files with an image suffix are read (others are ignored), and only as the formats
those suffixes name, whatever each file's own suffix (see `safe_image`): a file that is
not one of them, or is over `MAX_IMAGE_PIXELS`, is refused when it is decoded. Archives
are read in memory, never extracted, and refused when crafted (see `safe_tar`). In a
folder, nothing outside it is read and nothing can block:

- a symlink whose target is outside the folder (file or directory) is refused, naming
  both; one whose target is inside is read if it is an image, but a symlinked directory
  is not descended (its files are listed by their own path, so nothing is read twice and
  a link to an ancestor cannot loop);
- an entry with an image suffix that is not a regular file (a FIFO, which would block the
  read forever, a device, a socket, a broken link) is refused;
- an image file over `MAX_MEMBER_BYTES` is refused before it is read.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np

from quantpipe.data.safe_image import open_image
from quantpipe.data.safe_tar import MAX_MEMBER_BYTES, open_tar, read_member, regular_members
from quantpipe.data.sources import Source, lazy_image_source
from quantpipe.errors import DataError

# Suffix → the PIL format it names (PGM is read by PIL's PPM plugin).
_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".bmp": "BMP",
    ".webp": "WEBP",
    ".ppm": "PPM",
    ".pgm": "PPM",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
IMAGE_SUFFIXES = set(_FORMATS)
# Any of them, whatever a file's suffix: scraped data sets hold JPEGs named .png.
IMAGE_FORMATS = tuple(dict.fromkeys(_FORMATS.values()))
POOL_NAMES = {"train", "test", "val"}
# Decoded images up to this many pixels are kept in memory (CIFAR: 30 MB for 10,000).
_CACHE_MAX_PIXELS = 64 * 64


def load_image_folder(path: Path) -> dict[str, Source]:
    """Open a directory tree or a .tar of one; returns its pools."""
    tar = open_tar(path) if path.is_file() else None
    if tar is not None:
        return _load_tar(tar, path)
    if not path.is_dir():
        raise DataError(f"image folder not found: {path} (pass a directory or a .tar of one)")
    files = [p.relative_to(path).as_posix() for p in _tree_images(path)]
    return _pools_from_listing(files, lambda rel: _read_file(path / rel), str(path))


def _load_tar(tar: tarfile.TarFile, path: Path) -> dict[str, Source]:
    # Kept open for the life of the source: images are read from it on demand.
    members = regular_members(tar, path, _is_image)
    return _pools_from_listing(
        sorted(members), lambda name: read_member(tar, members[name], path), str(path)
    )


def _tree_images(root: Path) -> list[Path]:
    """The image files under `root`, sorted, after the checks of the module docstring."""
    inside, found, todo = root.resolve(), [], [root]
    while todo:
        try:
            entries = list(os.scandir(todo.pop()))
        except OSError as e:
            raise DataError(f"cannot list image folder {root}: {e}") from None
        for entry in entries:
            if entry.is_symlink():
                _check_link(Path(entry.path), inside, root)  # inside: read, never descended
            elif entry.is_dir():
                todo.append(Path(entry.path))
                continue
            if _is_image(entry.name) and not entry.is_dir():
                found.append(_regular(entry, root))
    return sorted(found)


def _check_link(link: Path, inside: Path, root: Path) -> None:
    try:
        target = link.resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop (Python < 3.13)
        raise DataError(
            f"{link} in image folder {root} is a symlink that does not resolve ({e}): "
            "refused; remove it"
        ) from None
    if target != inside and inside not in target.parents:
        raise DataError(
            f"{link} in image folder {root} is a symlink to {target}, outside the folder: "
            "refused (a data set is read from inside its folder only); copy the file in, "
            "or pass the folder it lives in"
        )


def _regular(entry: os.DirEntry[str], root: Path) -> Path:
    """The entry's path; refused unless it is (or links to) a regular file."""
    if not entry.is_file():
        raise DataError(
            f"{entry.path} in image folder {root} is not a regular file (a FIFO, device, "
            "socket or broken link): refused; remove it or give it another suffix"
        )
    return Path(entry.path)


def _read_file(path: Path) -> bytes:
    """The bytes of an image file, checked on the open descriptor: opened non-blocking (a
    FIFO swapped in after listing cannot hang the read) and refused when it is not a
    regular file or is over MAX_MEMBER_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise DataError(f"cannot read image {path}: not a regular file")
            if info.st_size > MAX_MEMBER_BYTES:
                raise DataError(
                    f"image {path} is {info.st_size:,} bytes, over MAX_MEMBER_BYTES "
                    f"({MAX_MEMBER_BYTES:,}): refused before reading it"
                )
            return f.read(info.st_size)  # not MAX_MEMBER_BYTES: read(n) allocates n bytes
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e}") from None


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
    return {pool: _pool_source(items, read_bytes, where) for pool, items in by_pool.items()}


def _pool_source(
    items: list[tuple[str, str]], read_bytes: Callable[[str], bytes], where: str
) -> Source:
    classes = sorted({cls for _, cls in items})
    labels = np.asarray([classes.index(cls) for _, cls in items], dtype=np.int64)
    names = [name for name, _ in items]

    def decode(i: int) -> np.ndarray:
        return decode_image(read_bytes(names[i]), f"{names[i]} in {where}")

    first = decode(0)
    small = first.shape[0] * first.shape[1] <= _CACHE_MAX_PIXELS
    return lazy_image_source(len(names), decode, labels, classes, cache=small)


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode to H×W×3 uint8 RGB (grayscale and palette images are converted)."""
    with open_image(io.BytesIO(data), name, IMAGE_FORMATS) as im:
        return np.asarray(im.convert("RGB"))


def _strip_common_root(parts: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Drop a single top folder that wraps everything (e.g. `cifar10/test/cat/1.jpg`)."""
    while parts and all(len(p) > 3 for p in parts) and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]
    return parts


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES
