"""Mixed-precision packed weights: quantization, bit packing, round trip, exact size and
every kind of damage refused."""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quantpipe.errors import CorruptArtifactError, QuantpipeError
from quantpipe.mixed.packed import VERSION, PackedAccounting, read_packed, write_packed
from quantpipe.mixed.packed_tensor import (
    QuantizedTensor,
    pack_signed,
    quantize_tensor,
    unpack_signed,
)
from quantpipe.quantize.bits import qmax
from quantpipe.quantize.qdq import quantize_weight

RNG = np.random.default_rng(5)
META = {"policy": {"bits": [2, 4, 8], "note": "ünïcode"}, "params": 12345, "tau": 0.5}
BITS = range(2, 9)


def _w(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.05).astype(np.float32)


def _quantized(bits: int) -> dict[str, QuantizedTensor]:
    """Odd sizes: never a multiple of 8 values in total, single-channel and 1-D tensors."""
    return {
        "conv.weight": quantize_tensor(_w(5, 3, 3, 3), bits, 0),  # 135 values, axis 0
        "conv_t.weight": quantize_tensor(_w(3, 5, 1, 1), bits, 1),  # axis 1 of a 4-D tensor
        "fc.weight": quantize_tensor(_w(7, 13), bits, 0),  # linear, axis 0
        "fc_t.weight": quantize_tensor(_w(13, 7), bits, 1),  # linear, axis 1
        "single.weight": quantize_tensor(_w(1, 11), bits, 0),  # one channel
        "vector.weight": quantize_tensor(_w(9), bits, 0),  # one value per channel
    }


def _raw() -> dict[str, np.ndarray]:
    return {
        "conv.bias": _w(5),
        "bn.running_var": RNG.random(7),  # float64, stored as float32
        "scalar": np.array(3.25, np.float32),  # 0-d
        "steps": np.array([1, 2, 3], np.int64),
    }


def _entry_bytes(name: str, ndim: int, quantized: bool) -> int:
    return (14 if quantized else 10) + len(name.encode()) + 4 * ndim


def _assert_same(got: QuantizedTensor, want: QuantizedTensor) -> None:
    assert (got.bits, got.axis, got.shape) == (want.bits, want.axis, want.shape)
    assert got.codes.dtype == np.int8 and got.codes.tobytes() == want.codes.tobytes()
    assert got.scales.dtype == np.float32 and got.scales.tobytes() == want.scales.tobytes()


@pytest.mark.parametrize("bits", BITS)
def test_roundtrip_bit_for_bit(tmp_path: Path, bits: int) -> None:
    path = tmp_path / "m.qpmix"
    quant, raw = _quantized(bits), _raw()
    written = write_packed(path, quant, raw, META)
    got_q, got_raw, meta, acc = read_packed(path)
    assert meta == META and acc == written
    assert list(got_q) == list(quant) and list(got_raw) == list(raw)
    for name, qt in quant.items():
        _assert_same(got_q[name], qt)
        assert np.array_equal(got_q[name].dequantize(), qt.dequantize())
    for name, value in raw.items():
        want = np.asarray(value, dtype=np.float32)
        assert got_raw[name].dtype == np.float32 and got_raw[name].shape == want.shape
        assert got_raw[name].tobytes() == want.tobytes()
    assert os.listdir(tmp_path) == ["m.qpmix"]  # the atomic write left no temporary file


@pytest.mark.parametrize("bits", BITS)
def test_size_is_exactly_the_accounting(tmp_path: Path, bits: int) -> None:
    path = tmp_path / "m.qpmix"
    quant, raw = _quantized(bits), _raw()
    acc = write_packed(path, quant, raw, META)
    assert path.stat().st_size == acc.file_bytes
    sizes = [qt.codes.size for qt in quant.values()]
    assert acc.payload_bits == bits * sum(sizes)
    assert acc.theoretical_bytes == bits * sum(sizes) / 8
    assert acc.payload_bytes == sum(math.ceil(n * bits / 8) for n in sizes)
    assert acc.scale_bytes == 4 * sum(qt.scales.size for qt in quant.values())
    assert acc.raw_bytes == 4 * sum(np.size(v) for v in raw.values())
    table = sum(_entry_bytes(k, qt.codes.ndim, True) for k, qt in quant.items())
    table += sum(_entry_bytes(k, np.ndim(v), False) for k, v in raw.items())
    assert acc.overhead_bytes == 40 + table + len(json.dumps(META).encode())
    # Real size = theory + scales + raw + overhead, plus under one padding byte per tensor.
    slack = acc.file_bytes - (acc.theoretical_bytes + acc.scale_bytes + acc.raw_bytes)
    assert acc.overhead_bytes <= slack < acc.overhead_bytes + len(quant)


