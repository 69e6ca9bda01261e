"""Vectorised bit packing for the container: mode bitmap, 4-bit and 8-bit code streams.

A tensor's codes are stored as two streams: the codes of all low-bit blocks in block
order, then those of all high-bit blocks. Each stream is homogeneous, so packing and
unpacking are a few whole-array operations, never a loop over blocks.

Bit order is little-endian throughout: bitmap bit i of byte j is block 8j + i; in the
4-bit stream, code 2k is the low nibble of byte k and code 2k + 1 the high nibble;
other widths pack code bits LSB first into a continuous little-endian bit stream.
Padding bits at the end of a stream are zero.
"""

from __future__ import annotations

import numpy as np


def packed_len(count: int, bits: int) -> int:
    """Bytes holding `count` codes of `bits` bits."""
    return -(-count * bits // 8)


def pack_bitmap(flags: np.ndarray) -> np.ndarray:
    """One bit per block, little-endian bit order."""
    return np.packbits(flags, bitorder="little")


def unpack_bitmap(buf: np.ndarray, count: int) -> np.ndarray:
    """Inverse of pack_bitmap: bool array of `count` flags."""
    return np.unpackbits(buf, count=count, bitorder="little").view(np.bool_)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 codes (each < 2**bits) into packed_len(codes.size, bits) bytes."""
    if bits == 8:
        return codes
    if bits == 4:
        if codes.size % 2:
            codes = np.append(codes, np.uint8(0))
        packed = codes[1::2] << 4
        packed |= codes[0::2]
        return packed
    planes = np.unpackbits(codes[:, None], axis=1, count=bits, bitorder="little")
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_codes(buf: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of pack_codes: `count` uint8 codes from `buf`."""
    if bits == 8:
        return buf[:count]
    if bits == 4:
        out = np.empty(2 * buf.size, dtype=np.uint8)
        np.bitwise_and(buf, 0x0F, out=out[0::2])
        np.right_shift(buf, 4, out=out[1::2])
        return out[:count]
    planes = np.unpackbits(buf, count=count * bits, bitorder="little").reshape(count, bits)
    return np.packbits(planes, axis=1, bitorder="little").reshape(count)


def split_streams(codes: np.ndarray, high: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes of low-bit blocks and of high-bit blocks, each in block order."""
    n_full = codes.size // b
    rows = codes[: n_full * b].reshape(n_full, b)
    low_parts = [rows[~high[:n_full]].reshape(-1)]
    high_parts = [rows[high[:n_full]].reshape(-1)]
    if codes.size % b:
        (high_parts if high[-1] else low_parts).append(codes[n_full * b :])
    return np.concatenate(low_parts), np.concatenate(high_parts)


def merge_streams(low: np.ndarray, hi: np.ndarray, high: np.ndarray, n: int, b: int) -> np.ndarray:
    """Inverse of split_streams: the codes of all n weights in natural order.

    The caller guarantees the stream lengths match `high` (the container checks them).
    """
    codes = np.empty(n, dtype=np.uint8)
    n_full, tail = divmod(n, b)
    rows = codes[: n_full * b].reshape(n_full, b)
    full_high = high[:n_full]
    n_low_full = (n_full - int(np.count_nonzero(full_high))) * b
    tail_high = bool(tail and high[-1])
    rows[~full_high] = low[:n_low_full].reshape(-1, b)
    rows[full_high] = hi[: hi.size - tail if tail_high else hi.size].reshape(-1, b)
    if tail:
        codes[n_full * b :] = hi[hi.size - tail :] if tail_high else low[n_low_full:]
    return codes
