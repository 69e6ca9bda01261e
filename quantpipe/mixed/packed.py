"""Mixed-precision weights stored truly packed at their bit widths (the `.qpmix` file).

A quantized weight is symmetric per output channel: integer codes in ±(2**(b-1) - 1) for
b in 2..8 and one float32 scale per channel. The file stores each code offset to
0..2**b - 2 at exactly b bits (quantpipe.btc.packing's little-endian bit stream), so its
real size can be set beside the theoretical Σ P·b/8. Layout: `packed_format.md`; the
tensors and their b-bit codes: `packed_tensor.py`.

Size on disk, exactly (tested):

    file_bytes = Σ_quantized (ceil(P b / 8) + 4 C) + Σ_raw 4 P
               + 40 + meta_len
               + Σ_quantized (14 + name_len + 4 ndim) + Σ_raw (10 + name_len + 4 ndim)

with P the tensor's element count and C its channel count. The last two lines are
`overhead_bytes`; rounding each code stream up to whole bytes adds under one byte per
quantized tensor on top of `theoretical_bytes`.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantpipe.btc.packing import packed_len
from quantpipe.errors import CorruptArtifactError, QuantpipeError
from quantpipe.mixed.packed_tensor import QuantizedTensor, pack_signed, unpack_signed
from quantpipe.pipeline.framed_file import (
    PREAMBLE_BYTES,
    Framing,
    TableCursor,
    check_storable,
    crc32,
    parse_entries,
    read_framed,
    write_framed,
)
from quantpipe.quantize.bits import MAX_BITS, MIN_BITS

MAGIC = b"QPMIX\0"
_MAX_BYTES = int(np.iinfo(np.intp).max)  # numpy's limit on an array's size in bytes
VERSION = 1
MAX_NDIM = 32
KIND_QUANTIZED, KIND_RAW = 1, 2
_NAME_LEN = struct.Struct("<H")
_HEAD = struct.Struct("<BBBB")  # kind, bits, axis, ndim
#: Fixed bytes of a table entry on top of its name and 4 bytes per dimension.
QUANTIZED_ENTRY_FIXED = _NAME_LEN.size + _HEAD.size + 8  # two CRCs: 14
RAW_ENTRY_FIXED = _NAME_LEN.size + _HEAD.size + 4  # one CRC: 10


@dataclass(frozen=True)
class PackedAccounting:
    """Where the bytes of a packed file go, next to the theoretical Σ P·b/8."""

    file_bytes: int  # the real file size
    payload_bits: int  # Σ P·b over quantized tensors
    scale_bytes: int  # 4 per channel of every quantized tensor
    raw_bytes: int  # 4 per element of every raw tensor
    overhead_bytes: int  # preamble + tensor table + metadata
    theoretical_bytes: float  # Σ P·b/8 = payload_bits / 8

    @property
    def payload_bytes(self) -> int:
        """Bytes of the code streams: Σ ceil(P·b/8), under one byte per tensor above theory."""
        return self.file_bytes - self.scale_bytes - self.raw_bytes - self.overhead_bytes


@dataclass(frozen=True)
class _Entry:
    """One table entry; raw tensors have bits = axis = 0 and a single CRC."""

    name: str
    kind: int
    bits: int
    axis: int
    shape: tuple[int, ...]
    crcs: tuple[int, ...]

    @property
    def n(self) -> int:
        return math.prod(self.shape)

    def section_lengths(self) -> tuple[int, ...]:
        if self.kind == KIND_RAW:
            return (4 * self.n,)
        return (4 * self.shape[self.axis], packed_len(self.n, self.bits))

    def pack(self) -> bytes:
        name = self.name.encode("utf-8")
        head = _HEAD.pack(self.kind, self.bits, self.axis, len(self.shape))
        dims = struct.pack(f"<{len(self.shape)}I", *self.shape)
        crcs = struct.pack(f"<{len(self.crcs)}I", *self.crcs)
        return _NAME_LEN.pack(len(name)) + name + head + dims + crcs


def _raw_array(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise QuantpipeError(
            f"raw tensor {name!r} has dtype {arr.dtype}; the packed file stores real "
            "numbers as float32: convert it or leave it out"
        )
    return np.asarray(arr, dtype="<f4", order="C")


def _entries_and_sections(
    quantized: Mapping[str, QuantizedTensor], raw: Mapping[str, Any]
) -> tuple[list[_Entry], list[np.ndarray]]:
    entries, sections = [], []
    for name, qt in quantized.items():
        if not isinstance(qt, QuantizedTensor):
            raise QuantpipeError(
                f"quantized[{name!r}] is a {type(qt).__name__}, not a QuantizedTensor"
            )
        check_storable(name, qt.shape, MAX_NDIM, 0xFFFFFFFF)
        secs = [qt.scales.astype("<f4").view(np.uint8), pack_signed(qt.codes, qt.bits)]
        crcs = tuple(crc32(s) for s in secs)
        entries.append(_Entry(name, KIND_QUANTIZED, qt.bits, qt.axis, qt.shape, crcs))
        sections += secs
    for name, value in raw.items():
        arr = _raw_array(name, value)
        check_storable(name, arr.shape, MAX_NDIM, 0xFFFFFFFF)
        data = arr.reshape(-1).view(np.uint8)
        entries.append(_Entry(name, KIND_RAW, 0, 0, arr.shape, (crc32(data),)))
        sections.append(data)
    return entries, sections


def write_packed(
    path: str | os.PathLike[str],
    quantized: Mapping[str, QuantizedTensor],
    raw: Mapping[str, Any],
    metadata: Mapping[str, Any],
) -> PackedAccounting:
    """Write quantized tensors, raw float32 tensors and JSON metadata to `path`, atomically.

    Args:
        quantized: name -> per-channel codes and scales, codes stored at `bits` bits each.
        raw: name -> array of real numbers (biases, anything not quantized), stored float32.
        metadata: a JSON-serialisable dict, returned as is by `read_packed`.
    """
    clash = set(quantized) & set(raw)
    if clash:
        raise QuantpipeError(f"tensors both quantized and raw: {sorted(clash)[:5]}")
    entries, sections = _entries_and_sections(quantized, raw)
    table_len, meta_len = write_framed(path, FRAMING, entries, sections, metadata)
    return _accounting(entries, table_len, meta_len)


def _accounting(entries: list[_Entry], table_len: int, meta_len: int) -> PackedAccounting:
    quant = [e for e in entries if e.kind == KIND_QUANTIZED]
    payload_bits = sum(e.n * e.bits for e in quant)
    scale_bytes = sum(e.section_lengths()[0] for e in quant)
    raw_bytes = sum(4 * e.n for e in entries if e.kind == KIND_RAW)
    overhead = PREAMBLE_BYTES + table_len + meta_len
    payload_bytes = sum(e.section_lengths()[1] for e in quant)
    return PackedAccounting(
        file_bytes=payload_bytes + scale_bytes + raw_bytes + overhead,
        payload_bits=payload_bits,
        scale_bytes=scale_bytes,
        raw_bytes=raw_bytes,
        overhead_bytes=overhead,
        theoretical_bytes=payload_bits / 8,
    )


def corrupt(path: str, what: str) -> CorruptArtifactError:
    """The one error for a damaged file: what is wrong, which file, what to do."""
    return CorruptArtifactError(
        f"{path}: {what}. The file is damaged, truncated or not a quantpipe packed-weights "
        "file; rewrite it with write_packed"
    )


FRAMING = Framing(
    MAGIC, VERSION, "packed weights", corrupt,
    "Rewrite the file with this quantpipe, or read it with the quantpipe that wrote it",
)  # fmt: skip


def _parse_entry(cur: TableCursor) -> _Entry:
    name = cur.name()
    kind, bits, axis, ndim = cur.take("BBBB")
    if kind not in (KIND_QUANTIZED, KIND_RAW) or ndim > MAX_NDIM:
        raise corrupt(cur.path, f"tensor {name!r} has kind {kind}, ndim {ndim}")
    shape = cur.take(f"{ndim}I")
    crcs = cur.take("II" if kind == KIND_QUANTIZED else "I")
    # The data-length check bounds the element count, not the other dimensions of a
    # zero-size tensor: (0, 2**32 - 1, 2**32 - 1) is 0 bytes on disk and no numpy array.
    if math.prod(d for d in shape if d) * 4 > _MAX_BYTES:
        raise corrupt(cur.path, f"tensor {name!r} has shape {shape}, which no array can have")
    if kind == KIND_QUANTIZED:
        ok = MIN_BITS <= bits <= MAX_BITS and axis < ndim
    else:
        ok = bits == 0 and axis == 0
    if not ok:
        raise corrupt(cur.path, f"tensor {name!r} has bits {bits}, axis {axis}, ndim {ndim}")
    return _Entry(name, kind, bits, axis, shape, crcs)


def _parse_table(buf: bytes, n_tensors: int, path: str) -> list[_Entry]:
    return parse_entries(buf, n_tensors, path, corrupt, _parse_entry)


def _quantized_tensor(e: _Entry, secs: list[np.ndarray], path: str) -> QuantizedTensor:
    scales = secs[0].view("<f4").astype(np.float32)
    if not (np.isfinite(scales).all() and (scales > 0).all()):
        raise corrupt(path, f"tensor {e.name!r} has a non-positive or non-finite scale")
    try:
        codes = unpack_signed(secs[1], e.bits, e.n).reshape(e.shape)
    except ValueError as err:
        raise corrupt(path, f"tensor {e.name!r}: {err}") from None
    return QuantizedTensor(codes, scales, e.bits, e.axis, name=e.name)


def read_packed(
    path: str | os.PathLike[str],
) -> tuple[dict[str, QuantizedTensor], dict[str, np.ndarray], dict[str, Any], PackedAccounting]:
    """Read and verify a packed file.

    Returns:
        (quantized tensors, raw float32 tensors, metadata as written, accounting).

    Raises:
        CorruptArtifactError: wrong magic or version, truncated, extended or damaged.
        QuantpipeError: the file cannot be read at all.
    """
    p = str(path)
    framed = read_framed(path, FRAMING, _parse_table)
    quantized, raw = {}, {}
    for e, secs in zip(framed.entries, framed.sections, strict=True):
        if e.kind == KIND_QUANTIZED:
            quantized[e.name] = _quantized_tensor(e, secs, p)
        else:
            raw[e.name] = secs[0].view("<f4").astype(np.float32).reshape(e.shape)
    accounting = _accounting(framed.entries, framed.table_len, framed.meta_len)
    return quantized, raw, framed.metadata, accounting
