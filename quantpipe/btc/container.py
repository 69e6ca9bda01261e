"""The `model.btc` container: coded weights plus all other tensors in one file.

The byte-by-byte layout is in `format.md` next to this module. In short: a 40-byte
preamble (magic b"QPBTC\\0", uint16 version, section sizes, CRC32s of table, metadata
and preamble), a packed tensor table, UTF-8 JSON metadata, then per tensor its data
sections back to back, each covered by a CRC32 stored in the table. Little-endian.

Size on disk, exactly (tested):

    file_bytes = sum_coded [ceil(nb/8) + 4 nb + ceil(n_low lb/8) + ceil(n_high hb/8)]
               + sum_raw n * itemsize
               + 40 + meta_len
               + sum_coded (39 + name_len + 8 ndim) + sum_raw (9 + name_len + 8 ndim)

The first line is b_eff * n / 8 with every section rounded up to whole bytes; the
last two lines are the overhead (`overhead_bytes`): 40 bytes fixed, the metadata, and
39 (coded) or 9 (raw) bytes per tensor plus its name and 8 bytes per dimension.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantpipe.btc.encoded import HEADER_BITS_PER_BLOCK, EncodedTensor, block_lengths, n_blocks_for
from quantpipe.btc.model import decode_model
from quantpipe.btc.packing import (
    merge_streams,
    pack_bitmap,
    pack_codes,
    split_streams,
    unpack_bitmap,
    unpack_codes,
)
from quantpipe.btc.table import (
    CODES,
    DTYPES,
    KIND_BTC,
    KIND_RAW,
    MAX_NDIM,
    Entry,
    corrupt,
    parse_table,
)
from quantpipe.errors import QuantpipeError
from quantpipe.pipeline.framed_file import (
    PREAMBLE_BYTES,
    Framing,
    check_storable,
    crc32,
    read_framed,
    write_framed,
)

MAGIC = b"QPBTC\0"
_MAX_BYTES = int(np.iinfo(np.intp).max)  # numpy's limit on an array's size in bytes
VERSION = 1
FRAMING = Framing(
    MAGIC, VERSION, "BTC container", corrupt,
    "Re-run the btc stage with this quantpipe, or use the quantpipe that wrote the file",
)  # fmt: skip


@dataclass(frozen=True)
class ContainerAccounting:
    """Where the bytes of a container go, and the coded weights' bit rates."""

    file_bytes: int
    coded_bytes: int  # all sections of coded tensors (headers + payloads)
    raw_bytes: int  # all other tensors
    overhead_bytes: int  # preamble + table + metadata
    n_coded: int  # coded weights
    payload_bits: int
    header_bits: int
    b_avg: float
    b_eff: float


@dataclass(frozen=True, eq=False)
class LoadedContainer:
    """A container's content before decoding."""

    encoded: dict[str, EncodedTensor]
    others: dict[str, np.ndarray]
    metadata: dict[str, Any]
    accounting: ContainerAccounting


def _btc_sections(enc: EncodedTensor) -> list[np.ndarray]:
    low, high = split_streams(enc.codes, enc.high, enc.block_size)
    return [
        pack_bitmap(enc.high),
        enc.mins.astype("<f2").view(np.uint8),
        enc.maxs.astype("<f2").view(np.uint8),
        pack_codes(low, enc.low_bits),
        pack_codes(high, enc.high_bits),
    ]


def _raw_array(name: str, value: Any) -> np.ndarray:
    """Stored form of a non-coded tensor: floats as float32, integers and bools as they are."""
    arr = np.asarray(value)
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype("<f4")
    dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    if dt not in CODES:
        allowed = ", ".join(str(d) for d in DTYPES.values())
        raise QuantpipeError(
            f"tensor {name!r} has dtype {arr.dtype}; the container stores {allowed}"
        )
    return np.asarray(arr, dtype=dt, order="C")  # ascontiguousarray would make 0-d 1-d


def _entries_and_sections(
    encoded: Mapping[str, EncodedTensor], others: Mapping[str, Any]
) -> tuple[list[Entry], list[np.ndarray]]:
    entries, sections = [], []
    for name, enc in encoded.items():
        check_storable(name, enc.shape, MAX_NDIM, 2**64 - 1)
        secs = _btc_sections(enc)
        entries.append(
            Entry(
                name=name,
                kind=KIND_BTC,
                dtype=CODES[np.dtype("<f4")],
                shape=enc.shape,
                crcs=tuple(crc32(s) for s in secs),
                block_size=enc.block_size,
                low_bits=enc.low_bits,
                high_bits=enc.high_bits,
                n_high=enc.n_high_weights,
            )
        )
        sections += secs
    for name, value in others.items():
        arr = _raw_array(name, value)
        check_storable(name, arr.shape, MAX_NDIM, 2**64 - 1)
        data = arr.reshape(-1).view(np.uint8)
        entries.append(Entry(name, KIND_RAW, CODES[arr.dtype], arr.shape, (crc32(data),)))
        sections.append(data)
    return entries, sections


