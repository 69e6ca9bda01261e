"""Calibration tables on disk: ``calib/<key>.json`` and ``calib/<key>.trtcache``.

The key hashes everything the amax values depend on: the model file's sha256, the
calibrator and its parameters, and the calibration data provenance (source, split, count,
seed, preprocessing: a dict from the caller). A table made for another model is refused,
never silently reused.

``.trtcache`` is TensorRT's calibration-cache text format: a header line
``TRT-<version>-<Algorithm>``, then ``<tensor>: <8 hex digits>`` per tensor, the big-endian
IEEE-754 float32 scale amax/127. TensorRT takes the scales of a valid cache verbatim, but it
only accepts a cache whose algorithm matches the calibrator class that reads it, so the
header names that class:

- max -> ``MinMaxCalibration`` (IInt8MinMaxCalibrator: the same abs-max rule),
- entropy -> ``EntropyCalibration2`` (IInt8EntropyCalibrator2: the same KL search),
- percentile, mse -> ``LegacyCalibration`` (IInt8LegacyCalibrator, TensorRT's
  percentile-based, user-parametrised calibrator: the family our two belong to; claiming
  EntropyCalibration2 would misstate how the scales were found).

amax and scale are kept bit-consistent: the Q/DQ scale is float32(amax / 127), and an amax
imported from a cache is scale * 127 (exact in float64), which maps back to the same scale.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quantpipe.calibration.calibrators import CalibratorConfig, config_params
from quantpipe.errors import CorruptArtifactError, QuantpipeError, shown
from quantpipe.pipeline.atomic import atomic_write_json, atomic_write_text

QMAX = 127
KEY_LENGTH = 16
DEFAULT_TRT_VERSION = 100300  # TensorRT 10.3.0, as NV_TENSORRT_VERSION encodes it
TRT_ALGORITHMS = {
    "max": "MinMaxCalibration",
    "entropy": "EntropyCalibration2",
    "percentile": "LegacyCalibration",
    "mse": "LegacyCalibration",
}
_KNOWN_ALGORITHMS = {
    "EntropyCalibration",
    "EntropyCalibration2",
    "MinMaxCalibration",
    "LegacyCalibration",
}
_FORMAT = 1
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")


@dataclass(frozen=True)
class CalibrationTable:
    """One calibration result with everything needed to check it belongs to a model."""

    key: str
    model_sha256: str
    calibrator: str
    params: Mapping[str, Any]
    provenance: Mapping[str, Any]
    amax: Mapping[str, float] = field(default_factory=dict)


def cache_key(model_sha256: str, config: CalibratorConfig, provenance: Mapping[str, Any]) -> str:
    """Short hex sha256 of (model sha, calibrator name and parameters, data provenance).

    Raises:
        QuantpipeError: the provenance holds a value JSON cannot represent.
    """
    payload = {
        "model_sha256": model_sha256,
        "calibrator": config.name,
        "params": config_params(config),
        "provenance": dict(provenance),
    }
    try:
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise QuantpipeError(f"calibration provenance is not plain JSON data: {exc}") from exc
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def make_table(
    model_sha256: str,
    config: CalibratorConfig,
    provenance: Mapping[str, Any],
    amax: Mapping[str, float],
) -> CalibrationTable:
    """A `CalibrationTable` with its key computed."""
    return CalibrationTable(
        key=cache_key(model_sha256, config, provenance),
        model_sha256=model_sha256,
        calibrator=config.name,
        params=config_params(config),
        provenance=dict(provenance),
        amax={name: float(value) for name, value in amax.items()},
    )


def table_paths(calib_dir: str | os.PathLike[str], key: str) -> tuple[Path, Path]:
    """(json path, trtcache path) of the table ``key`` in ``calib_dir``."""
    base = Path(calib_dir)
    return base / f"{key}.json", base / f"{key}.trtcache"


def write_table(
    calib_dir: str | os.PathLike[str],
    table: CalibrationTable,
    trt_version: int = DEFAULT_TRT_VERSION,
) -> tuple[Path, Path]:
    """Write ``<key>.json`` and ``<key>.trtcache`` atomically; return their paths."""
    json_path, trt_path = table_paths(calib_dir, table.key)
    header = f"TRT-{trt_version}-{TRT_ALGORITHMS[table.calibrator]}"
    atomic_write_text(trt_path, format_trt_cache(table.amax, header))
    atomic_write_json(json_path, _table_to_json(table))
    return json_path, trt_path


def _table_to_json(table: CalibrationTable) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "key": table.key,
        "model_sha256": table.model_sha256,
        "calibrator": table.calibrator,
        "params": dict(table.params),
        "provenance": dict(table.provenance),
        "amax": dict(table.amax),
    }


def load_table(calib_dir: str | os.PathLike[str], key: str, model_sha256: str) -> CalibrationTable:
    """Load ``<key>.json`` from ``calib_dir`` and check it belongs to this model and key.

    Raises:
        CorruptArtifactError: the file is unparseable or incomplete (names file and line).
        QuantpipeError: the file is missing, or was made for another model or key.
    """
    json_path, _ = table_paths(calib_dir, key)
    if not json_path.is_file():
        raise QuantpipeError(f"calibration table {str(json_path)!r} does not exist")
    table = read_table_json(json_path)
    if table.model_sha256 != model_sha256:
        raise QuantpipeError(
            f"calibration table {str(json_path)!r} was made for another model (sha256 "
            f"{shown(table.model_sha256[:12])}…, this model is {model_sha256[:12]}…): recalibrate "
            "with this model or pass the table made for it"
        )
    if table.key != key:
        raise QuantpipeError(
            f"calibration table {str(json_path)!r} holds key {shown(table.key)}, expected {key}: "
            "it was made with other calibrator parameters or data; recalibrate"
        )
    return table


def read_table_json(path: str | os.PathLike[str]) -> CalibrationTable:
    """Parse a table JSON file (no model check; see `load_table`)."""
    text = _read_text(path)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptArtifactError(
            f"calibration table {str(path)!r} line {exc.lineno}: not valid JSON ({exc.msg})"
        ) from exc
    except (ValueError, RecursionError) as exc:
        # Valid JSON syntax Python will not read: an integer past its digit limit, or
        # nesting deeper than its recursion limit. No table of ours holds either.
        raise CorruptArtifactError(
            f"calibration table {str(path)!r}: not a calibration table (an integer too long "
            "or nesting too deep to read); recalibrate to rewrite it"
        ) from exc
    try:
        table = CalibrationTable(
            key=str(raw["key"]),
            model_sha256=str(raw["model_sha256"]),
            calibrator=str(raw["calibrator"]),
            params=dict(raw["params"]),
            provenance=dict(raw["provenance"]),
            amax={str(k): _amax_value(v) for k, v in dict(raw["amax"]).items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptArtifactError(
            f"calibration table {str(path)!r} line 1: missing or malformed field ({exc})"
        ) from exc
    if table.calibrator not in TRT_ALGORITHMS:
        raise CorruptArtifactError(
            f"calibration table {str(path)!r}: unknown calibrator {table.calibrator!r}"
        )
    return table


def _amax_value(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"amax {value!r} is not a number")
    try:
        amax = float(value)
    except OverflowError:  # an integer past float's range: JSON allows 1 and 400 zeros
        raise ValueError("an amax is an integer beyond the float range") from None
    if not math.isfinite(amax) or amax < 0:
        raise ValueError(f"amax {value!r} is not finite and >= 0")
    return amax


def _read_text(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise QuantpipeError(f"calibration file {str(path)!r} does not exist") from exc
    except UnicodeDecodeError as exc:
        raise CorruptArtifactError(f"calibration file {str(path)!r}: not UTF-8 text") from exc
    except OSError as exc:  # a directory, no permission, an I/O error
        raise QuantpipeError(
            f"cannot read calibration file {str(path)!r}: {exc.strerror or exc}"
        ) from exc


def scale_hex(amax: float) -> str:
    """TensorRT's cache encoding of amax: big-endian float32 of amax/127, 8 hex digits."""
    return struct.pack(">f", np.float32(amax / QMAX)).hex()


