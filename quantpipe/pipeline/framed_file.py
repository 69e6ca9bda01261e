"""The framing quantpipe's binary weight files share (`model.btc`, `model.mp.qpmix`).

A 40-byte preamble (6-byte magic, uint16 version, entry count, table, metadata and data
lengths, CRC32s of table and metadata, the preamble's own CRC32), a table of entries,
UTF-8 JSON metadata, then each entry's data sections back to back, each covered by a
CRC32 stored in its entry. Little-endian. The formats differ in their magic, version and
entries (`btc/table.py`, `mixed/packed.py`); reading checks everything here before a
format parses a byte of its sections, and any damage is one CorruptArtifactError.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from quantpipe.errors import CorruptArtifactError, QuantpipeError
from quantpipe.pipeline.atomic import atomic_path

_PRE = struct.Struct("<6sHIIIQIII")
PREAMBLE_BYTES = _PRE.size  # 40


class FramedEntry(Protocol):
    """What the framing needs of a table entry."""

    @property
    def name(self) -> str: ...

    @property
    def crcs(self) -> tuple[int, ...]: ...

    def section_lengths(self) -> tuple[int, ...]: ...

    def pack(self) -> bytes: ...


E = TypeVar("E", bound=FramedEntry)


@dataclass(frozen=True)
class Framing:
    """One file format: its magic and version, and how its errors read."""

    magic: bytes
    version: int
    what: str  # e.g. "BTC container", in messages
    corrupt: Callable[[str, str], CorruptArtifactError]  # (path, what is wrong) -> error
    rewrite: str  # what to do about a file of another version


@dataclass(frozen=True)
class Framed:
    """A verified file: its entries, metadata and every entry's sections (uint8 views)."""

    entries: list[Any]
    metadata: dict[str, Any]
    sections: list[list[np.ndarray]]
    table_len: int
    meta_len: int


def bytes_view(x: np.ndarray | bytes | memoryview) -> memoryview:
    """Zero-copy byte view of a contiguous array or a bytes-like object."""
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x).reshape(-1).view(np.uint8).data
    return memoryview(x).cast("B")


def crc32(x: np.ndarray | bytes | memoryview) -> int:
    return zlib.crc32(bytes_view(x)) & 0xFFFFFFFF


def check_storable(name: str, shape: tuple[int, ...], max_ndim: int, max_dim: int) -> None:
    """A name and shape the table can hold, or a clear error."""
    if (
        len(name.encode("utf-8")) > 0xFFFF
        or len(shape) > max_ndim
        or max(shape, default=0) > max_dim
    ):
        raise QuantpipeError(
            f"tensor {name[:80]!r} cannot be stored: names are limited to 65535 UTF-8 bytes, "
            f"shapes to {max_ndim} dimensions of at most {max_dim} (got {len(shape)} "
            f"dimensions, the largest {max(shape, default=0)})"
        )