def test_dequantize_is_codes_times_channel_scale() -> None:
    for qt in _quantized(5).values():
        deq = qt.dequantize()
        assert deq.dtype == np.float32 and deq.shape == qt.shape
        for c, scale in enumerate(qt.scales):
            codes = np.take(qt.codes, c, axis=qt.axis).astype(np.float32)
            assert np.array_equal(np.take(deq, c, axis=qt.axis), codes * scale)


def test_bit_layout_by_hand(tmp_path: Path) -> None:
    """The layout of packed_format.md, read back field by field."""
    codes = np.array([[-1, 0, 1, 1, -1]], np.int8)  # offset to 0, 1, 2, 2, 0
    assert pack_signed(codes, 2).tolist() == [0b10_10_01_00, 0b00]
    qt = QuantizedTensor(codes, np.array([0.5], np.float32), 2, 0)
    path = tmp_path / "h.qpmix"
    acc = write_packed(path, {"w": qt}, {"b": np.array([2.0], np.float32)}, {})
    buf = path.read_bytes()
    magic, version, n, table_len, meta_len, data_len = struct.unpack_from("<6sHIIIQ", buf)
    assert (magic, version, n, meta_len, data_len) == (b"QPMIX\0", VERSION, 2, 2, 4 + 2 + 4)
    table = buf[40 : 40 + table_len]
    assert table[:7] == struct.pack("<H1sBBBB", 1, b"w", 1, 2, 0, 2)  # kind, bits, axis, ndim
    assert struct.unpack_from("<2I", table, 7) == (1, 5)
    assert table[23:34] == struct.pack("<H1sBBBBI", 1, b"b", 2, 0, 0, 1, 1)
    assert table_len == 23 + 15
    assert buf[40 + table_len : 42 + table_len] == b"{}"
    data = buf[42 + table_len :]
    assert data == struct.pack("<f", 0.5) + bytes([0b10100100, 0]) + struct.pack("<f", 2.0)
    assert struct.unpack_from("<2I", table, 15) == (zlib.crc32(data[:4]), zlib.crc32(data[4:6]))
    assert struct.unpack_from("<I", table, 34) == (zlib.crc32(data[6:]),)
    assert acc.file_bytes == len(buf) == 40 + table_len + 2 + 10


# --- damage -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small file with two quantized tensors and one raw: every byte can be damaged."""
    path = tmp_path_factory.mktemp("packed") / "s.qpmix"
    quant = {"a": quantize_tensor(_w(2, 1, 2, 2), 3, 0), "c": quantize_tensor(_w(3), 5, 0)}
    write_packed(path, quant, {"bias": _w(2)}, {"k": 1})
    return path.read_bytes()


