"""Generic `.npz` data: `x` (samples) and optional `y` (labels or masks).

`x` is either ready model tensors, float (N, C, H, W), or raw images, uint8
(N, H, W) or (N, H, W, C), which get the model's preprocessing. `y` is (N,) class
indices, (N, H, W) segmentation masks, or absent (then accuracy is measured as
agreement with the FP32 model). Loaded with allow_pickle=False.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from quantpipe.data.sources import Source, array_source
from quantpipe.errors import DataError


def load_npz(path: Path) -> dict[str, Source]:
    if not path.is_file():
        raise DataError(f"npz file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError as e:
        raise DataError(
            f"{path} holds pickled objects, which are refused ({e}); "
            "save plain numeric arrays with np.savez"
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path} is not a readable .npz file ({e})") from None
    if "x" not in arrays:
        raise DataError(f"{path} has no array named 'x' (found: {', '.join(arrays) or 'none'})")
    x, y = arrays["x"], arrays.get("y")
    return {"all": _source(x, y, path)}


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
