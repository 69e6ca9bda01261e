"""Raw samples → model inputs (N, C, H, W) float32, as the model's Preprocessing says."""

from __future__ import annotations

import numpy as np
from PIL import Image

from quantpipe.data.sources import Source
from quantpipe.errors import DataError
from quantpipe.models.spec import Preprocessing


def to_model_input(
    raw: np.ndarray | list[np.ndarray], source: Source, pre: Preprocessing
) -> np.ndarray:
    """Preprocess a batch of raw samples from `source` for a model with `pre`."""
    if source.kind == "tensor":
        return _check_tensor_batch(np.asarray(raw), pre)
    images = [_as_hwc(im) for im in raw] if isinstance(raw, list) else _as_nhwc(raw)
    if isinstance(images, list) or images.shape[1:3] != pre.size:
        images = np.stack([_resize_crop(im, source.max_value, pre) for im in images])
    x = images.astype(np.float32) * np.float32(1.0 / source.max_value)
    x = _match_channels(x, pre.channels)
    x -= np.asarray(pre.mean, dtype=np.float32)
    x *= np.asarray([1.0 / s for s in pre.std], dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _as_nhwc(batch: np.ndarray) -> np.ndarray:
    return batch[..., None] if batch.ndim == 3 else batch


def _as_hwc(image: np.ndarray) -> np.ndarray:
    return image[..., None] if image.ndim == 2 else image


def _match_channels(x: np.ndarray, channels: int) -> np.ndarray:
    have = x.shape[-1]
    if have == channels:
        return x
    if have == 1:
        return np.repeat(x, channels, axis=-1)
    if channels == 1 and have == 3:
        # ITU-R 601 luma, as Pillow's convert("L") does.
        return x @ np.asarray([[0.299], [0.587], [0.114]], dtype=np.float32)
    raise DataError(f"images have {have} channels but the model takes {channels}")


def _resize_crop(image: np.ndarray, max_value: float, pre: Preprocessing) -> np.ndarray:
    """Resize the shorter side (to `pre.resize`, else to fit), then centre-crop to `pre.size`."""
    h, w = pre.size
    pil = Image.fromarray(
        _to_uint8(image, max_value).squeeze(-1)
        if image.shape[-1] == 1
        else _to_uint8(image, max_value)
    )
    short = pre.resize or max(h, w)
    scale = short / min(pil.size)
    pil = pil.resize(
        (max(w, round(pil.size[0] * scale)), max(h, round(pil.size[1] * scale))),
        Image.Resampling.BILINEAR,
    )
    left, top = (pil.size[0] - w) // 2, (pil.size[1] - h) // 2
    out = np.asarray(pil.crop((left, top, left + w, top + h)))
    return _as_hwc(out).astype(np.float32) * np.float32(max_value / 255.0)


def _to_uint8(image: np.ndarray, max_value: float) -> np.ndarray:
    return np.clip(image.astype(np.float32) * (255.0 / max_value), 0, 255).round().astype(np.uint8)


def _check_tensor_batch(x: np.ndarray, pre: Preprocessing) -> np.ndarray:
    want = (pre.channels, *pre.size)
    if x.shape[1:] != want:
        raise DataError(f"data samples have shape {x.shape[1:]} but the model expects {want}")
    return np.ascontiguousarray(x, dtype=np.float32)