def write_container(
    path: str | os.PathLike[str],
    encoded: Mapping[str, EncodedTensor],
    other_tensors: Mapping[str, Any],
    metadata: Mapping[str, Any],
) -> ContainerAccounting:
    """Write coded tensors, the other tensors and JSON metadata to `path`, atomically.

    Args:
        encoded: name -> coded tensor.
        other_tensors: name -> array (non-coded parameters and buffers); floats are
            stored as float32, int64/int32/int16/int8/uint8/bool as they are.
        metadata: a JSON-serialisable dict, returned as is by `read_container`.
    """
    clash = set(encoded) & set(other_tensors)
    if clash:
        raise QuantpipeError(f"tensors both coded and raw: {sorted(clash)[:5]}")
    entries, sections = _entries_and_sections(encoded, other_tensors)
    table_len, meta_len = write_framed(path, FRAMING, entries, sections, metadata)
    return _accounting(entries, table_len, meta_len)


def _accounting(entries: list[Entry], table_len: int, meta_len: int) -> ContainerAccounting:
    coded = [e for e in entries if e.kind == KIND_BTC]
    n = sum(e.n for e in coded)
    payload = sum(e.n_high * e.high_bits + (e.n - e.n_high) * e.low_bits for e in coded)
    header = sum(HEADER_BITS_PER_BLOCK * n_blocks_for(e.n, e.block_size) for e in coded)
    coded_bytes = sum(sum(e.section_lengths()) for e in coded)
    raw_bytes = sum(sum(e.section_lengths()) for e in entries if e.kind == KIND_RAW)
    overhead = PREAMBLE_BYTES + table_len + meta_len
    return ContainerAccounting(
        file_bytes=coded_bytes + raw_bytes + overhead,
        coded_bytes=coded_bytes,
        raw_bytes=raw_bytes,
        overhead_bytes=overhead,
        n_coded=n,
        payload_bits=payload,
        header_bits=header,
        b_avg=payload / n if n else 0.0,
        b_eff=(payload + header) / n if n else 0.0,
    )


def _coded_tensor(e: Entry, secs: list[np.ndarray], path: str) -> EncodedTensor:
    bitmap, mins, maxs, low, high = secs
    flags = unpack_bitmap(bitmap, n_blocks_for(e.n, e.block_size))
    if int(block_lengths(e.n, e.block_size)[flags].sum()) != e.n_high:
        raise corrupt(path, f"tensor {e.name!r}: mode bitmap disagrees with its table entry")
    lo = mins.view("<f2").astype(np.float16)
    hi = maxs.view("<f2").astype(np.float16)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (lo <= hi).all()):
        raise corrupt(path, f"tensor {e.name!r} has non-finite or inverted block ranges")
    codes = merge_streams(
        unpack_codes(low, e.low_bits, e.n - e.n_high),
        unpack_codes(high, e.high_bits, e.n_high),
        flags,
        e.n,
        e.block_size,
    )
    return EncodedTensor(e.shape, e.block_size, flags, lo, hi, codes, e.low_bits, e.high_bits)


def _check_shape(e: Entry, path: str) -> None:
    """Refuse a shape no array can have. The data-length check bounds a tensor's element
    count but not the other dimensions of a zero-size tensor: (0, 2**63) is 0 bytes on
    disk, and numpy refuses to make it. (The table parser, btc/table.py, is where this
    belongs; it is checked here, before any array is made.)"""
    nonzero = math.prod(d for d in e.shape if d)
    if max(e.shape, default=0) > _MAX_BYTES or nonzero * DTYPES[e.dtype].itemsize > _MAX_BYTES:
        raise corrupt(path, f"tensor {e.name!r} has shape {e.shape}, which no array can have")


def _raw_tensor(e: Entry, sec: np.ndarray) -> np.ndarray:
    dt = DTYPES[e.dtype]
    return sec.view(dt).astype(dt.newbyteorder("="), copy=True).reshape(e.shape)


def load_container(path: str | os.PathLike[str]) -> LoadedContainer:
    """Read and verify a container without decoding the coded tensors.

    Raises:
        CorruptArtifactError: wrong magic or version, truncated, extended or damaged.
        QuantpipeError: the file cannot be read at all.
    """
    p = str(path)
    framed = read_framed(path, FRAMING, parse_table)
    encoded, others = {}, {}
    for ent, secs in zip(framed.entries, framed.sections, strict=True):
        _check_shape(ent, p)
        if ent.kind == KIND_BTC:
            encoded[ent.name] = _coded_tensor(ent, secs, p)
        else:
            others[ent.name] = _raw_tensor(ent, secs[0])
    accounting = _accounting(framed.entries, framed.table_len, framed.meta_len)
    return LoadedContainer(encoded, others, framed.metadata, accounting)


def read_container(
    path: str | os.PathLike[str], *, workers: int | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any], ContainerAccounting]:
    """Read, verify and decode a container.

    Returns:
        (state dict: coded tensors decoded to float32 then the other tensors,
        metadata as written, accounting).
    """
    loaded = load_container(path)
    state = decode_model(loaded.encoded, workers=workers)
    state.update(loaded.others)
    return state, loaded.metadata, loaded.accounting
