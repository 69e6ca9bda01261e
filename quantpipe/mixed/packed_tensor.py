"""One quantized weight tensor for the packed file: a `QuantizedTensor` (int8 codes on the
b-bit symmetric grid and one float32 scale per channel, validated and read-only),
`quantize_tensor`, which makes one with the quantization rule of
`quantpipe.quantize.qdq.quantize_weight`, and `pack_signed` / `unpack_signed`, which store
the codes at exactly b bits each. The file format itself is `quantpipe.mixed.packed`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantpipe.btc.packing import pack_codes, unpack_codes
from quantpipe.errors import QuantpipeError
from quantpipe.quantize.bits import MAX_BITS, MIN_BITS, qmax
from quantpipe.quantize.qdq import quantize_weight


def _channel_shape(ndim: int, axis: int) -> tuple[int, ...]:
    return tuple(-1 if d == axis else 1 for d in range(ndim))


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """Integer codes of one weight tensor with one float32 scale per channel along `axis`.

    The constructor validates and keeps read-only copies (codes int8 within ±qmax(bits),
    scales float32, positive and finite, one per channel) and normalises a negative axis.
    `name` only serves error messages.
    """

    codes: np.ndarray
    scales: np.ndarray
    bits: int
    axis: int
    name: str = ""

    def __post_init__(self) -> None:
        bits = _checked_bits(self.bits, self._error)
        codes = _checked_codes(np.asarray(self.codes), bits, self._error)
        axis = _checked_axis(self.axis, codes.ndim, self._error)
        scales = _checked_scales(np.asarray(self.scales), codes.shape[axis], self._error)
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "axis", axis)
        object.__setattr__(self, "codes", _frozen(codes.astype(np.int8)))
        object.__setattr__(self, "scales", _frozen(scales.astype(np.float32)))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    def dequantize(self) -> np.ndarray:
        """float32 weights: each code times the scale of its channel."""
        scales = self.scales.reshape(_channel_shape(self.codes.ndim, self.axis))
        return self.codes.astype(np.float32) * scales

    def _error(self, what: str) -> QuantpipeError:
        return _tensor_error(self.name, np.shape(self.codes), self.bits, self.axis, what)


def _tensor_error(name: str, shape: Any, bits: Any, axis: Any, what: str) -> QuantpipeError:
    label = f"{name!r} " if name else ""
    return QuantpipeError(
        f"quantized tensor {label}(shape {tuple(shape)}, bits {bits!r}, axis {axis!r}): "
        f"{what}; make it with quantpipe.mixed.packed_tensor.quantize_tensor"
    )


_ErrorFn = Callable[[str], QuantpipeError]


def _checked_bits(bits: Any, error: _ErrorFn) -> int:
    # Not quantize.bits.check_bits: this one also takes numpy integers, and names the tensor.
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
        raise error(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise error(f"bits must be in {MIN_BITS}..{MAX_BITS}")
    return int(bits)


def _checked_codes(codes: np.ndarray, bits: int, error: _ErrorFn) -> np.ndarray:
    if codes.dtype.kind not in "iu":
        raise error(f"codes have dtype {codes.dtype}, integers expected")
    if codes.ndim < 1:
        raise error("codes must have at least one dimension (the channel axis)")
    q = qmax(bits)
    if codes.size and (int(codes.min()) < -q or int(codes.max()) > q):
        found = f"{int(codes.min())}..{int(codes.max())}"
        raise error(f"codes span {found}, outside the {bits}-bit range {-q}..{q}")
    return codes


def _checked_axis(axis: Any, ndim: int, error: _ErrorFn) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer):
        raise error("axis must be an integer")
    if not -ndim <= axis < ndim:
        raise error(f"axis out of range for {ndim} dimensions")
    return int(axis) % ndim


def _checked_scales(scales: np.ndarray, channels: int, error: _ErrorFn) -> np.ndarray:
    if scales.dtype.kind not in "fiu" or scales.shape != (channels,):
        raise error(
            f"scales must be a real 1-D array of {channels} (one per channel), "
            f"got dtype {scales.dtype} shape {scales.shape}"
        )
    as_f32 = scales.astype(np.float32)  # checked after the cast: float64 can underflow to 0
    if not (np.isfinite(as_f32).all() and (as_f32 > 0).all()):
        raise error("every scale must be positive and finite in float32")
    return as_f32


def quantize_tensor(w: np.ndarray, bits: int, axis: int, name: str = "") -> QuantizedTensor:
    """Symmetric per-channel quantization: scale = amax / qmax(bits), round half to even.

    The rule is quantpipe.quantize.qdq.quantize_weight's, so the codes and scales are
    bit for bit those of the INT8 graph at the same width. A channel of zeros gets scale 1,
    as quantpipe's INT8 weights do.

    Raises:
        QuantpipeError: bits outside 2..8, axis out of range, or non-finite weights.
    """
    x = np.asarray(w, dtype=np.float32)

    def error(what: str) -> QuantpipeError:
        return _tensor_error(name, x.shape, bits, axis, what)

    b = _checked_bits(bits, error)
    ax = _checked_axis(axis, x.ndim, error)
    if not np.isfinite(x).all():
        raise error("the weights contain NaN or infinity")
    # amax / q is 0 for a zero channel and can underflow for a subnormal one: any positive
    # scale then codes the channel as zeros, and 1 matches quantize_weight. It only gives
    # scale 1 where amax == 0; a subnormal channel gets scale 0 and codes cast from w / 0
    # (with warnings, silenced here), both replaced below.
    with np.errstate(divide="ignore", invalid="ignore"):
        codes, scales = quantize_weight(x, ax, b)
    underflow = ~(scales > 0)
    if underflow.any():
        scales[underflow] = 1.0
        np.moveaxis(codes, ax, 0)[underflow] = 0  # |w| / 1 rounds to 0 for subnormal w
    return QuantizedTensor(codes, scales, b, ax, name=name)


def pack_signed(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes in ±qmax(bits), any shape (C order), as packed_len(codes.size, bits) bytes.

    Offsetting to 0..2**bits - 2 makes every code an unsigned `bits`-bit field, which
    btc.packing's packers (any width 1..8, LSB first, little-endian) store exactly.
    """
    offset = np.asarray(codes).reshape(-1).astype(np.int16) + qmax(bits)
    return pack_codes(offset.astype(np.uint8), bits)


def unpack_signed(buf: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of pack_signed: `count` int8 codes.

    Raises:
        ValueError: a stored field is 2**bits - 1, which no code maps to.
    """
    fields = unpack_codes(buf, bits, count)
    if fields.size and int(fields.max()) > 2 * qmax(bits):
        raise ValueError(f"a stored {bits}-bit field is {int(fields.max())}, not a code")
    return (fields.astype(np.int16) - qmax(bits)).astype(np.int8)
