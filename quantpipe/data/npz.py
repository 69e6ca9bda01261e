"""Generic `.npz` data: `x` (samples) and optional `y` (labels or masks).

`x` is either ready model tensors, float (N, C, H, W), or raw images, uint8
(N, H, W) or (N, H, W, C), which get the model's preprocessing. `y` is (N,) class
indices, (N, H, W) segmentation masks, or absent (then accuracy is measured as
agreement with the FP32 model). Loaded with allow_pickle=False.

Each array's header is checked against its zip entry before numpy reads it: numpy
allocates what a header declares, so a tiny file declaring a (2**40,) array would raise
MemoryError, and compressed entries may add up to `MAX_NPZ_BYTES` at most (a zip bomb).
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from quantpipe.data.sources import Source, array_source
from quantpipe.errors import DataError

# What an .npz's arrays may add up to, decompressed: all of it is held in memory
# (ImageNet's 50,000 val images as 224×224 uint8 are 7.5 GB).
MAX_NPZ_BYTES = 8 * 2**30
_READ_ERRORS = (OSError, zipfile.BadZipFile, EOFError, ValueError, zlib.error)


def load_npz(path: Path) -> dict[str, Source]:
    if not path.is_file():
        raise DataError(f"npz file not found: {path}")
    try:
        _check_entries(path)
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except _READ_ERRORS as e:
        raise DataError(f"{path} is not a readable .npz file ({e})") from None
    if "x" not in arrays:
        raise DataError(f"{path} has no array named 'x' (found: {', '.join(arrays) or 'none'})")
    x, y = arrays["x"], arrays.get("y")
    return {"all": _source(x, y, path)}


def _check_entries(path: Path) -> None:
    """Refuse, before numpy allocates anything, an .npz whose entries decompress past
    MAX_NPZ_BYTES, hold pickled objects, or hold other than what their headers declare."""
    with zipfile.ZipFile(path) as z:
        entries = [e for e in z.infolist() if e.filename.endswith(".npy")]
        total = sum(e.file_size for e in entries)
        if total > MAX_NPZ_BYTES:
            raise DataError(
                f"{path} decompresses to {total:,} bytes, over MAX_NPZ_BYTES "
                f"({MAX_NPZ_BYTES:,}): refused (a zip bomb, or a data set to split)"
            )
        for entry in entries:
            with z.open(entry) as f:
                _check_header(path, entry, f)


def _check_header(path: Path, entry: zipfile.ZipInfo, f: IO[bytes]) -> None:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0
    if version != (1, 0):  # 2.0 and 3.0 differ from 1.0 only in the header's length field
        read = np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    if dtype.hasobject:
        raise DataError(
            f"{path} holds pickled objects in {entry.filename}, which are refused; "
            "save plain numeric arrays with np.savez"
        )
    declared, held = math.prod(shape) * dtype.itemsize, entry.file_size - f.tell()
    if declared != held:
        raise DataError(
            f"{path}: {entry.filename} declares shape {shape} of {dtype} ({declared:,} bytes) "
            f"but holds {held:,}: refused (cut short or crafted); re-save it with np.savez"
        )


def _source(x: np.ndarray, y: np.ndarray | None, path: Path) -> Source:
    if x.dtype == np.uint8 and x.ndim in (3, 4):
        kind, max_value = "image", 255.0
    elif np.issubdtype(x.dtype, np.floating) and x.ndim == 4:
        kind, max_value = "tensor", 1.0
    else:
        raise DataError(
            f"{path}: x has dtype {x.dtype} and shape {x.shape}; expected float (N, C, H, W) "
            "model inputs or uint8 images (N, H, W) / (N, H, W, C)"
        )
    if y is not None:
        y = _check_labels(y, x, path)
    return array_source(x, y, kind=kind, max_value=max_value)  # type: ignore[arg-type]


def _check_labels(y: np.ndarray, x: np.ndarray, path: Path) -> np.ndarray:
    if len(y) != len(x):
        raise DataError(f"{path}: y has {len(y)} entries but x has {len(x)} samples")
    if not np.issubdtype(y.dtype, np.integer) or y.ndim not in (1, 3):
        raise DataError(
            f"{path}: y has dtype {y.dtype} and shape {y.shape}; expected integer class "
            "indices (N,) or segmentation masks (N, H, W)"
        )
    return y.astype(np.int64)
