"""TensorRT engines (`.plan`) built from ONNX with NVIDIA Polygraphy's loaders.

Networks are strongly typed (TensorRT 11 knows no other kind; TensorRT 10 takes the flag), so
the precision is the ONNX's own: FP32, an FP16 ONNX, or a Q/DQ INT8 ONNX. `build_plan`
refuses a model whose tensors say another precision than the job's. The optimization
profile spans the job's batch sizes on axis 0 of every input; the other dims must be static
in the ONNX. The tactic timing cache is one file per GPU and TensorRT version under
`job.cache_dir`, loaded when present and merged back after each build.

Written against Polygraphy 0.53.6 (`POLYGRAPHY_CHECKED`): NetworkFromOnnxPath, CreateConfig,
Profile, EngineBytesFromNetwork and SaveBytes as documented in their docstrings
(polygraphy/backend/trt/loader.py, config.py, profile.py; backend/common/loader.py).
TensorRT cannot be installed where this was written, so it is exercised only by tests
marked `tensorrt`. The ONNX checks run before tensorrt is imported, so they hold anywhere.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from quantpipe.engines.backend import BatchProfile, BuildInfo, BuildJob, Precision
from quantpipe.engines.machine import GpuInfo, gpu_info
from quantpipe.engines.metadata import TensorInfo, onnx_io
from quantpipe.errors import QuantpipeError

POLYGRAPHY_CHECKED = "0.53.6"
INSTALL = "pip install quantpipe[tensorrt] on a GPU host"
# {input: {"min"|"opt"|"max": shape}}: the profile as TensorRT gets it and metadata records it.
ProfileShapes = dict[str, dict[str, list[int]]]


def build_plan(job: BuildJob) -> BuildInfo:
    """Build `job.source` into the serialized engine `job.out`.

    Raises:
        QuantpipeError: the ONNX is not of `job.precision`, has an input that is not
            batch × static dims, TensorRT or Polygraphy does not import, or the build fails.
    """
    model = load_onnx(job.source)
    check_precision(job.source, model, job.precision)
    shapes = profile_shapes(input_dims(model, job.profile), job.profile)
    trt = require_tensorrt()
    from polygraphy.backend.trt import CreateConfig, NetworkFromOnnxPath

    cache = timing_cache(job.cache_dir, trt.__version__)
    network = NetworkFromOnnxPath(str(job.source), strongly_typed=True)
    config = CreateConfig(
        profiles=[polygraphy_profile(shapes)],
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: job.workspace_mib << 20},
        load_timing_cache=existing(cache),
    )
    save_engine(build_engine(network, config, job.source, cache), job.out)
    options = build_options(job, shapes, cache, strongly_typed=True)
    return BuildInfo("tensorrt", trt.__version__, options)


def load_onnx(path: Path) -> Any:
    """The ONNX graph at `path`, checked, without its external weights (only shapes and types
    are read here; TensorRT's parser reads the file itself)."""
    from quantpipe.export.onnx_file import load_onnx as load_checked

    return load_checked(path, load_external_data=False)


def onnx_precision(model: Any) -> Precision:
    """What a strongly typed build of `model` computes in: int8 with Q/DQ nodes, fp16 with
    FP16 weights or casts to FP16, else fp32."""
    from onnx import TensorProto

    ops = {n.op_type for n in model.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear"}:
        return "int8"
    half = TensorProto.FLOAT16
    casts = (
        a.i for n in model.graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"
    )
    if any(t.data_type == half for t in model.graph.initializer) or half in casts:
        return "fp16"
    return "fp32"


def check_precision(source: Path, model: Any, precision: Precision) -> None:
    """Refuse a model whose tensors say another precision than the job asks: a strongly
    typed network computes in the ONNX's types, whatever the engine is called."""
    found = onnx_precision(model)
    if found != precision:
        raise QuantpipeError(
            f"{source.name} computes in {found}, not {precision}: TensorRT builds strongly "
            f"typed networks in the ONNX's own precision; build {precision} from the "
            f"{precision} ONNX"
        )


def input_dims(model: Any, profile: BatchProfile) -> dict[str, list[int]]:
    """Per graph input, its dims after the batch axis (which must all be static)."""
    inputs, _ = onnx_io(model)
    return {t.name: _static_tail(t, profile) for t in inputs}


def _static_tail(t: TensorInfo, profile: BatchProfile) -> list[int]:
    if not t.shape:
        raise QuantpipeError(
            f"ONNX input {t.name!r} has no batch axis (no dims recorded): the TensorRT "
            "profile spans axis 0 of every input; export the model with input shapes"
        )
    batch, *rest = t.shape
    dynamic = [axis for axis, d in enumerate(rest, 1) if not isinstance(d, int) or d <= 0]
    if dynamic:
        raise QuantpipeError(
            f"ONNX input {t.name!r} has shape {t.shape}, dynamic on axes {dynamic}: the "
            "TensorRT profile varies only the batch axis; export with static other dims"
        )
    if isinstance(batch, int) and batch > 0 and not profile.min == profile.max == batch:
        raise QuantpipeError(
            f"ONNX input {t.name!r} has a fixed batch of {batch}, and the profile asks "
            f"{profile.min}-{profile.max}: export with a dynamic batch axis, or build "
            f"with --batch-sizes {batch}"
        )
    return [int(d) for d in rest]


def profile_shapes(dims: dict[str, list[int]], profile: BatchProfile) -> ProfileShapes:
    """min/opt/max shapes per input: the batch sizes of `profile` on axis 0, `dims` after."""
    sizes = {"min": profile.min, "opt": profile.opt, "max": profile.max}
    return {name: {k: [b, *rest] for k, b in sizes.items()} for name, rest in dims.items()}


def polygraphy_profile(shapes: ProfileShapes) -> Any:
    """The Polygraphy `Profile` (one TensorRT optimization profile) of `shapes`."""
    from polygraphy.backend.trt import Profile

    profile = Profile()
    for name, s in shapes.items():
        profile.add(name, min=tuple(s["min"]), opt=tuple(s["opt"]), max=tuple(s["max"]))
    return profile


def require_tensorrt() -> Any:
    """The tensorrt module, after checking Polygraphy imports too; a clear error if not."""
    try:
        import tensorrt as trt
    except Exception as e:  # a broken install raises more than ImportError
        raise QuantpipeError(f"tensorrt does not import ({_first_line(e)}); {INSTALL}") from None
    try:
        import polygraphy  # noqa: F401
    except Exception as e:
        raise QuantpipeError(f"polygraphy does not import ({_first_line(e)}); {INSTALL}") from None
    return trt


def timing_cache_file(cache_dir: Path, gpu: GpuInfo, trt_version: str) -> Path:
    """`timing.nvidia-h200.sm90.trt10.3.0.26.cache`: TensorRT rejects a timing cache made
    by another version or on another device, so each pair gets its own file."""
    name = re.sub(r"[^a-z0-9]+", "-", gpu.name.lower()).strip("-") or "gpu"
    sm = gpu.compute_capability.replace(".", "")
    return cache_dir / f"timing.{name}.sm{sm}.trt{trt_version}.cache"


def timing_cache(cache_dir: Path | None, trt_version: str) -> Path | None:
    """This GPU's timing cache file under `cache_dir` (created); None without a cache
    directory, or when the GPU cannot be named (a cache must not mix devices)."""
    gpu = gpu_info()
    if cache_dir is None or gpu is None:
        return None
    cache_dir.mkdir(parents=True, exist_ok=True)
    return timing_cache_file(cache_dir, gpu, trt_version)


def existing(cache: Path | None) -> str | None:
    # Polygraphy warns about a missing timing cache file; the first build has none.
    return str(cache) if cache is not None and cache.is_file() else None


def build_engine(network: Any, config: Any, source: Path, cache: Path | None) -> Any:
    """The serialized engine (TensorRT's IHostMemory), the timing cache merged into `cache`.

    EngineBytesFromNetwork, not EngineFromNetwork: the latter deserializes the engine only
    for us to serialize it again, holding a second copy in GPU memory.
    """
    from polygraphy.backend.trt import EngineBytesFromNetwork
    from polygraphy.exception import PolygraphyException

    save = None if cache is None else str(cache)
    try:
        return EngineBytesFromNetwork(network, config, save_timing_cache=save)()
    except PolygraphyException as e:
        raise QuantpipeError(
            f"TensorRT could not build {source.name}: {_first_line(e)} (its log above says why)"
        ) from None


def save_engine(engine: Any, out: Path) -> None:
    from polygraphy.backend.common import SaveBytes

    SaveBytes(engine, str(out))()


def build_options(
    job: BuildJob, shapes: ProfileShapes, cache: Path | None, **extra: Any
) -> dict[str, Any]:
    """The options a build used, as the engine's metadata records them."""
    import polygraphy

    return {
        "profile": shapes,
        "workspace_mib": job.workspace_mib,
        "tf32": False,  # Polygraphy's CreateConfig clears TensorRT's TF32 flag by default
        "timing_cache": None if cache is None else str(cache),
        "polygraphy": polygraphy.__version__,
        **extra,
    }


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