def format_trt_cache(amax: Mapping[str, float], header: str) -> str:
    """TensorRT calibration cache text for ``amax`` under ``header``."""
    lines = [header] + [f"{name}: {scale_hex(value)}" for name, value in amax.items()]
    return "\n".join(lines) + "\n"


def import_trt_cache(path: str | os.PathLike[str]) -> dict[str, float]:
    """amax per tensor from a TensorRT calibration cache (ours or another pipeline's).

    Raises:
        CorruptArtifactError: bad header or line (the message names file and line).
    """
    lines = _read_text(path).splitlines()
    _check_header(path, lines[0] if lines else "")
    amax: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        if line.strip():
            name, value = _parse_line(path, number, line)
            amax[name] = value
    return amax


def _check_header(path: str | os.PathLike[str], line: str) -> None:
    parts = line.strip().split("-")
    if len(parts) != 3 or parts[0] != "TRT" or not parts[1].isdigit():
        raise CorruptArtifactError(
            f"TensorRT cache {str(path)!r} line 1: expected 'TRT-<version>-<Algorithm>', "
            f"got {line.strip()[:60]!r}"
        )
    if parts[2] not in _KNOWN_ALGORITHMS:
        raise CorruptArtifactError(
            f"TensorRT cache {str(path)!r} line 1: unknown algorithm {parts[2]!r} "
            f"(known: {sorted(_KNOWN_ALGORITHMS)})"
        )


def _parse_line(path: str | os.PathLike[str], number: int, line: str) -> tuple[str, float]:
    # Tensor names may themselves hold ':' (e.g. 'x:0'): split at the last one.
    name, sep, digits = line.rpartition(":")
    digits = digits.strip()
    if not sep or not name.strip() or len(digits) != 8:
        raise CorruptArtifactError(
            f"TensorRT cache {str(path)!r} line {number}: expected '<tensor>: <8 hex digits>', "
            f"got {line[:80]!r}"
        )
    # Exactly 8 ASCII hex digits: bytes.fromhex alone would take "00 11 22" (spaces
    # skipped) as 3 bytes, and str.isdigit-style checks take non-ASCII digits.
    if not _HEX8.fullmatch(digits):
        raise CorruptArtifactError(
            f"TensorRT cache {str(path)!r} line {number}: {digits!r} is not 8 hex digits"
        )
    (scale,) = struct.unpack(">f", bytes.fromhex(digits))
    if not math.isfinite(scale) or scale < 0:
        raise CorruptArtifactError(
            f"TensorRT cache {str(path)!r} line {number}: scale {scale!r} is not finite and >= 0"
        )
    return name.strip(), float(scale) * QMAX