def write_framed(
    path: str | os.PathLike[str],
    framing: Framing,
    entries: Sequence[FramedEntry],
    sections: Sequence[np.ndarray],
    metadata: Mapping[str, Any],
) -> tuple[int, int]:
    """Write the file atomically; returns (table length, metadata length) in bytes."""
    try:
        meta = json.dumps(dict(metadata), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise QuantpipeError(f"{framing.what} metadata is not JSON-serialisable: {e}") from None
    table = b"".join(e.pack() for e in entries)
    data_len = sum(s.nbytes for s in sections)
    fields = (len(entries), len(table), len(meta), data_len, crc32(table), crc32(meta))
    head = _PRE.pack(framing.magic, framing.version, *fields, 0)[:-4]
    parts: list[bytes | np.ndarray] = [head + struct.pack("<I", crc32(head)), table, meta]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for part in [*parts, *sections]:
            f.write(bytes_view(part))
    return len(table), len(meta)


def read_framed(
    path: str | os.PathLike[str],
    framing: Framing,
    parse_table: Callable[[bytes, int, str], list[E]],
) -> Framed:
    """Read and verify preamble, table, metadata and every section's CRC.

    `parse_table(table bytes, entry count, path)` turns the table into the format's
    entries (raising `framing.corrupt` on nonsense)."""
    p = str(path)
    try:
        buf = Path(path).read_bytes()
    except OSError as err:
        raise QuantpipeError(f"cannot read {framing.what} {p}: {err.strerror or err}") from None
    _, _, count, table_len, meta_len, _, table_crc, meta_crc, _ = _check_preamble(buf, p, framing)
    table = buf[PREAMBLE_BYTES : PREAMBLE_BYTES + table_len]
    meta = buf[PREAMBLE_BYTES + table_len : PREAMBLE_BYTES + table_len + meta_len]
    if crc32(table) != table_crc:
        raise framing.corrupt(p, "tensor table CRC mismatch")
    if crc32(meta) != meta_crc:
        raise framing.corrupt(p, "metadata CRC mismatch")
    metadata = _parse_metadata(meta, p, framing)
    entries = parse_table(table, count, p)
    data = memoryview(buf)[PREAMBLE_BYTES + table_len + meta_len :]
    sections = _section_views(entries, data, p, framing)
    return Framed(entries, metadata, sections, table_len, meta_len)


class TableCursor:
    """Sequential reader over a table's bytes; running short is corruption."""

    def __init__(
        self, buf: bytes, path: str, corrupt: Callable[[str, str], CorruptArtifactError]
    ) -> None:
        self.buf, self.pos, self.path, self.corrupt = buf, 0, path, corrupt

    def take(self, st: struct.Struct | str) -> tuple[int, ...]:
        """Unpack `st` (a Struct, or a little-endian format without its `<`)."""
        st = st if isinstance(st, struct.Struct) else struct.Struct("<" + st)
        return st.unpack(self.raw(st.size))

    def name(self) -> str:
        """A uint16 length, then that many bytes of UTF-8."""
        (length,) = self.take("H")
        try:
            return self.raw(length).decode("utf-8")
        except UnicodeDecodeError:
            raise self.corrupt(self.path, "a tensor name is not valid UTF-8") from None

    def raw(self, size: int) -> bytes:
        if self.pos + size > len(self.buf):
            raise self.corrupt(self.path, "the tensor table ends in the middle of an entry")
        self.pos += size
        return self.buf[self.pos - size : self.pos]


def parse_entries(
    buf: bytes,
    count: int,
    path: str,
    corrupt: Callable[[str, str], CorruptArtifactError],
    parse_entry: Callable[[TableCursor], E],
) -> list[E]:
    """`count` entries filling `buf` exactly, with distinct names."""
    cur = TableCursor(buf, path, corrupt)
    entries = [parse_entry(cur) for _ in range(count)]
    if cur.pos != len(buf):
        raise corrupt(path, f"{len(buf) - cur.pos} unexpected bytes after the tensor table")
    if len({e.name for e in entries}) != len(entries):
        raise corrupt(path, "the tensor table names a tensor twice")
    return entries


def _check_preamble(buf: bytes, path: str, framing: Framing) -> tuple[int, ...]:
    """Magic, version, preamble CRC and exact file size; returns the preamble fields."""
    magic = framing.magic
    if not buf or buf[:6] != magic[: len(buf[:6])]:
        raise framing.corrupt(path, f"wrong magic {buf[:6]!r} (expected {magic!r})")
    if len(buf) >= 8:
        (version,) = struct.unpack_from("<H", buf, 6)
        if version != framing.version:
            raise CorruptArtifactError(
                f"{path}: {framing.what} format version {version}; this quantpipe reads "
                f"version {framing.version}. {framing.rewrite}"
            )
    if len(buf) < PREAMBLE_BYTES:
        raise framing.corrupt(
            path, f"only {len(buf)} bytes, shorter than the {PREAMBLE_BYTES}-byte preamble"
        )
    fields = _PRE.unpack_from(buf)
    if crc32(buf[: PREAMBLE_BYTES - 4]) != fields[-1]:
        raise framing.corrupt(path, "preamble CRC mismatch")
    table_len, meta_len, data_len = fields[3:6]
    expected = PREAMBLE_BYTES + table_len + meta_len + data_len
    if len(buf) != expected:
        raise framing.corrupt(path, f"file has {len(buf)} bytes, its preamble says {expected}")
    return fields


def _parse_metadata(meta: bytes, path: str, framing: Framing) -> dict[str, Any]:
    # ValueError covers bad UTF-8, bad JSON and integers past Python's digit limit;
    # json raises RecursionError for nesting deeper than the interpreter's recursion limit.
    try:
        obj = json.loads(meta.decode("utf-8"))
    except (ValueError, RecursionError):
        raise framing.corrupt(path, "metadata is not valid UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise framing.corrupt(path, "metadata is not a JSON object")
    return obj


def _section_views(
    entries: Sequence[FramedEntry], data: memoryview, path: str, framing: Framing
) -> list[list[np.ndarray]]:
    """Split the data region per entry and section; check lengths and every CRC."""
    lengths = [e.section_lengths() for e in entries]
    if sum(sum(x) for x in lengths) != len(data):
        raise framing.corrupt(path, "the tensor table does not account for the data region")
    out, pos = [], 0
    for e, lens in zip(entries, lengths, strict=True):
        secs = []
        for i, (size, crc) in enumerate(zip(lens, e.crcs, strict=True)):
            view = data[pos : pos + size]
            if crc32(view) != crc:
                raise framing.corrupt(path, f"CRC mismatch in section {i} of tensor {e.name!r}")
            secs.append(np.frombuffer(view, dtype=np.uint8))
            pos += size
        out.append(secs)
    return out