def _refused(tmp_path: Path, content: bytes) -> str:
    path = tmp_path / "bad.qpmix"
    path.write_bytes(content)
    with pytest.raises(CorruptArtifactError) as info:
        read_packed(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def _flip(buf: bytes, pos: int) -> bytes:
    return buf[:pos] + bytes([buf[pos] ^ 0x40]) + buf[pos + 1 :]


def _section_offsets(buf: bytes) -> dict[str, int]:
    table_len, meta_len = struct.unpack_from("<II", buf, 12)
    data = 40 + table_len + meta_len
    # Data of tensor a (shape 2x1x2x2, 3 bits): 8 scale bytes, then ceil(8*3/8) = 3 code bytes.
    return {"preamble": 20, "table": 40, "meta": 40 + table_len, "scales": data, "codes": data + 8}


@pytest.mark.parametrize(
    "section, says",
    [
        ("preamble", "preamble CRC"),
        ("table", "table CRC"),
        ("meta", "metadata CRC"),
        ("scales", "section 0 of tensor 'a'"),
        ("codes", "section 1 of tensor 'a'"),
    ],
)
def test_a_flipped_byte_in_each_section_is_named(
    small: bytes, tmp_path: Path, section: str, says: str
) -> None:
    assert says in _refused(tmp_path, _flip(small, _section_offsets(small)[section]))


def test_every_flipped_byte_and_every_truncation_is_refused(small: bytes, tmp_path: Path) -> None:
    for pos in range(len(small)):
        _refused(tmp_path, _flip(small, pos))
        _refused(tmp_path, small[:pos])
    _refused(tmp_path, small + b"\0")


def test_wrong_version_and_magic(small: bytes, tmp_path: Path) -> None:
    newer = small[:6] + struct.pack("<H", VERSION + 1) + small[8:]
    assert f"version {VERSION + 1}" in _refused(tmp_path, newer)
    assert "wrong magic" in _refused(tmp_path, b"QPBTC\0" + small[6:])


def _reseal_data(buf: bytes, offset: int, new: bytes, crc_at: int) -> bytes:
    """Overwrite data bytes and recompute every CRC, as a buggy writer would."""
    table_len, meta_len = struct.unpack_from("<II", buf, 12)
    data_start = 40 + table_len + meta_len
    out = bytearray(buf)
    out[offset : offset + len(new)] = new
    section = _section_bounds(bytes(out), data_start, offset)
    struct.pack_into("<I", out, 40 + crc_at, zlib.crc32(section))
    struct.pack_into("<I", out, 28, zlib.crc32(out[40 : 40 + table_len]))
    struct.pack_into("<I", out, 36, zlib.crc32(out[:36]))
    return bytes(out)


def _section_bounds(buf: bytes, data_start: int, offset: int) -> bytes:
    # Tensor a's sections (8 scale bytes, 3 code bytes) are the first of the data region.
    return buf[data_start : data_start + 8] if offset < data_start + 8 else buf[offset : offset + 3]


def test_consistent_crcs_but_impossible_values_are_refused(small: bytes, tmp_path: Path) -> None:
    offsets = _section_offsets(small)
    # Tensor a's entry: 2 + 1 name + 4 head + 4*4 dims = 23 bytes, then its two CRCs.
    codes_ff = _reseal_data(small, offsets["codes"], b"\xff\xff\xff", crc_at=27)
    assert "not a code" in _refused(tmp_path, codes_ff)
    negative = _reseal_data(small, offsets["scales"], struct.pack("<f", -1.0), crc_at=23)
    assert "non-positive" in _refused(tmp_path, negative)


def test_unreadable_path_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(QuantpipeError, match="cannot read"):
        read_packed(tmp_path / "missing.qpmix")


# --- quantization and validation ---------------------------------------------------------


@pytest.mark.parametrize("bits", BITS)
def test_quantize_on_grid_with_half_step_error(bits: int) -> None:
    w = _w(6, 4, 3)
    w[2] = 0.0  # a zero channel
    qt = quantize_tensor(w, bits, 0)
    q = qmax(bits)
    assert qt.codes.min() >= -q and qt.codes.max() <= q
    assert qt.scales[2] == 1.0 and not qt.codes[2].any()
    for c in (0, 1, 3, 4, 5):
        assert np.abs(qt.codes[c]).max() == q  # the channel's largest magnitude maps to ±qmax
        assert qt.scales[c] == np.float32(np.abs(w[c]).max() / np.float32(q))
    err = np.abs(w.astype(np.float64) - qt.codes * qt.scales.astype(np.float64)[:, None, None])
    assert (err.max(axis=(1, 2)) <= qt.scales * (0.5 + 1e-5)).all()


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_quantize_matches_quantize_weight(bits: int) -> None:
    """One quantization rule: the packed file holds the INT8 graph's codes and scales."""
    for shape, axis in [((6, 4, 3, 3), 0), ((7, 13), 0), ((13, 7), 1), ((3, 5, 1, 1), 1)]:
        w = (RNG.standard_normal(shape) * RNG.uniform(0.01, 2.0)).astype(np.float32)
        qt = quantize_tensor(w, bits, axis)
        codes, scales = quantize_weight(w, axis, bits)
        assert qt.codes.dtype == codes.dtype and qt.codes.tobytes() == codes.tobytes()
        assert qt.scales.dtype == scales.dtype and qt.scales.tobytes() == scales.tobytes()


def test_quantize_gives_an_underflowing_channel_scale_1() -> None:
    w = np.array([[1e-45, -1e-45, 0.0], [0.5, 0.25, -0.125]], np.float32)  # row 0 subnormal
    qt = quantize_tensor(w, 8, 0)
    assert qt.scales[0] == 1.0 and not qt.codes[0].any()
    assert qt.codes[1].tolist() == [127, 64, -32]


def test_quantize_rounds_half_to_even_and_clips() -> None:
    qt = quantize_tensor(np.array([[0.5, 1.5, 2.5, -2.5, 7.0]], np.float32), 4, 0)
    assert qt.scales.tolist() == [1.0] and qt.codes.tolist() == [[0, 2, 2, -2, 7]]
    two = quantize_tensor(np.array([0.4, -0.6, 1.0], np.float32)[None], 2, 0)
    assert two.codes.tolist() == [[0, -1, 1]]


@pytest.mark.parametrize(
    "kwargs, says",
    [
        ({"codes": np.array([[8]])}, "outside the 4-bit range -7..7"),
        ({"codes": np.array([[1.0]])}, "integers expected"),
        ({"scales": np.array([0.0])}, "positive and finite"),
        ({"scales": np.array([np.nan])}, "positive and finite"),
        ({"scales": np.array([1e-60])}, "positive and finite"),  # float64 underflows float32
        ({"scales": np.array([1.0, 2.0])}, "one per channel"),
        ({"axis": 2}, "axis out of range"),
        ({"bits": 1}, "bits must be in 2..8"),
        ({"bits": 9}, "bits must be in 2..8"),
    ],
)
def test_constructor_refuses_and_names_the_tensor(kwargs: dict, says: str) -> None:
    args = {"codes": np.array([[3]]), "scales": np.array([1.0]), "bits": 4, "axis": 0}
    with pytest.raises(QuantpipeError, match=r"quantized tensor 'layer1\.w'") as info:
        QuantizedTensor(**(args | kwargs), name="layer1.w")
    assert says in str(info.value)


def test_tensor_is_immutable_and_axis_normalised() -> None:
    codes = np.array([[1, -1]], np.int16)
    qt = QuantizedTensor(codes, np.array([1.0, 2.0]), 2, -1)
    assert qt.axis == 1 and qt.codes.dtype == np.int8 and qt.scales.dtype == np.float32
    codes[0, 0] = 0  # the tensor kept its own copy
    assert qt.codes[0, 0] == 1
    with pytest.raises(ValueError):
        qt.codes[0, 0] = 0


def test_quantize_refuses_non_finite_and_bad_bits() -> None:
    with pytest.raises(QuantpipeError, match="NaN or infinity"):
        quantize_tensor(np.array([1.0, np.inf]), 4, 0)
    with pytest.raises(QuantpipeError, match="bits must be in"):
        quantize_tensor(np.ones(3), 12, 0)


def test_write_refuses_bad_input(tmp_path: Path) -> None:
    qt = quantize_tensor(_w(2, 2), 4, 0)
    with pytest.raises(QuantpipeError, match="both quantized and raw"):
        write_packed(tmp_path / "x", {"w": qt}, {"w": np.ones(2)}, {})
    with pytest.raises(QuantpipeError, match="JSON"):
        write_packed(tmp_path / "x", {"w": qt}, {}, {"x": float("nan")})
    with pytest.raises(QuantpipeError, match="stores real numbers"):
        write_packed(tmp_path / "x", {}, {"s": np.array(["a"])}, {})
    assert not (tmp_path / "x").exists()


# --- properties ---------------------------------------------------------------------------


def _reference_pack(codes: list[int], bits: int) -> bytes:
    """One integer as the little-endian bit stream: code i at bits i*b .. i*b + b - 1."""
    stream = sum((c + qmax(bits)) << (i * bits) for i, c in enumerate(codes))
    return stream.to_bytes(-(-len(codes) * bits // 8), "little")


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_packer_matches_reference_and_round_trips(data: st.DataObject) -> None:
    bits = data.draw(st.integers(2, 8))
    q = qmax(bits)
    codes = data.draw(st.lists(st.integers(-q, q), max_size=300))
    packed = pack_signed(np.array(codes, np.int8), bits)
    assert packed.tobytes() == _reference_pack(codes, bits)
    assert unpack_signed(packed, bits, len(codes)).tolist() == codes


@settings(max_examples=40, deadline=None)
@given(
    w=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
        elements=st.floats(allow_nan=False, allow_infinity=False, width=32),
    ),
    bits=st.integers(2, 8),
    data=st.data(),
)
def test_quantize_and_file_round_trip_property(
    w: np.ndarray, bits: int, data: st.DataObject
) -> None:
    axis = data.draw(st.integers(0, w.ndim - 1))
    qt = quantize_tensor(w, bits, axis)
    scales = qt.scales.reshape([-1 if d == axis else 1 for d in range(w.ndim)])
    err = np.abs(w.astype(np.float64) - qt.codes * scales.astype(np.float64))
    assert (err <= scales * (0.5 + 1e-5)).all()
    with tempfile.TemporaryDirectory() as d:
        acc = write_packed(Path(d) / "p.qpmix", {"w": qt}, {}, {})
        got, _, _, back = read_packed(Path(d) / "p.qpmix")
    _assert_same(got["w"], qt)
    assert isinstance(back, PackedAccounting) and back == acc
