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

import json
import math
import os
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantpipe.btc.packing import packed_len
from quantpipe.errors import CorruptArtifactError, QuantpipeError
from quantpipe.mixed.packed_tensor import QuantizedTensor, pack_signed, unpack_signed
from quantpipe.pipeline.atomic import atomic_path
from quantpipe.quantize.bits import MAX_BITS, MIN_BITS

MAGIC = b"QPMIX\0"
VERSION = 1
MAX_NDIM = 32
KIND_QUANTIZED, KIND_RAW = 1, 2
_PRE = struct.Struct("<6sHIIIQIII")
PREAMBLE_BYTES = _PRE.size  # 40
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


def _bytes_view(x: np.ndarray | bytes | memoryview) -> memoryview:
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x).reshape(-1).view(np.uint8).data
    return memoryview(x).cast("B")


def _crc(x: np.ndarray | bytes | memoryview) -> int:
    return zlib.crc32(_bytes_view(x)) & 0xFFFFFFFF


def _check_storable(name: str, shape: tuple[int, ...]) -> None:
    too_big = len(shape) > MAX_NDIM or any(d > 0xFFFFFFFF for d in shape)
    if len(name.encode("utf-8")) > 0xFFFF or too_big:
        raise QuantpipeError(
            f"tensor {name[:80]!r} cannot be stored: names are limited to 65535 UTF-8 bytes, "
            f"shapes to {MAX_NDIM} dimensions of at most 2**32 - 1 (got {shape})"
        )


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
        _check_storable(name, qt.shape)
        secs = [qt.scales.astype("<f4").view(np.uint8), pack_signed(qt.codes, qt.bits)]
        crcs = tuple(_crc(s) for s in secs)
        entries.append(_Entry(name, KIND_QUANTIZED, qt.bits, qt.axis, qt.shape, crcs))
        sections += secs
    for name, value in raw.items():
        arr = _raw_array(name, value)
        _check_storable(name, arr.shape)
        data = arr.reshape(-1).view(np.uint8)
        entries.append(_Entry(name, KIND_RAW, 0, 0, arr.shape, (_crc(data),)))
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
    try:
        meta = json.dumps(dict(metadata), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise QuantpipeError(f"packed-file metadata is not JSON-serialisable: {e}") from None
    entries, sections = _entries_and_sections(quantized, raw)
    table = b"".join(e.pack() for e in entries)
    data_len = sum(s.nbytes for s in sections)
    fields = (len(entries), len(table), len(meta), data_len, _crc(table), _crc(meta))
    head = _PRE.pack(MAGIC, VERSION, *fields, 0)[:-4]
    parts: list[bytes | np.ndarray] = [head + struct.pack("<I", _crc(head)), table, meta]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for part in parts + sections:
            f.write(_bytes_view(part))
    return _accounting(entries, len(table), len(meta))


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


def _check_preamble(buf: bytes, path: str) -> tuple[int, ...]:
    """Magic, version, preamble CRC and exact file size; returns the preamble fields."""
    if not buf or buf[:6] != MAGIC[: len(buf[:6])]:
        raise corrupt(path, f"wrong magic {buf[:6]!r} (expected {MAGIC!r})")
    if len(buf) >= 8:
        (version,) = struct.unpack_from("<H", buf, 6)
        if version != VERSION:
            raise CorruptArtifactError(
                f"{path}: packed-weights format version {version}; this quantpipe reads "
                f"version {VERSION}. Rewrite the file with this quantpipe, or read it with "
                "the quantpipe that wrote it"
            )
    if len(buf) < PREAMBLE_BYTES:
        raise corrupt(
            path, f"only {len(buf)} bytes, shorter than the {PREAMBLE_BYTES}-byte preamble"
        )
    fields = _PRE.unpack_from(buf)
    if _crc(buf[: PREAMBLE_BYTES - 4]) != fields[-1]:
        raise corrupt(path, "preamble CRC mismatch")
    expected = PREAMBLE_BYTES + fields[3] + fields[4] + fields[5]  # table, meta, data
    if len(buf) != expected:
        raise corrupt(path, f"file has {len(buf)} bytes, its preamble says {expected}")
    return fields


class _Cursor:
    """Sequential reader over the table bytes; running short is corruption."""

    def __init__(self, buf: bytes, path: str) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str) -> tuple[int, ...]:
        st = struct.Struct("<" + fmt)
        return st.unpack(self.raw(st.size))

    def raw(self, size: int) -> bytes:
        if self.pos + size > len(self.buf):
            raise corrupt(self.path, "the tensor table ends in the middle of an entry")
        self.pos += size
        return self.buf[self.pos - size : self.pos]


