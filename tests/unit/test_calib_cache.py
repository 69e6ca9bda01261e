"""Calibration tables: keys, JSON + TensorRT text files, import, corruption, wrong model."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from quantpipe.calibration import (
    EntropyConfig,
    MaxConfig,
    MseConfig,
    PercentileConfig,
    cache_key,
    import_trt_cache,
    load_table,
    make_table,
    write_table,
)
from quantpipe.errors import CorruptArtifactError, QuantpipeError
from quantpipe.pipeline.hashing import sha256_file

SHA = "a" * 64
OTHER_SHA = "b" * 64
PROVENANCE = {
    "source": "cifar10",
    "split": "train",
    "count": 512,
    "seed": 0,
    "preprocessing": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "size": 32},
}
AMAX = {"input": 2.64, "/layer1/relu:0": 7.125, "conv 1/out": 1e-3, "zero": 0.0}


def _table(config=None, amax=None):  # type: ignore[no-untyped-def]
    return make_table(SHA, config or EntropyConfig(), PROVENANCE, amax or AMAX)


def test_key_is_short_hex_and_deterministic() -> None:
    key = cache_key(SHA, EntropyConfig(), PROVENANCE)
    assert len(key) == 16
    int(key, 16)
    reordered = dict(reversed(list(PROVENANCE.items())))
    assert cache_key(SHA, EntropyConfig(), reordered) == key


@pytest.mark.parametrize(
    ("sha", "config", "changes"),
    [
        (OTHER_SHA, EntropyConfig(), {}),
        (SHA, MaxConfig(), {}),
        (SHA, MseConfig(), {}),
        (SHA, EntropyConfig(start_bin=64), {}),
        (SHA, EntropyConfig(), {"count": 1024}),
        (SHA, EntropyConfig(), {"seed": 1}),
        (SHA, EntropyConfig(), {"split": "val"}),
        (SHA, EntropyConfig(), {"preprocessing": {"size": 64}}),
    ],
)
def test_key_changes_with_each_input(sha, config, changes) -> None:  # type: ignore[no-untyped-def]
    base = cache_key(SHA, EntropyConfig(), PROVENANCE)
    assert cache_key(sha, config, {**PROVENANCE, **changes}) != base


def test_percentile_parameter_is_in_the_key() -> None:
    keys = {cache_key(SHA, PercentileConfig(p), PROVENANCE) for p in (99.9, 99.99, 99.999)}
    assert len(keys) == 3


def test_provenance_must_be_json() -> None:
    with pytest.raises(QuantpipeError, match="provenance is not plain JSON"):
        cache_key(SHA, MaxConfig(), {"seed": object()})


def test_write_and_load(tmp_path: Path) -> None:
    table = _table()
    json_path, trt_path = write_table(tmp_path / "calib", table)
    assert json_path == tmp_path / "calib" / f"{table.key}.json"
    assert trt_path == tmp_path / "calib" / f"{table.key}.trtcache"
    raw = json.loads(json_path.read_text())
    assert raw["model_sha256"] == SHA and raw["calibrator"] == "entropy"
    assert raw["params"] == {"start_bin": 128} and raw["provenance"] == PROVENANCE
    loaded = load_table(tmp_path / "calib", table.key, SHA)
    assert loaded == table
    assert [p.name for p in (tmp_path / "calib").iterdir() if p.name.startswith(".")] == []


def test_trtcache_text_format(tmp_path: Path) -> None:
    _, trt_path = write_table(tmp_path, _table(), trt_version=100300)
    lines = trt_path.read_text().splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2"
    assert len(lines) == 1 + len(AMAX)
    name, digits = lines[2].rsplit(": ", 1)
    assert name == "/layer1/relu:0"
    assert len(digits) == 8
    (scale,) = struct.unpack(">f", bytes.fromhex(digits))
    assert scale == np.float32(7.125 / 127)


@pytest.mark.parametrize(
    ("config", "algorithm"),
    [
        (MaxConfig(), "MinMaxCalibration"),
        (EntropyConfig(), "EntropyCalibration2"),
        (PercentileConfig(), "LegacyCalibration"),
        (MseConfig(), "LegacyCalibration"),
    ],
)
def test_header_algorithm_per_calibrator(tmp_path: Path, config, algorithm: str) -> None:  # type: ignore[no-untyped-def]
    _, trt_path = write_table(tmp_path, _table(config))
    assert trt_path.read_text().splitlines()[0].endswith(f"-{algorithm}")


def test_trtcache_round_trip_is_float32_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    amax = {f"t{k}": float(v) for k, v in enumerate(rng.lognormal(0, 3, 200))}
    _, trt_path = write_table(tmp_path, _table(amax=amax))
    imported = import_trt_cache(trt_path)
    assert list(imported) == list(amax)
    for name, value in amax.items():
        # The scale is bit-identical, and the imported amax maps back to that same scale.
        assert np.float32(imported[name] / 127) == np.float32(value / 127)
        assert imported[name] == pytest.approx(value, rel=1e-7)
    # A second trip through the file changes nothing at all.
    again = tmp_path / "again"
    _, trt_again = write_table(again, _table(amax=imported))
    assert trt_again.read_text() == trt_path.read_text()
    assert import_trt_cache(trt_again) == imported


def test_import_foreign_cache(tmp_path: Path) -> None:
    path = tmp_path / "old.cache"
    path.write_text(
        "TRT-8601-EntropyCalibration2\ninput.1: 3c010a14\n(Unnamed Layer* 3): 3d8f5c29\n"
    )
    amax = import_trt_cache(path)
    assert list(amax) == ["input.1", "(Unnamed Layer* 3)"]
    assert np.float32(amax["input.1"] / 127) == struct.unpack(">f", bytes.fromhex("3c010a14"))[0]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("", 1),
        ("garbage\na: 3c010a14\n", 1),
        ("TRT-100300-Magic\na: 3c010a14\n", 1),
        ("TRT-100300-MinMaxCalibration\na: 3c010a14\nb 3c010a14\n", 3),
        ("TRT-100300-MinMaxCalibration\na: 3c010a14\nb: 3c01\n", 3),
        ("TRT-100300-MinMaxCalibration\na: zz010a14\n", 2),
        ("TRT-100300-MinMaxCalibration\na: 7fc00000\n", 2),  # NaN scale
    ],
)
def test_corrupt_trtcache_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "bad.trtcache"
    path.write_text(text)
    with pytest.raises(CorruptArtifactError, match=rf"bad\.trtcache' line {line}:"):
        import_trt_cache(path)


def test_corrupt_json_names_file_and_line(tmp_path: Path) -> None:
    table = _table()
    json_path, _ = write_table(tmp_path, table)
    lines = json_path.read_text().splitlines()
    lines[3] = lines[3][:-3]  # truncate a value in the middle of the file
    json_path.write_text("\n".join(lines))
    with pytest.raises(CorruptArtifactError, match=rf"{table.key}\.json' line \d+: not valid JSON"):
        load_table(tmp_path, table.key, SHA)


def test_incomplete_json_is_corrupt(tmp_path: Path) -> None:
    table = _table()
    json_path, _ = write_table(tmp_path, table)
    raw = json.loads(json_path.read_text())
    del raw["amax"]
    json_path.write_text(json.dumps(raw))
    with pytest.raises(CorruptArtifactError, match="missing or malformed field"):
        load_table(tmp_path, table.key, SHA)
    raw["amax"] = {"x": -1.0}
    json_path.write_text(json.dumps(raw))
    with pytest.raises(CorruptArtifactError, match="malformed"):
        load_table(tmp_path, table.key, SHA)


def test_table_for_another_model_is_refused(tmp_path: Path) -> None:
    table = _table()
    write_table(tmp_path, table)
    with pytest.raises(QuantpipeError, match="made for another model") as info:
        load_table(tmp_path, table.key, OTHER_SHA)
    assert not isinstance(info.value, CorruptArtifactError)


def test_table_under_another_key_is_refused(tmp_path: Path) -> None:
    table = _table()
    json_path, _ = write_table(tmp_path, table)
    other_key = cache_key(SHA, MaxConfig(), PROVENANCE)
    json_path.rename(tmp_path / f"{other_key}.json")
    with pytest.raises(QuantpipeError, match=f"holds key {table.key}, expected {other_key}"):
        load_table(tmp_path, other_key, SHA)
    with pytest.raises(QuantpipeError, match="does not exist"):
        load_table(tmp_path, table.key, SHA)


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
