"""Hypothesis strategies for every on-disk format quantpipe reads, and how to parse each.

`FORMATS` maps a format name to `(strategy of one case, callable that parses the case)`.
The contract under test: parsing any case either succeeds or raises `QuantpipeError`
with a one-line message (naming the file, for the file formats); any other exception,
a hang or a giant allocation is a reader bug. `run_case` applies that oracle; the pytest
file (tests/fuzz/test_fuzz_parsers.py) and the benchmark (tests/bench/bench_fuzz.py)
both use it, so they test the same thing at different budgets.

Random bytes rarely get past a magic number and a CRC, so each binary format is fuzzed
four ways: random bytes; byte-level mutations of valid files (bit flips, truncation,
splices, interesting integers written over fields); the same mutations with the
preamble's CRCs (and optionally its data length) recomputed, so the damage reaches the
table parser; and files forged entry by entry with every CRC right, so nonsense shapes,
kinds, bit widths and section contents reach the decoders. JSON formats are fuzzed as
valid documents with fields replaced, deleted or added (arbitrary JSON values and raw
literals such as 1e400 or a 5000-digit integer), plus random text and deep nesting.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import hashlib
import json
import math
import os
import random
import re
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

from quantpipe.errors import QuantpipeError

#: Every file a parse callable writes lives under a directory whose name holds this, so
#: the oracle can check that a refusal names the file.
MARKER = "quantpipe-fuzzcase"

Case = Any
Draw = Callable[[st.SearchStrategy[Any]], Any]


@functools.cache
def scratch() -> Path:
    """One temporary directory per process, reused by every case and removed at exit; in
    memory (/dev/shm) where there is one: writing a small file on a busy disk costs more
    than parsing it."""
    shm = Path("/dev/shm")
    where = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix=MARKER + "-", dir=where))
    atexit.register(shutil.rmtree, path, True)
    return path


# --------------------------------------------------------------------------------------
# Byte-level mutation of valid files
# --------------------------------------------------------------------------------------

#: Integers that sit on the edges of the fields' types: where length checks go wrong.
INTERESTING = (0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x10000,
               2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1)  # fmt: skip
#: Offsets of the framed files' preamble fields (count, lengths, CRCs), worth aiming at.
PREAMBLE_OFFSETS = (6, 8, 12, 16, 20, 28, 32, 36)


@functools.cache
def ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    """st.integers(lo, hi), built once: composites draw from the same few strategies
    thousands of times, and building and validating a strategy per draw costs more than
    the parse under test."""
    return st.integers(lo, hi)


@functools.cache
def upto(max_size: int, min_size: int = 0) -> st.SearchStrategy[bytes]:
    """st.binary(min_size, max_size), built once."""
    return st.binary(min_size=min_size, max_size=max_size)


def exact(size: int) -> st.SearchStrategy[bytes]:
    """Exactly `size` bytes."""
    return upto(size, size)


@functools.cache
def choice(*values: Any) -> st.SearchStrategy[Any]:
    """st.sampled_from(values), built once."""
    return st.sampled_from(values)


@st.composite
def _weighted(draw: Draw, *branches: tuple[int, st.SearchStrategy[Any]]) -> Any:
    """One of `branches`, chosen with the given integer weights (st.one_of weighs its
    branches equally, which spends most cases on the rare kinds of damage)."""
    pick = draw(ints(0, sum(w for w, _ in branches) - 1))
    for weight, strategy in branches:
        if pick < weight:
            return draw(strategy)
        pick -= weight
    raise AssertionError("unreachable")


@functools.cache
def weighted(*branches: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of `branches`, chosen with the given integer weights."""
    return _weighted(*branches)


@functools.cache
def mostly(common: Any, rare: st.SearchStrategy[Any], weight: int = 9) -> st.SearchStrategy[Any]:
    """`common` weight times in weight + 1, else a value of `rare`."""
    return weighted((weight, st.just(common)), (1, rare))


def _index(rnd: random.Random, buf: bytearray | str) -> int:
    """A position in `buf`, uniform (hypothesis's integers favour their lower bound, which
    would spend a quarter of the mutations on the magic number)."""
    return rnd.randint(0, len(buf))


def _flip(draw: Draw, rnd: random.Random, buf: bytearray) -> bytearray:
    if buf:
        buf[rnd.randrange(len(buf))] ^= 1 << draw(ints(0, 7))
    return buf


def _set_byte(draw: Draw, rnd: random.Random, buf: bytearray) -> bytearray:
    if buf:
        buf[rnd.randrange(len(buf))] = draw(ints(0, 255))
    return buf


def _truncate(draw: Draw, rnd: random.Random, buf: bytearray) -> bytearray:
    return buf[: _index(rnd, buf)]


def _delete(draw: Draw, rnd: random.Random, buf: bytearray) -> bytearray:
    i = _index(rnd, buf)
    del buf[i : i + draw(ints(1, 64))]
    return buf


def _insert(draw: Draw, rnd: random.Random, buf: bytearray) -> bytearray:
    i = _index(rnd, buf)
    buf[i:i] = draw(upto(64, 1))
    return buf


def _duplicate(draw: Draw, rnd: random.Random, buf: bytearray) -> bytearray:
    """Copy a span elsewhere: a splice of the file with itself (entries, JSON, sections)."""
    i, j = sorted((_index(rnd, buf), _index(rnd, buf)))
    k = _index(rnd, buf)
    buf[k:k] = buf[i:j]
    return buf