def _parse_entry(cur: _Cursor) -> _Entry:
    (name_len,) = cur.take("H")
    try:
        name = cur.raw(name_len).decode("utf-8")
    except UnicodeDecodeError:
        raise corrupt(cur.path, "a tensor name is not valid UTF-8") from None
    kind, bits, axis, ndim = cur.take("BBBB")
    if kind not in (KIND_QUANTIZED, KIND_RAW) or ndim > MAX_NDIM:
        raise corrupt(cur.path, f"tensor {name!r} has kind {kind}, ndim {ndim}")
    shape = cur.take(f"{ndim}I")
    crcs = cur.take("II" if kind == KIND_QUANTIZED else "I")
    if kind == KIND_QUANTIZED:
        ok = MIN_BITS <= bits <= MAX_BITS and axis < ndim
    else:
        ok = bits == 0 and axis == 0
    if not ok:
        raise corrupt(cur.path, f"tensor {name!r} has bits {bits}, axis {axis}, ndim {ndim}")
    return _Entry(name, kind, bits, axis, shape, crcs)


def _parse_table(buf: bytes, n_tensors: int, path: str) -> list[_Entry]:
    cur = _Cursor(buf, path)
    entries = [_parse_entry(cur) for _ in range(n_tensors)]
    if cur.pos != len(buf):
        raise corrupt(path, f"{len(buf) - cur.pos} unexpected bytes after the tensor table")
    if len({e.name for e in entries}) != len(entries):
        raise corrupt(path, "the tensor table names a tensor twice")
    return entries


def _section_views(entries: list[_Entry], data: memoryview, path: str) -> list[list[np.ndarray]]:
    """Split the data region per entry and section; check lengths and every CRC."""
    lengths = [e.section_lengths() for e in entries]
    if sum(sum(x) for x in lengths) != len(data):
        raise corrupt(path, "the tensor table does not account for the data region")
    out, pos = [], 0
    for e, lens in zip(entries, lengths, strict=True):
        secs = []
        for i, (size, crc) in enumerate(zip(lens, e.crcs, strict=True)):
            view = data[pos : pos + size]
            if _crc(view) != crc:
                raise corrupt(path, f"CRC mismatch in section {i} of tensor {e.name!r}")
            secs.append(np.frombuffer(view, dtype=np.uint8))
            pos += size
        out.append(secs)
    return out


def _quantized_tensor(e: _Entry, secs: list[np.ndarray], path: str) -> QuantizedTensor:
    scales = secs[0].view("<f4").astype(np.float32)
    if not (np.isfinite(scales).all() and (scales > 0).all()):
        raise corrupt(path, f"tensor {e.name!r} has a non-positive or non-finite scale")
    try:
        codes = unpack_signed(secs[1], e.bits, e.n).reshape(e.shape)
    except ValueError as err:
        raise corrupt(path, f"tensor {e.name!r}: {err}") from None
    return QuantizedTensor(codes, scales, e.bits, e.axis, name=e.name)


def _parse_metadata(meta: bytes, path: str) -> dict[str, Any]:
    try:
        obj = json.loads(meta.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise corrupt(path, "metadata is not valid UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise corrupt(path, "metadata is not a JSON object")
    return obj


def _read_head(buf: bytes, path: str) -> tuple[list[_Entry], dict[str, Any], int, int]:
    """Preamble, table and metadata, verified: (entries, metadata, table_len, meta_len)."""
    _, _, n_tensors, table_len, meta_len, _, table_crc, meta_crc, _ = _check_preamble(buf, path)
    table = buf[PREAMBLE_BYTES : PREAMBLE_BYTES + table_len]
    meta = buf[PREAMBLE_BYTES + table_len : PREAMBLE_BYTES + table_len + meta_len]
    if _crc(table) != table_crc:
        raise corrupt(path, "tensor table CRC mismatch")
    if _crc(meta) != meta_crc:
        raise corrupt(path, "metadata CRC mismatch")
    return _parse_table(table, n_tensors, path), _parse_metadata(meta, path), table_len, meta_len


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
    try:
        buf = Path(path).read_bytes()
    except OSError as err:
        raise QuantpipeError(f"cannot read packed weights {p}: {err.strerror or err}") from None
    entries, metadata, table_len, meta_len = _read_head(buf, p)
    data = memoryview(buf)[PREAMBLE_BYTES + table_len + meta_len :]
    quantized, raw = {}, {}
    for e, secs in zip(entries, _section_views(entries, data, p), strict=True):
        if e.kind == KIND_QUANTIZED:
            quantized[e.name] = _quantized_tensor(e, secs, p)
        else:
            raw[e.name] = secs[0].view("<f4").astype(np.float32).reshape(e.shape)
    return quantized, raw, metadata, _accounting(entries, table_len, meta_len)
