"""The model.btc container: round trip, exact size, and corruption always detected."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantpipe.btc.codec import decode_tensor, encode_tensor
from quantpipe.btc.container import (
    VERSION,
    load_container,
    read_container,
    write_container,
)
from quantpipe.btc.encoded import EncodedTensor
from quantpipe.errors import CorruptArtifactError, QuantpipeError

RNG = np.random.default_rng(7)
META = {"policy": {"policy": "sigma", "tau": 0.05, "block_size": 64}, "note": "ünïcode"}


def _encoded() -> dict[str, EncodedTensor]:
    w = lambda *s: (RNG.standard_normal(s) * 0.05).astype(np.float32)  # noqa: E731
    return {
        "conv1.weight": encode_tensor(w(8, 3, 3, 3), 64, tau=0.05),  # 216: partial block
        "layer.0.weight": encode_tensor(w(17, 19), 32, tau=0.04),
        "odd.weight": encode_tensor(w(101), 16, tau=0.05, low_bits=3, high_bits=6),
        "fc.weight": encode_tensor(w(10, 64), 64, tau=0.0),  # all high
        "const.weight": encode_tensor(np.zeros(70, np.float32), 64, tau=0.05),  # all low
    }


def _others() -> dict[str, np.ndarray]:
    return {
        "conv1.bias": RNG.standard_normal(8).astype(np.float32),
        "bn.running_var": RNG.random(8).astype(np.float64),  # stored as float32
        "bn.num_batches_tracked": np.array(123456789012, dtype=np.int64),  # 0-d int64
        "mask": np.array([True, False, True]),
        "lut": np.arange(5, dtype=np.uint8),
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    path = tmp_path_factory.mktemp("btc") / "model.btc"
    enc, others = _encoded(), _others()
    write_container(path, enc, others, META)
    return path, enc, others


def test_roundtrip_identical(written: tuple[Path, dict, dict]) -> None:
    path, enc, others = written
    state, meta, acc = read_container(path)
    assert meta == META
    assert list(state) == list(enc) + list(others)
    for k, e in enc.items():
        assert state[k].dtype == np.float32
        assert np.array_equal(state[k], decode_tensor(e))
    for k, v in others.items():
        want = v.astype(np.float32) if v.dtype == np.float64 else v
        assert state[k].dtype == want.dtype and state[k].shape == want.shape
        assert np.array_equal(state[k], want)
    loaded = load_container(path)
    for k, e in enc.items():
        got = loaded.encoded[k]
        assert (got.shape, got.block_size, got.low_bits, got.high_bits) == (
            e.shape,
            e.block_size,
            e.low_bits,
            e.high_bits,
        )
        for field in ("high", "mins", "maxs", "codes"):
            assert np.array_equal(getattr(got, field), getattr(e, field))
    assert acc.n_coded == sum(e.n for e in enc.values())
    assert acc.payload_bits == sum(e.payload_bits for e in enc.values())
    assert acc.b_eff == pytest.approx(
        sum(e.payload_bits + e.header_bits for e in enc.values()) / acc.n_coded
    )


def _expected_size(enc: dict[str, EncodedTensor], others: dict, meta: dict) -> int:
    """The size formula from format.md, computed independently of the writer."""
    coded = 0
    for e in enc.values():
        nb = e.n_blocks
        n_high = int(np.repeat(e.high, e.block_size)[: e.n].sum())
        coded += math.ceil(nb / 8) + 4 * nb
        coded += math.ceil((e.n - n_high) * e.low_bits / 8) + math.ceil(n_high * e.high_bits / 8)
        # Equivalent: b_eff * n / 8 with each section rounded up.
        assert coded >= 0
    raw = sum(
        np.asarray(v).size * (4 if v.dtype.kind == "f" else v.dtype.itemsize)
        for v in others.values()
    )
    overhead = 40 + len(json.dumps(meta).encode())
    overhead += sum(39 + len(k.encode()) + 8 * len(e.shape) for k, e in enc.items())
    overhead += sum(9 + len(k.encode()) + 8 * np.ndim(v) for k, v in others.items())
    return coded + raw + overhead


def test_size_on_disk_equals_formula(written: tuple[Path, dict, dict]) -> None:
    path, enc, others = written
    size = path.stat().st_size
    assert size == _expected_size(enc, others, META)
    acc = load_container(path).accounting
    assert acc.file_bytes == size
    # The coded part is b_eff * n / 8, up to rounding each of 5 sections per tensor.
    exact = sum((e.payload_bits + e.header_bits) / 8 for e in enc.values())
    assert exact <= acc.coded_bytes < exact + 5 * len(enc)


def test_write_is_atomic_on_error(written: tuple[Path, dict, dict]) -> None:
    path, enc, others = written
    before = path.read_bytes()
    with pytest.raises(QuantpipeError, match="dtype complex64"):
        write_container(path, enc, {"bad": np.ones(2, np.complex64)}, META)
    with pytest.raises(QuantpipeError, match="JSON"):
        write_container(path, enc, others, {"x": object()})
    with pytest.raises(QuantpipeError, match="both coded and raw"):
        write_container(path, enc, {"fc.weight": np.ones(1, np.float32)}, META)
    with pytest.raises(QuantpipeError, match="33"):
        write_container(path, enc, {"deep": np.ones((1,) * 33, np.float32)}, META)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def _read_bytes_as_container(tmp_path: Path, data: bytes) -> None:
    bad = tmp_path / "bad.btc"
    bad.write_bytes(data)
    read_container(bad)


def test_wrong_magic_version_truncation_extension(
    written: tuple[Path, dict, dict], tmp_path: Path
) -> None:
    good = written[0].read_bytes()
    cases = {
        "wrong magic": b"PK\x03\x04" + good[4:],
        "format version 2": good[:6] + struct.pack("<H", VERSION + 1) + good[8:],
        "preamble": good[:20],
        "file has": good[:-1],
        "its preamble says": good + b"\0",
    }
    for match, data in cases.items():
        with pytest.raises(CorruptArtifactError, match=match) as info:
            _read_bytes_as_container(tmp_path, data)
        assert "bad.btc" in str(info.value)
    for n in (0, 3, 8, 39, 40, len(good) // 2):
        with pytest.raises(CorruptArtifactError):
            _read_bytes_as_container(tmp_path, good[:n])


def test_each_region_flip_is_detected(written: tuple[Path, dict, dict], tmp_path: Path) -> None:
    good = written[0].read_bytes()
    table_len, meta_len = struct.unpack_from("<II", good, 12)
    spots = {
        "preamble CRC": 25,
        "tensor table CRC": 40 + table_len // 2,
        "metadata CRC": 40 + table_len + meta_len // 2,
        "CRC mismatch in section": len(good) - 3,
    }
    for match, pos in spots.items():
        data = bytearray(good)
        data[pos] ^= 0x10
        with pytest.raises(CorruptArtifactError, match=match):
            _read_bytes_as_container(tmp_path, bytes(data))


def test_missing_file_is_a_quantpipe_error(tmp_path: Path) -> None:
    with pytest.raises(QuantpipeError, match="cannot read"):
        read_container(tmp_path / "absent.btc")


_GOOD: list[bytes] = []


def _good_bytes(tmp_dir: Path) -> bytes:
    if not _GOOD:
        path = tmp_dir / "fuzz.btc"
        rng = np.random.default_rng(3)
        enc = {
            "a": encode_tensor(rng.standard_normal(300).astype(np.float32) * 0.05, 32, tau=0.05),
            "b": encode_tensor(rng.standard_normal((5, 7)).astype(np.float32), 16, tau=0.5),
        }
        write_container(path, enc, {"bias": np.ones(3, np.float32)}, {"k": 1})
        _GOOD.append(path.read_bytes())
    return _GOOD[0]


@st.composite
def _mutation(draw: st.DrawFn, size: int) -> tuple[str, int, bytes]:
    kind = draw(st.sampled_from(["flip", "overwrite", "truncate", "extend", "insert"]))
    pos = draw(st.integers(0, size - 1))
    blob = draw(st.binary(min_size=1, max_size=16))
    return kind, pos, blob


def _apply(good: bytes, kind: str, pos: int, blob: bytes) -> bytes:
    if kind == "flip":
        return good[:pos] + bytes([good[pos] ^ (blob[0] or 1)]) + good[pos + 1 :]
    if kind == "overwrite":
        seg = bytes(b ^ 0xA5 ^ g for b, g in zip(blob, good[pos:], strict=False))
        seg = bytes(s if s != g else s ^ 1 for s, g in zip(seg, good[pos:], strict=False))
        return good[:pos] + seg + good[pos + len(seg) :]
    if kind == "truncate":
        return good[:pos]
    if kind == "extend":
        return good + blob
    return good[:pos] + blob + good[pos:]  # insert


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzz_any_damage_raises_corrupt_artifact_error(data: st.DataObject, tmp_path: Path) -> None:
    good = _good_bytes(tmp_path)
    kind, pos, blob = data.draw(_mutation(len(good)))
    damaged = _apply(good, kind, pos, blob)
    assert damaged != good
    with pytest.raises(CorruptArtifactError):
        _read_bytes_as_container(tmp_path, damaged)


def _reseal(good: bytes, table: bytes) -> bytes:
    """Replace the table and recompute the CRCs, as a buggy writer would."""
    import zlib

    n, table_len, meta_len, data_len = struct.unpack_from("<IIIQ", good, 8)
    meta = good[40 + table_len : 40 + table_len + meta_len]
    rest = good[40 + table_len + meta_len :]
    head = good[:8] + struct.pack(
        "<IIIQII", n, len(table), meta_len, data_len, zlib.crc32(table), zlib.crc32(meta)
    )
    return head + struct.pack("<I", zlib.crc32(head)) + table + meta + rest


@pytest.mark.parametrize("field", ["n_high", "shape", "block_size", "bits"])
def test_consistent_crcs_but_bad_table_is_corrupt(
    written: tuple[Path, dict, dict], tmp_path: Path, field: str
) -> None:
    from dataclasses import replace

    from quantpipe.btc.table import parse_table

    good = written[0].read_bytes()
    n, table_len = struct.unpack_from("<II", good, 8)
    entries = parse_table(good[40 : 40 + table_len], n, "x")
    e = entries[0]
    changes = {
        "n_high": {"n_high": e.n_high + 1},
        "shape": {"shape": (e.shape[0] + 1, *e.shape[1:])},
        "block_size": {"block_size": 1},
        "bits": {"low_bits": 8},
    }
    entries[0] = replace(e, **changes[field])
    tampered = _reseal(good, b"".join(x.pack() for x in entries))
    assert _reseal(good, good[40 : 40 + table_len]) == good  # the resealer itself is exact
    with pytest.raises(CorruptArtifactError, match=r"bad\.btc"):
        _read_bytes_as_container(tmp_path, tampered)