def _integer(draw: Draw, rnd: random.Random, buf: bytearray) -> bytearray:
    """An interesting little-endian integer written over a (preamble or random) field."""
    width = draw(choice(1, 2, 4, 8))
    value = draw(st.one_of(choice(*INTERESTING), ints(0, 2 ** (8 * width) - 1)))
    i = rnd.choice(PREAMBLE_OFFSETS) if rnd.random() < 0.5 else _index(rnd, buf)
    buf[i : i + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
    return buf


RANDOMS = st.randoms(use_true_random=True)  # uniform positions (see _index)
MUTATIONS = (_flip, _set_byte, _truncate, _delete, _insert, _duplicate, _integer)


@st.composite
def mutated(draw: Draw, seeds: st.SearchStrategy[bytes], max_mutations: int = 4) -> bytes:
    """A valid file (from `seeds`) with 1..max_mutations byte-level mutations."""
    buf = bytearray(draw(seeds))
    rnd = draw(RANDOMS)
    for _ in range(draw(ints(1, max_mutations))):
        buf = draw(choice(*MUTATIONS))(draw, rnd, buf)
    return bytes(buf)


# --------------------------------------------------------------------------------------
# Framed binary files (model.btc, *.qpmix)
# --------------------------------------------------------------------------------------

_PRE = struct.Struct("<6sHIIIQIII")  # framed_file's preamble; restated so a change shows


def crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def frame(magic: bytes, version: int, count: int, table: bytes, meta: bytes, data: bytes) -> bytes:
    """A framed file with every preamble field and CRC right for the given parts."""
    head = _PRE.pack(magic, version, count, len(table), len(meta), len(data),
                     crc(table), crc(meta), 0)[:-4]  # fmt: skip
    return head + struct.pack("<I", crc(head)) + table + meta + data


def refit(buf: bytes, fix_size: bool) -> bytes:
    """Recompute a (mutated) file's table, metadata and preamble CRCs over the regions its
    preamble declares, and with `fix_size` its data length to what the file holds, so the
    damage gets past the integrity checks into the table and metadata parsers."""
    if len(buf) < _PRE.size:
        return buf
    magic, version, count, table_len, meta_len, data_len, *_ = _PRE.unpack_from(buf)
    body = buf[_PRE.size :]
    table, meta = body[:table_len], body[table_len : table_len + meta_len]
    if fix_size and len(body) >= table_len + meta_len:
        data_len = len(body) - table_len - meta_len
    head = _PRE.pack(magic, version, count, table_len, meta_len, data_len,
                     crc(table), crc(meta), 0)[:-4]  # fmt: skip
    return head + struct.pack("<I", crc(head)) + body


def framed_files(
    seeds: st.SearchStrategy[bytes], magic: bytes, forged: st.SearchStrategy[bytes]
) -> st.SearchStrategy[bytes]:
    """Random bytes (bare, or after the magic), mutated seeds, refitted mutated seeds, and
    (half the cases: the deepest reaching) forged files."""
    return weighted(
        (1, upto(256)),
        (1, upto(256).map(lambda b: magic + b)),
        (3, mutated(seeds)),
        (3, st.tuples(mutated(seeds), st.booleans()).map(lambda t: refit(*t))),
        (8, forged),
    )


@functools.cache
def _dim(max_dim: int) -> st.SearchStrategy[int]:
    edges = [d for d in (0, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1) if d <= max_dim]
    return weighted((8, ints(0, 6)), (1, st.sampled_from(edges)), (1, ints(0, max_dim)))


@functools.cache
def dims(max_dim: int) -> st.SearchStrategy[list[int]]:
    """Shapes: mostly small, some with huge or zero dimensions, some with too many."""
    return weighted(
        (9, st.lists(_dim(max_dim), max_size=4)),
        (1, st.lists(ints(0, 2), min_size=30, max_size=34)),
    )


@functools.cache
def section(size: int) -> st.SearchStrategy[bytes]:
    """The bytes of a section the table says is `size` long, or of another length."""
    other = upto(32)
    return weighted((9, exact(size)), (1, other)) if size <= 1024 else other


@functools.cache
def names() -> st.SearchStrategy[bytes]:
    """Tensor names as stored: a few fixed ones (so duplicates happen), any text, any
    bytes (invalid UTF-8 included)."""
    fixed = st.sampled_from([b"w", b"conv.weight", b"fc.bias", "ünï".encode()])
    return weighted((8, st.text(max_size=8).map(str.encode)), (1, fixed), (1, upto(6)))


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=10),
    st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**400, "tensorrt", "batch", "float32"]),
)
#: Any JSON value (NaN and the infinities included: Python's json reads them).
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
#: Number literals json.dumps never writes but a file may hold.
RAW_LITERALS = ("NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "-0", "0e0",
                "9" * 5000, "-" + "9" * 5000, "0." + "1" * 5000, "1" + "0" * 400)  # fmt: skip


@functools.cache
def deep_nesting() -> st.SearchStrategy[bytes]:
    """Nested arrays or objects, up to 100 000 deep: past any recursion limit."""
    return st.builds(
        lambda depth, kind: (kind[0] * depth + "1" + kind[1] * depth).encode(),
        ints(1, 100_000),
        st.sampled_from([("[", "]"), ('{"a":', "}")]),
    )


