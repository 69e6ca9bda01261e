"""TensorRT 10's implicit INT8: the FP32 network, the INT8 builder flag, and the scales of
quantpipe's calibration cache (`calib/<key>.trtcache`), which a calibrator only reads.

TensorRT 11 removed this path (no `IInt8*Calibrator`, no `BuilderFlag.INT8`); there, and
by default everywhere, INT8 is the Q/DQ model through `tensorrt_build.build_plan`. Call
`build_implicit_int8` only where `has_implicit_int8()`.

How Polygraphy's `Calibrator` (0.53.6, polygraphy/backend/trt/calibrator.py) behaves, and
what this module does about it:

- `data_loader=None` is not "no data": the calibrator calls `iter(data_loader)` when it is
  made. It gets a loader that yields nothing and records being asked for data.
- With a cache, TensorRT reads it (`read_calibration_cache`) and asks for no data. TensorRT
  skips a cache it finds incompatible (NVIDIA/TensorRT#1378) and asks for batches; the empty
  loader then makes Polygraphy's `get_batch` return None, which TensorRT takes as the end
  of the data: it would calibrate on nothing. So a build that asked is refused.
- The calibrator writes what TensorRT hands it back to its cache path: it gets a temporary
  copy, so our cache is never rewritten. The copy's header carries the installed TensorRT
  version (the scales do not depend on it; a stale version must not make TensorRT skip it).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from quantpipe.engines.backend import BuildInfo, BuildJob
from quantpipe.engines.tensorrt_build import (
    ProfileShapes,
    build_engine,
    build_options,
    check_precision,
    existing,
    input_dims,
    load_onnx,
    polygraphy_profile,
    profile_shapes,
    require_tensorrt,
    save_engine,
    timing_cache,
)
from quantpipe.errors import QuantpipeError

# A cache header's algorithm -> the TensorRT calibrator class that accepts that cache.
CALIBRATOR_CLASSES = {
    "EntropyCalibration2": "IInt8EntropyCalibrator2",
    "EntropyCalibration": "IInt8EntropyCalibrator",
    "MinMaxCalibration": "IInt8MinMaxCalibrator",
    "LegacyCalibration": "IInt8LegacyCalibrator",
}


def has_implicit_int8() -> bool:
    """Whether the TensorRT importable here still has calibrators (TensorRT ≤ 10)."""
    try:
        import tensorrt as trt
    except Exception:  # missing or broken: either way no implicit INT8
        return False
    return hasattr(trt, "IInt8EntropyCalibrator2") and hasattr(trt.BuilderFlag, "INT8")


def build_implicit_int8(fp32_onnx: Path, trtcache: Path, job: BuildJob) -> BuildInfo:
    """Build `fp32_onnx` into an INT8 engine at `job.out` with the scales of `trtcache`.

    Raises:
        CorruptArtifactError: `trtcache` is not a valid TensorRT calibration cache.
        QuantpipeError: the model is not FP32 or not batch × static dims, TensorRT is
            missing or has no implicit INT8, or TensorRT did not accept the cache.
    """
    model = load_onnx(fp32_onnx)
    check_precision(fp32_onnx, model, "fp32")
    shapes = profile_shapes(input_dims(model, job.profile), job.profile)
    base = calibrator_class(trtcache)
    trt = _require_implicit_int8(base)
    with tempfile.TemporaryDirectory(prefix="quantpipe-calib-") as tmp:
        copy = restamped_cache(trtcache, Path(tmp), trt.__version__)
        engine, cache = _build_from_cache(fp32_onnx, copy, base, shapes, job)
    save_engine(engine, job.out)
    legacy = {"strongly_typed": False, "int8": "implicit", "calibrator": base}
    options = build_options(job, shapes, cache, **legacy, calibration_cache=str(trtcache))
    return BuildInfo("tensorrt", trt.__version__, options)


def calibrator_class(trtcache: Path) -> str:
    """The TensorRT calibrator class that accepts `trtcache`: TensorRT takes a cache only
    from the algorithm its header names."""
    # quantpipe.calibration imports onnx: not when this module is only imported.
    from quantpipe.calibration.cache import import_trt_cache

    import_trt_cache(trtcache)  # checks the header and every line (CorruptArtifactError)
    algorithm = trtcache.read_text(encoding="utf-8").splitlines()[0].strip().split("-")[2]
    return CALIBRATOR_CLASSES[algorithm]


def trt_version_code(version: str) -> int:
    """NV_TENSORRT_VERSION, as cache headers write it: 10.3.0.26 -> 100300, 8.6.1 -> 8601."""
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if found is None:
        raise QuantpipeError(f"cannot read the TensorRT version {version!r} (major.minor.patch)")
    major, minor, patch = (int(g or 0) for g in found.groups())
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def restamped_cache(trtcache: Path, directory: Path, trt_version: str) -> Path:
    """A copy of `trtcache` in `directory` whose header names TensorRT `trt_version`."""
    lines = trtcache.read_text(encoding="utf-8").splitlines()
    algorithm = lines[0].strip().split("-")[2]
    copy = directory / trtcache.name
    header = f"TRT-{trt_version_code(trt_version)}-{algorithm}"
    copy.write_text("\n".join([header, *lines[1:]]) + "\n", encoding="utf-8")
    return copy


class NoCalibrationData:
    """A calibration data loader with no data, which records whether TensorRT asked for
    some: it asks only when it did not take the scales from the cache."""

    def __init__(self) -> None:
        self.asked = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # A generator: iter() (Polygraphy's reset) runs none of this; the first next() does.
        self.asked = True
        yield from ()


def _require_implicit_int8(base: str) -> Any:
    trt = require_tensorrt()
    if not hasattr(trt, base) or not hasattr(trt.BuilderFlag, "INT8"):
        raise QuantpipeError(
            f"TensorRT {trt.__version__} has no implicit INT8 (no trt.{base}: TensorRT 11 "
            "removed calibrators); build INT8 engines from the Q/DQ model instead"
        )
    return trt


def _build_from_cache(
    fp32_onnx: Path, cache_copy: Path, base: str, shapes: ProfileShapes, job: BuildJob
) -> tuple[Any, Path | None]:
    """(serialized engine, timing cache used); refused if TensorRT asked for data."""
    import tensorrt as trt
    from polygraphy.backend.trt import Calibrator, CreateConfig, NetworkFromOnnxPath

    data = NoCalibrationData()
    cache = timing_cache(job.cache_dir, trt.__version__)
    config = CreateConfig(
        int8=True,
        calibrator=Calibrator(data, cache=str(cache_copy), BaseClass=getattr(trt, base)),
        profiles=[polygraphy_profile(shapes)],
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: job.workspace_mib << 20},
        load_timing_cache=existing(cache),
    )
    network = NetworkFromOnnxPath(str(fp32_onnx))  # not strongly typed: TensorRT picks INT8
    engine = _unless_asked(data, lambda: build_engine(network, config, fp32_onnx, cache))
    return engine, cache


def _unless_asked(data: NoCalibrationData, build: Callable[[], Any]) -> Any:
    """`build()`, refused when TensorRT asked `data` for batches (whether or not the build
    then failed: what failed is then the cache, not the network)."""
    engine = None
    try:
        engine = build()
    except QuantpipeError:
        if not data.asked:
            raise
    if data.asked:
        raise QuantpipeError(
            "TensorRT did not take the scales from the calibration cache and asked for "
            "calibration data, which this build never gives (its log above says why); "
            "recalibrate with `quantpipe calibrate`, or build INT8 from the Q/DQ model"
        )
    return engine
