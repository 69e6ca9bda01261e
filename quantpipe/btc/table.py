"""The container's tensor table: one packed entry per tensor (see format.md).

Pure (de)serialisation of entries plus the section lengths they imply; integrity
failures raise `CorruptArtifactError` naming the file.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from quantpipe.btc.encoded import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, n_blocks_for
from quantpipe.btc.packing import packed_len
from quantpipe.errors import CorruptArtifactError
from quantpipe.pipeline.framed_file import TableCursor, parse_entries

KIND_BTC = 1
KIND_RAW = 2

#: dtype code -> little-endian numpy dtype of the stored data.
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),
    2: np.dtype("<i8"),
    3: np.dtype("<i4"),
    4: np.dtype("<i2"),
    5: np.dtype("i1"),
    6: np.dtype("u1"),
    7: np.dtype("?"),
}
CODES = {dt: code for code, dt in DTYPES.items()}

_NAME_LEN = struct.Struct("<H")
_HEAD = struct.Struct("<BBB")  # kind, dtype, ndim
_DIM = struct.Struct("<Q")
_BTC = struct.Struct("<IBBQ5I")  # B, low_bits, high_bits, n_high_weights, 5 CRCs
_RAW = struct.Struct("<I")  # CRC of the data

#: Fixed bytes of a coded / raw entry, on top of the name and 8 bytes per dimension.
BTC_ENTRY_FIXED = _NAME_LEN.size + _HEAD.size + _BTC.size
RAW_ENTRY_FIXED = _NAME_LEN.size + _HEAD.size + _RAW.size
MAX_NDIM = 32


@dataclass(frozen=True)
class Entry:
    """One table entry. For raw tensors block_size/bits/n_high are 0 and crcs has one item."""

    name: str
    kind: int
    dtype: int
    shape: tuple[int, ...]
    crcs: tuple[int, ...]
    block_size: int = 0
    low_bits: int = 0
    high_bits: int = 0
    n_high: int = 0

    @property
    def n(self) -> int:
        """Element count."""
        return math.prod(self.shape)

    def section_lengths(self) -> tuple[int, ...]:
        """Bytes of each data section: 5 for a coded tensor, 1 for a raw one."""
        if self.kind == KIND_RAW:
            return (self.n * DTYPES[self.dtype].itemsize,)
        nb = n_blocks_for(self.n, self.block_size)
        low = packed_len(self.n - self.n_high, self.low_bits)
        high = packed_len(self.n_high, self.high_bits)
        return (packed_len(nb, 1), 2 * nb, 2 * nb, low, high)

    def pack(self) -> bytes:
        """The entry's bytes."""
        name = self.name.encode("utf-8")
        parts = [
            _NAME_LEN.pack(len(name)),
            name,
            _HEAD.pack(self.kind, self.dtype, len(self.shape)),
        ]
        parts += [_DIM.pack(d) for d in self.shape]
        if self.kind == KIND_BTC:
            parts.append(
                _BTC.pack(self.block_size, self.low_bits, self.high_bits, self.n_high, *self.crcs)
            )
        else:
            parts.append(_RAW.pack(*self.crcs))
        return b"".join(parts)


def corrupt(path: str, what: str) -> CorruptArtifactError:
    """The one error for a damaged container: what is wrong, which file, what to do."""
    return CorruptArtifactError(
        f"{path}: {what}. The file is damaged, truncated or not a quantpipe BTC container; "
        "re-run the btc stage to rewrite it"
    )


def parse_table(buf: bytes, n_tensors: int, path: str) -> list[Entry]:
    """Parse and validate `n_tensors` entries filling `buf` exactly."""
    return parse_entries(buf, n_tensors, path, corrupt, _parse_entry)


def _parse_entry(cur: TableCursor) -> Entry:
    name = cur.name()
    kind, dtype, ndim = cur.take(_HEAD)
    if ndim > MAX_NDIM or dtype not in DTYPES or kind not in (KIND_BTC, KIND_RAW):
        raise corrupt(cur.path, f"tensor {name!r} has kind {kind}, dtype {dtype}, ndim {ndim}")
    shape = tuple(cur.take(_DIM)[0] for _ in range(ndim))
    if kind == KIND_RAW:
        return Entry(name, kind, dtype, shape, crcs=cur.take(_RAW))
    b, lb, hb, n_high, *crcs = cur.take(_BTC)
    entry = Entry(name, kind, dtype, shape, tuple(crcs), b, lb, hb, n_high)
    ok = MIN_BLOCK_SIZE <= b <= MAX_BLOCK_SIZE and 1 <= lb < hb <= 8 and dtype == 1
    if not ok or entry.n < 1 or n_high > entry.n:
        raise corrupt(cur.path, f"coded tensor {name!r} has an invalid entry: {entry}")
    return entry