@functools.cache
def metadata_bytes() -> st.SearchStrategy[bytes]:
    """A framed file's metadata: a JSON object, another JSON value, or bytes."""
    return weighted(
        (12, st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=4).map(_dumps)),
        (1, JSON_VALUES.map(_dumps)),
        (1, upto(16)),
        (1, st.sampled_from(RAW_LITERALS).map(str.encode)),
        (1, deep_nesting()),
    )


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


FLOAT_LISTS = {w: st.lists(st.floats(width=w), min_size=1, max_size=8) for w in (16, 32)}
BOOLS = st.booleans()


def _floats_as(dtype: str, count: int, draw: Draw, sort_pairs: bool = False) -> bytes:
    """`count` values of `dtype` tiled from a few drawn floats (cheap for many blocks);
    `sort_pairs` orders each (min, max) pair, as a valid file has them."""
    width = 16 if dtype == "<f2" else 32
    values = draw(FLOAT_LISTS[width])
    arr = np.resize(np.array(values, dtype=dtype), count)
    if sort_pairs and draw(BOOLS):
        arr = np.sort(arr.reshape(-1, 2), axis=1).reshape(-1)
    return arr.astype(dtype).tobytes()


# --- model.btc --------------------------------------------------------------------------


def _btc_entry(name: bytes, kind: int, dtype: int, shape: list[int], tail: bytes) -> bytes:
    head = struct.pack("<H", len(name)) + name + struct.pack("<BBB", kind, dtype, len(shape))
    return head + b"".join(struct.pack("<Q", d) for d in shape) + tail


def _sane(draw: Draw) -> bool:
    """Whether an entry is forged consistent (about 4 in 5: those reach the decoders) or
    with some fields anything (the table parser's checks)."""
    return bool(draw(ints(0, 4)) != 4)


def _field(
    draw: Draw, sane: bool, valid: st.SearchStrategy[Any], anything: st.SearchStrategy[Any]
) -> Any:
    """A valid value for a sane entry; for another, a valid value or anything."""
    return draw(valid if sane else weighted((1, valid), (1, anything)))


def _exact(draw: Draw, sane: bool, size: int) -> bytes:
    """A section of the size its entry implies (sane), or maybe of another size."""
    if sane and size <= 4096:
        return bytes(draw(exact(size)))
    return bytes(draw(section(size)))


def _name(draw: Draw, sane: bool) -> bytes:
    return bytes(draw(TEXT_NAMES if sane else names()))


TEXT_NAMES = st.text(max_size=8).map(str.encode)
SMALL_SHAPES = st.lists(ints(1, 12), min_size=1, max_size=3)  # weights that decode
BYTE_PAIRS = st.tuples(ints(0, 255), ints(0, 255))


@functools.cache
def _entry_lists(entry: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """Mostly 1..3 entries, sometimes none or up to 6."""
    return weighted((9, st.lists(entry, min_size=1, max_size=3)), (1, st.lists(entry, max_size=6)))


@st.composite
def btc_raw_entry(draw: Draw) -> tuple[bytes, list[bytes]]:
    """A raw (uncoded) tensor's entry and its one section, CRC right."""
    from quantpipe.btc.table import DTYPES, KIND_RAW

    sane = _sane(draw)
    dtype = _field(draw, sane, choice(*sorted(DTYPES)), ints(0, 255))
    shape = draw(dims(2**64 - 1))
    itemsize = DTYPES[dtype].itemsize if dtype in DTYPES else 1
    data = _exact(draw, sane, math.prod(shape) * itemsize)
    entry = _btc_entry(_name(draw, sane), KIND_RAW, dtype, shape, struct.pack("<I", crc(data)))
    return entry, [data]


@st.composite
def btc_coded_entry(draw: Draw) -> tuple[bytes, list[bytes]]:
    """A coded tensor's entry and its five sections (bitmap, mins, maxs, low and high
    code streams), CRCs right; consistent or not with the entry's fields."""
    from quantpipe.btc.encoded import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, block_lengths, n_blocks_for
    from quantpipe.btc.packing import packed_len
    from quantpipe.btc.table import KIND_BTC

    sane = _sane(draw)
    dtype = _field(draw, sane, choice(1), ints(0, 255))
    shape = draw(SMALL_SHAPES if sane else dims(2**64 - 1))
    b = _field(draw, sane, choice(2, 3, 8, 64, 65536), ints(0, 2**32 - 1))
    lb, hb = _field(
        draw,
        sane,
        choice((4, 8), (1, 2), (3, 6), (7, 8)),
        BYTE_PAIRS,
    )
    n = math.prod(shape)
    if 1 <= n <= 4096 and MIN_BLOCK_SIZE <= b <= MAX_BLOCK_SIZE and 1 <= lb < hb <= 8:
        nb = n_blocks_for(n, b)
        bitmap = draw(exact(packed_len(nb, 1)))
        flags = np.unpackbits(np.frombuffer(bitmap, np.uint8), count=nb, bitorder="little")
        true_high = int(block_lengths(n, b)[flags.astype(bool)].sum())
        n_high = _field(draw, sane, choice(true_high), ints(0, n + 1))
        if draw(ints(0, 3)) != 3:  # ordered (min, max) pairs: past the range check
            pairs = np.frombuffer(_floats_as("<f2", 2 * nb, draw, sort_pairs=True), "<f2")
            mins, maxs = pairs[0::2].tobytes(), pairs[1::2].tobytes()
        else:
            mins, maxs = _floats_as("<f2", nb, draw), _floats_as("<f2", nb, draw)
        low = _exact(draw, sane, max(packed_len(n - n_high, lb), 0))
        secs = [bitmap, mins, maxs, low, _exact(draw, sane, packed_len(n_high, hb))]
    else:
        n_high = draw(ints(0, 2**64 - 1))
        secs = [draw(upto(16)) for _ in range(5)]
    tail = struct.pack("<IBBQ5I", b, lb, hb, n_high, *(crc(s) for s in secs))
    return _btc_entry(_name(draw, sane), KIND_BTC, dtype, shape, tail), secs


def garbage_entry() -> st.SearchStrategy[tuple[bytes, list[bytes]]]:
    """Table bytes that are no entry at all, with a random section."""
    return st.tuples(upto(24), st.lists(upto(8), max_size=1))


@st.composite
def forged_framed(
    draw: Draw,
    magic: bytes,
    version: int,
    entry: st.SearchStrategy[tuple[bytes, list[bytes]]],
) -> bytes:
    """A framed file forged from entries (mostly 1..3), every CRC right; the entry count,
    magic, version and trailing data are occasionally wrong too."""
    entries = draw(_entry_lists(entry))
    table = b"".join(e for e, _ in entries)
    data = b"".join(s for _, secs in entries for s in secs)
    count = draw(mostly(len(entries), ints(0, 2**32 - 1)))
    magic = draw(mostly(magic, exact(6), weight=19))
    version = draw(mostly(version, ints(0, 0xFFFF), weight=19))
    extra = draw(mostly(b"", upto(8)))
    return frame(magic, version, count, table, draw(metadata_bytes()), data + extra)


@functools.cache
def btc_seeds() -> tuple[bytes, ...]:
    """Valid containers written by the module's own writer: coded tensors (partial last
    block, 3/6 bits, all-high), raw tensors of several dtypes (0-d included), an empty
    one."""
    from quantpipe.btc.codec import encode_tensor
    from quantpipe.btc.container import write_container

    rng = np.random.default_rng(0)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    variants: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = [
        (
            {
                "conv.weight": encode_tensor(w(4, 3, 3, 3), 16, tau=0.05),
                "odd.weight": encode_tensor(w(37), 8, tau=0.05, low_bits=3, high_bits=6),
            },
            {"conv.bias": w(4), "steps": np.array(7, np.int64), "mask": np.array([True, False])},
            {"note": "ünïcode", "policy": {"tau": 0.05, "block_size": 16}},
        ),
        (
            {"fc.weight": encode_tensor(w(5, 7), 4, tau=0.0)},
            {"lut": np.arange(3, dtype=np.uint8)},
            {},
        ),
        ({}, {}, {}),
    ]
    out = []
    for i, (encoded, others, meta) in enumerate(variants):
        path = scratch() / f"seed{i}.btc"
        write_container(path, encoded, others, meta)
        out.append(path.read_bytes())
    return tuple(out)


def btc_files() -> st.SearchStrategy[bytes]:
    from quantpipe.btc.container import MAGIC, VERSION

    seeds = st.deferred(lambda: st.sampled_from(btc_seeds()))
    entry = weighted((4, btc_raw_entry()), (5, btc_coded_entry()), (1, garbage_entry()))
    return framed_files(seeds, MAGIC, forged_framed(MAGIC, VERSION, entry))


def parse_btc(data: bytes) -> None:
    """Read, verify and decode the container (decoding included: damage may hide there)."""
    from quantpipe.btc.container import read_container

    path = scratch() / "model.btc"
    path.write_bytes(data)
    read_container(path, workers=1)


# --- *.qpmix -----------------------------------------------------------------------------


def _qpmix_entry(
    name: bytes, head: tuple[int, int, int], shape: list[int], crcs: list[int]
) -> bytes:
    kind, bits, axis = head
    packed = (
        struct.pack("<H", len(name)) + name + struct.pack("<BBBB", kind, bits, axis, len(shape))
    )
    return packed + struct.pack(f"<{len(shape)}I{len(crcs)}I", *shape, *crcs)


@st.composite
def qpmix_entry(draw: Draw) -> tuple[bytes, list[bytes]]:
    """A quantized or raw tensor's entry and its sections (CRCs right), consistent or not."""
    from quantpipe.btc.packing import packed_len
    from quantpipe.mixed.packed import KIND_QUANTIZED, KIND_RAW

    sane = _sane(draw)
    kind = _field(draw, sane, choice(KIND_QUANTIZED, KIND_RAW), ints(0, 255))
    if kind == KIND_QUANTIZED:
        shape = draw(SMALL_SHAPES if sane else dims(2**32 - 1))
        bits = _field(draw, sane, ints(2, 8), ints(0, 255))
        axis = _field(draw, sane, ints(0, max(len(shape) - 1, 0)), ints(0, 255))
        if (
            2 <= bits <= 8
            and axis < len(shape)
            and math.prod(shape) <= 4096
            and shape[axis] <= 1024
        ):
            scales = _floats_as("<f4", shape[axis], draw)
            if not sane or draw(BOOLS):
                scales = _exact(draw, sane, 4 * shape[axis])
            secs = [scales, _exact(draw, sane, packed_len(math.prod(shape), bits))]
        else:
            secs = [draw(upto(16)), draw(upto(16))]
    else:
        shape = draw(dims(2**32 - 1))
        bits, axis = _field(draw, sane, choice((0, 0)), BYTE_PAIRS)
        secs = [_exact(draw, sane, 4 * math.prod(shape))]
    entry = _qpmix_entry(_name(draw, sane), (kind, bits, axis), shape, [crc(s) for s in secs])
    return entry, secs


@functools.cache
def qpmix_seeds() -> tuple[bytes, ...]:
    """Valid packed files from write_packed at several widths, raw tensors, an empty one."""
    from quantpipe.mixed.packed import write_packed
    from quantpipe.mixed.packed_tensor import quantize_tensor

    rng = np.random.default_rng(1)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    variants: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = [
        (
            {
                "conv.weight": quantize_tensor(w(5, 3, 3, 3), 3, 0),
                "fc.weight": quantize_tensor(w(7, 13), 8, 1),
                "vector.weight": quantize_tensor(w(9), 2, 0),
            },
            {"conv.bias": w(5), "scalar": np.array(3.25, np.float32)},
            {"policy": {"bits": [2, 3, 8], "note": "ünïcode"}},
        ),
        ({"w": quantize_tensor(w(4, 4), 4, 0)}, {}, {}),
        ({}, {}, {}),
    ]
    out = []
    for i, (quantized, raw, meta) in enumerate(variants):
        path = scratch() / f"seed{i}.qpmix"
        write_packed(path, quantized, raw, meta)
        out.append(path.read_bytes())
    return tuple(out)


def qpmix_files() -> st.SearchStrategy[bytes]:
    from quantpipe.mixed.packed import MAGIC, VERSION

    seeds = st.deferred(lambda: st.sampled_from(qpmix_seeds()))
    entry = weighted((9, qpmix_entry()), (1, garbage_entry()))
    return framed_files(seeds, MAGIC, forged_framed(MAGIC, VERSION, entry))


def parse_qpmix(data: bytes) -> None:
    from quantpipe.mixed.packed import read_packed

    path = scratch() / "model.mp.qpmix"
    path.write_bytes(data)
    read_packed(path)


# --------------------------------------------------------------------------------------
# JSON documents (calibration tables, engine metadata)
# --------------------------------------------------------------------------------------

_LITERAL = "@@literal{}@@"


def _walk(draw: Draw, doc: Any) -> tuple[Any, Any]:
    """A random (container, key) inside `doc`, deeper ones as often as top-level fields;
    (None, None), the document itself, now and then."""
    parent, key, node = None, None, doc
    if draw(ints(0, 19)) == 19:
        return parent, key
    while isinstance(node, dict | list) and node:
        keys = list(node) if isinstance(node, dict) else range(len(node))
        k = keys[draw(ints(0, len(keys) - 1))]
        parent, key, node = node, k, node[k]
        if draw(ints(0, 2)) == 0:  # stop here about 4 times in 10 (0 is drawn most)
            break
    return parent, key


@st.composite
def edited_json(draw: Draw, base: Callable[[], Any], max_edits: int = 3) -> bytes:
    """The JSON document `base()` with 1..max_edits fields replaced (by any JSON value or
    a raw number literal), deleted or added, written as JSON text."""
    doc = copy.deepcopy(base())
    literals: list[str] = []
    for _ in range(draw(ints(1, max_edits))):
        parent, key = _walk(draw, doc)
        action = draw(choice("replace", "literal", "delete", "add"))
        if action == "literal":
            value: Any = _LITERAL.format(len(literals))
            literals.append(draw(choice(*RAW_LITERALS)))
        else:
            value = draw(JSON_VALUES)
        if parent is None:
            doc = value
        elif action == "delete":
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = value
        else:
            parent[key] = value
    text = json.dumps(doc, indent=draw(choice(None, 1)))
    for i, literal in enumerate(literals):
        text = text.replace(json.dumps(_LITERAL.format(i)), literal)
    return text.encode()


def json_files(base: Callable[[], Any]) -> st.SearchStrategy[bytes]:
    """Edited valid documents, byte-mutated ones, random text and bytes, deep nesting."""
    seed = st.deferred(lambda: st.just(json.dumps(base(), indent=1).encode()))
    return weighted(
        (12, edited_json(base)),
        (4, mutated(seed)),
        (1, st.text(max_size=64).map(str.encode)),
        (1, upto(64)),
        (1, deep_nesting()),
    )


# --- calibration tables -----------------------------------------------------------------

CALIB_SHA = "a" * 64


@functools.cache
def calib_seed() -> tuple[str, bytes, bytes]:
    """(key, table JSON, TensorRT cache) written by write_table for a small table."""
    from quantpipe.calibration import EntropyConfig, make_table, write_table

    amax = {"input": 2.5, "/layer1/relu:0": 7.125, "conv 1/out": 1e-3, "zero": 0.0}
    table = make_table(CALIB_SHA, EntropyConfig(), {"source": "digits", "count": 64}, amax)
    json_path, trt_path = write_table(scratch() / "calib-seed", table)
    return table.key, json_path.read_bytes(), trt_path.read_bytes()


def calib_json_files() -> st.SearchStrategy[bytes]:
    return json_files(lambda: json.loads(calib_seed()[1]))


def parse_calib_json(data: bytes) -> None:
    """load_table: read_table_json plus the model and key checks."""
    from quantpipe.calibration import load_table

    key = calib_seed()[0]
    calib_dir = scratch() / "calib"
    calib_dir.mkdir(exist_ok=True)
    (calib_dir / f"{key}.json").write_bytes(data)
    load_table(calib_dir, key, CALIB_SHA)


_HEX_SPECIALS = ("7fc00000", "7f800000", "ff800000", "80000000", "00000000", "00000001",
                 "7f7fffff", "FFFFFFFF", "3C010204", "00 11 22", "0x123456", "+1234567",
                 "１２３４５６７８", "0011223", "001122334", " 0011223", "001122\t3", "-0000000",
                 "٠١٢٣٤٥٦٧", "00112233\x00")  # fmt: skip


def trt_lines() -> st.SearchStrategy[str]:
    """Cache lines: mostly `name: hex` with odd names (colons, unicode, empty) and odd hex
    (NaN/inf/negative scales, spaces, signs, full-width digits), or any text."""
    name = weighted(
        (3, st.sampled_from(["x", "x:0", "a: b", "", " ", "::", "ü", "x\x85y"])),
        (1, st.text(max_size=10)),
    )
    scales = st.floats(0, 1e6, width=32).map(lambda f: struct.pack(">f", f).hex())
    hexes = weighted(
        (4, scales),
        (1, exact(4).map(bytes.hex)),
        (3, st.sampled_from(_HEX_SPECIALS)),
        (1, st.text(max_size=9)),
    )
    sep = st.sampled_from([": ", ":", " : ", ":\t"])
    pair = st.builds(lambda n, s, h: f"{n}{s}{h}", name, sep, hexes)
    return weighted((8, pair), (1, st.text(max_size=20)), (1, st.just("")))


def trt_headers() -> st.SearchStrategy[str]:
    algorithms = ["EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration",
                  "LegacyCalibration", "Other", ""]  # fmt: skip
    versions = weighted(
        (4, st.integers(0, 10**9).map(str)),
        (1, st.sampled_from(["", "٣", "1.2", "-1", "²", "1" * 5000])),
    )
    header = st.builds(lambda v, a: f"TRT-{v}-{a}", versions, st.sampled_from(algorithms))
    return weighted((4, header), (1, st.text(max_size=24)))


def trt_cache_files() -> st.SearchStrategy[bytes]:
    """Cache texts (a header and lines, any line ending), mutated caches, random bytes."""
    text = st.builds(
        lambda header, lines, sep, end: sep.join([header, *lines]) + end,
        trt_headers(),
        st.lists(trt_lines(), max_size=8),
        st.sampled_from(["\n", "\r\n", "\r"]),
        st.sampled_from(["", "\n"]),
    )
    seed = st.deferred(lambda: st.just(calib_seed()[2]))
    return weighted((6, text.map(str.encode)), (3, mutated(seed)), (1, upto(64)))


def parse_trt_cache(data: bytes) -> None:
    from quantpipe.calibration import import_trt_cache

    path = scratch() / "calib.trtcache"
    path.write_bytes(data)
    import_trt_cache(path)


# --- engine metadata --------------------------------------------------------------------

ENGINE_BYTES = b"not an engine: load_engine only checks its size and sha256\n"
ENGINE_NAME = "fp32.onnxruntime-cpu.int8.onnx"


def engine_meta() -> Any:
    """A valid EngineMeta for ENGINE_BYTES, built the way the engines stage builds one."""
    from quantpipe.engines.backend import BatchProfile
    from quantpipe.engines.machine import CpuInfo, GpuInfo
    from quantpipe.engines.metadata import EngineMeta, TensorInfo

    return EngineMeta(
        engine=ENGINE_NAME,
        sha256=hashlib.sha256(ENGINE_BYTES).hexdigest(),
        bytes=len(ENGINE_BYTES),
        backend="onnxruntime-cpu",
        runtime="onnxruntime",
        runtime_version="1.20.1",
        precision="int8",
        model="fp32",
        source="model.int8.qdq.onnx",
        source_sha256="b" * 64,
        inputs=[TensorInfo("input", "float32", ["batch", 3, 32, 32])],
        outputs=[TensorInfo("logits", "float32", ["batch", 10])],
        profile=BatchProfile(1, 8, 32),
        cpu=CpuInfo("Fuzz CPU", 2, ["avx2"]),
        gpu=GpuInfo("Fuzz GPU", "8.9"),
        build_options={"provider": "CPUExecutionProvider"},
        build_seconds=0.25,
        built_at="2025-01-01T00:00:00+00:00",
        quantpipe="0.0.0",
    )


@functools.cache
def _engine_meta_text() -> str:
    return json.dumps(engine_meta().to_json())


def engine_meta_json() -> dict[str, Any]:
    """engine_meta() as the JSON document the engines stage writes (a fresh copy)."""
    return dict(json.loads(_engine_meta_text()))


def engine_json_files() -> st.SearchStrategy[bytes]:
    return json_files(engine_meta_json)


def parse_engine_json(data: bytes) -> None:
    """load_engine on an engine whose `.json` sidecar is `data` (host checks included)."""
    from quantpipe.engines.metadata import load_engine, meta_path

    engine = scratch() / "engines" / ENGINE_NAME
    if not engine.exists():
        engine.parent.mkdir(exist_ok=True)
        engine.write_bytes(ENGINE_BYTES)
    meta_path(engine).write_bytes(data)
    load_engine(engine)


# --------------------------------------------------------------------------------------
# Triton config.pbtxt
# --------------------------------------------------------------------------------------


def _metas_for_configs() -> list[tuple[Any, bool]]:
    """Engine metadata covering each branch of model_config: batched and not, GPU with the
    TensorRT accelerator, a TensorRT plan, the Python backend."""
    from quantpipe.engines.metadata import TensorInfo

    base = engine_meta()
    fixed = [TensorInfo("x", "int64", [4, "seq"])]
    return [
        (base, False),
        (replace(base, backend="onnxruntime-tensorrt", precision="fp16"), False),
        (replace(base, backend="tensorrt", runtime="tensorrt", inputs=fixed), False),
        (base, True),
    ]


@functools.cache
def pbtxt_seeds() -> tuple[str, ...]:
    from quantpipe.serving.triton_config import ServingOptions, model_config, to_text

    options = ServingOptions(2, 50, (4, 8))
    return tuple(
        to_text(model_config(f"m{i}", meta, options, python))
        for i, (meta, python) in enumerate(_metas_for_configs())
    )


@functools.cache
def pbtxt_tokens() -> tuple[str, ...]:
    """Every field and enum name of ModelConfig (recursively), punctuation, odd numbers
    and strings: the vocabulary of a config, for mutations that stay near the grammar."""
    from tritonclient.grpc import model_config_pb2

    words: set[str] = set()
    todo, seen = [model_config_pb2.ModelConfig.DESCRIPTOR], set()
    while todo:
        desc = todo.pop()
        if desc.full_name in seen:
            continue
        seen.add(desc.full_name)
        for f in desc.fields:
            words.add(f.name)
            if f.message_type is not None:
                todo.append(f.message_type)
            if f.enum_type is not None:
                words.update(v.name for v in f.enum_type.values)
    punctuation = ["{", "}", ":", "<", ">", "[", "]", ",", ";", "\n", " ", "#", "-", '"', "'"]
    return tuple(sorted(words)) + tuple(punctuation) + PBTXT_NUMBERS + PBTXT_STRINGS


PBTXT_NUMBERS = ("0", "-1", "2147483647", "2147483648", "-2147483649", "9223372036854775808",
                 "18446744073709551616", "1e999", "nan", "-inf", "0x7f", "0777", "1.5", "1f",
                 "9" * 400, "-0", "08")  # fmt: skip
PBTXT_STRINGS = ('"a"', '"\\x"', '"\\377\\376"', '"\\u12"', "'\\U0010ffff'", '"\\N"', '"\n"',
                 '"\\ud800"', "[type.googleapis.com/inference.ModelConfig]", "[x.y]")  # fmt: skip
#: Where a seed config holds a number, or a quoted string: swapped for odd ones.
_NUMBER = re.compile(r"-?\d+")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


TOKENS = st.deferred(lambda: st.sampled_from(pbtxt_tokens()))
TOKEN_RUNS = st.lists(TOKENS, min_size=1, max_size=4)
NUMBERS = st.one_of(st.sampled_from(PBTXT_NUMBERS), st.integers().map(str))
STRINGS = st.one_of(
    st.sampled_from(PBTXT_STRINGS),
    st.text(max_size=6).map(lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'),
)
SHORT_TEXT = st.text(max_size=8)


@st.composite
def mutated_text(draw: Draw, seeds: st.SearchStrategy[str], max_mutations: int = 4) -> str:
    """A seed text with numbers and strings swapped for odd ones, spans deleted,
    duplicated or replaced by grammar tokens or text."""
    text = draw(seeds)
    rnd = draw(RANDOMS)
    for _ in range(draw(ints(1, max_mutations))):
        i, j = sorted((_index(rnd, text), _index(rnd, text)))
        action = draw(
            choice("number", "string", "delete", "insert", "replace", "duplicate", "text")
        )
        if action in ("number", "string"):
            spans = [m.span() for m in (_NUMBER if action == "number" else _STRING).finditer(text)]
            if spans:
                i, j = spans[rnd.randrange(len(spans))]
                new = draw(NUMBERS if action == "number" else STRINGS)
                text = text[:i] + new + text[j:]
        elif action == "delete":
            text = text[:i] + text[j:]
        elif action == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        else:
            new = draw(SHORT_TEXT) if action == "text" else " ".join(draw(TOKEN_RUNS))
            text = text[:i] + new + (text[i:] if action == "insert" else text[j:])
    return str(text)


def pbtxt_texts() -> st.SearchStrategy[str]:
    seeds = st.deferred(lambda: st.sampled_from(pbtxt_seeds()))
    return weighted(
        (6, mutated_text(seeds)),
        (1, st.lists(TOKENS, max_size=24).map(" ".join)),
        (1, st.text(max_size=64)),
    )


def parse_pbtxt(text: str) -> None:
    from quantpipe.serving.triton_config import parse_config

    parse_config(text, str(scratch() / "config.pbtxt"))


# --- model_config from arbitrary metadata -----------------------------------------------

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=8)  # lone surrogates too


def _tensor() -> st.SearchStrategy[tuple[str, str, list[int | str]]]:
    """(name, dtype, shape) of an input or output: mostly what an exporter writes (the
    batch dimension first, a known dtype, sizes), otherwise anything."""
    dtypes = weighted(
        (8, st.sampled_from(["float32", "float16", "int8", "int64", "bool"])), (1, ANY_TEXT)
    )
    dim = weighted(
        (6, ints(0, 64)),
        (1, st.sampled_from(["batch", "seq", -1, -2, 2**63 - 1, 2**63])),
        (1, st.integers()),
        (1, ANY_TEXT),
    )
    batched = st.lists(dim, max_size=4).map(lambda s: ["batch", *s])
    name = weighted((3, st.text(max_size=6)), (1, ANY_TEXT))
    return st.tuples(name, dtypes, weighted((4, batched), (1, st.lists(dim, max_size=4))))


def _batch_size() -> st.SearchStrategy[int]:
    """Mostly a usable size; the int32 edge and past it, zero, anything."""
    edges = st.sampled_from([0, 2**31 - 1, 2**31, 2**63])
    return weighted((8, ints(1, 64)), (1, edges), (1, st.integers()))


def model_config_cases() -> st.SearchStrategy[dict[str, Any]]:
    """What model_config is given: any model name, backend, precision, tensor names, dtypes
    and dims in the metadata; any batch profile and serving options (mostly valid ones,
    so that the cases get as far as the round trip)."""
    from quantpipe.serving.triton_config import PLATFORMS

    profile = st.lists(_batch_size(), min_size=3, max_size=3)
    return st.fixed_dictionaries(
        {
            "name": weighted((3, st.text(max_size=8)), (1, ANY_TEXT)),
            "backend": weighted((8, st.sampled_from(sorted(PLATFORMS))), (1, ANY_TEXT)),
            "precision": weighted((3, st.sampled_from(["fp32", "fp16", "int8"])), (1, ANY_TEXT)),
            "inputs": st.lists(_tensor(), max_size=3),
            "outputs": st.lists(_tensor(), max_size=3),
            "profile": weighted((9, profile.map(sorted)), (1, profile)),
            "instances": weighted(
                (8, ints(1, 4)), (1, st.sampled_from([2**31 - 1, 2**31])), (1, st.integers())
            ),
            "delay": weighted(
                (8, ints(0, 1000)), (1, st.sampled_from([2**64 - 1, 2**64])), (1, st.integers())
            ),
            "preferred": weighted(
                (4, st.none()),
                (4, st.lists(_batch_size(), min_size=1, max_size=3).map(tuple)),
                (1, st.just(())),
            ),
            "python_backend": st.booleans(),
        }
    )


def check_model_config(case: dict[str, Any]) -> None:
    """model_config either refuses (QuantpipeError) or makes a config that survives
    to_text and parse_config unchanged."""
    from quantpipe.engines.backend import BatchProfile
    from quantpipe.engines.metadata import TensorInfo
    from quantpipe.serving.triton_config import ServingOptions, model_config, parse_config, to_text

    meta = replace(
        engine_meta(),
        backend=case["backend"],
        precision=case["precision"],
        inputs=[TensorInfo(*t) for t in case["inputs"]],
        outputs=[TensorInfo(*t) for t in case["outputs"]],
        profile=BatchProfile(*case["profile"]),
    )
    options = ServingOptions(case["instances"], case["delay"], case["preferred"])
    config = model_config(case["name"], meta, options, case["python_backend"])
    back = parse_config(to_text(config))
    if back != config:
        raise AssertionError(f"config changed on its way through to_text: {config} -> {back}")


# --------------------------------------------------------------------------------------
# The table and the oracle
# --------------------------------------------------------------------------------------

FORMATS: dict[str, tuple[st.SearchStrategy[Any], Callable[[Any], None]]] = {
    "btc": (btc_files(), parse_btc),
    "qpmix": (qpmix_files(), parse_qpmix),
    "calib-json": (calib_json_files(), parse_calib_json),
    "calib-trtcache": (trt_cache_files(), parse_trt_cache),
    "engine-json": (engine_json_files(), parse_engine_json),
    "triton-pbtxt": (pbtxt_texts(), parse_pbtxt),
    "triton-model-config": (model_config_cases(), check_model_config),
}
#: Formats whose cases are not files: a refusal has no file to name.
NOT_FILES = frozenset({"triton-model-config"})


def check_refusal(name: str, err: QuantpipeError) -> None:
    """A refusal the CLI can print as its one line: not empty, no newline, and (for a
    file) naming the file."""
    message = str(err)
    if not message.strip() or "\n" in message or "\r" in message:
        raise AssertionError(f"{name}: the refusal is not one line: {message!r}")
    if name not in NOT_FILES and MARKER not in message:
        raise AssertionError(f"{name}: the refusal does not name the file: {message!r}")


def run_case(name: str, case: Case) -> bool:
    """Parse one case of format `name`: True when it parsed, False when it was refused
    properly. Any other exception (or an improper refusal) propagates: a reader bug. The
    parse runs under an address-space cap (see address_space_cap), set per case so that
    hypothesis's own growth over a long run does not eat into it."""
    parse = FORMATS[name][1]
    try:
        with address_space_cap():
            parse(case)
    except QuantpipeError as err:
        check_refusal(name, err)
        return False
    return True


def _vm_bytes() -> int:
    """This process's address-space size, from /proc/self/statm (in pages)."""
    return int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def address_space_cap(headroom: int = 2 << 30) -> Iterator[None]:
    """Limit the address space to its current size plus `headroom` while parsing, so an
    allocation sized from a declared length (which a small file cannot back) fails as a
    MemoryError, which the oracle reports, rather than swapping or passing unnoticed.
    Does nothing where RLIMIT_AS or /proc is unavailable."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = _vm_bytes() + headroom
    except (ImportError, OSError, ValueError):
        yield
        return
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY:
        cap = min(cap, soft)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
