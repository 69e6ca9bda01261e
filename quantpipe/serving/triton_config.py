"""Triton Inference Server model configurations (`config.pbtxt`) from engine metadata.

The configuration is built as Triton's own protobuf message (`ModelConfig`, shipped in
`tritonclient.grpc.model_config_pb2`) and written with protobuf's text format, so every
field name and enum is checked by the message, not by string templates. What maps to what:

- the engine's runtime → `platform`: `tensorrt_plan` (a `.plan` file) or
  `onnxruntime_onnx` (a `.onnx` file); ONNX Runtime's TensorRT provider is the ONNX
  platform with Triton's `tensorrt` GPU execution accelerator;
- the batch profile → `max_batch_size` (the profile's max) when the first dimension of
  every input and output is the dynamic batch, and then `dims` leave it out; otherwise
  `max_batch_size: 0` and full shapes. Other symbolic dimensions are -1;
- dynamic batching with preferred sizes inside the profile (default: its opt and max);
- one instance group: CPU for the CPU backends, GPU for the CUDA and TensorRT ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantpipe.engines.metadata import EngineMeta, TensorInfo
from quantpipe.errors import QuantpipeError


@dataclass(frozen=True)
class Platform:
    """How Triton serves one backend's engines."""

    name: str  # Triton's platform
    file: str  # the model file's name in the version directory
    device: str  # cpu or gpu


# Backends Triton serves natively.
PLATFORMS = {
    "onnxruntime-cpu": Platform("onnxruntime_onnx", "model.onnx", "cpu"),
    "onnxruntime-cuda": Platform("onnxruntime_onnx", "model.onnx", "gpu"),
    "onnxruntime-tensorrt": Platform("onnxruntime_onnx", "model.onnx", "gpu"),
    "tensorrt": Platform("tensorrt_plan", "model.plan", "gpu"),
}
PYTHON_SUFFIX = "_python"  # the Python-backend variant of a model
BATCH_DIM = "batch"  # the name quantpipe's exporter gives the dynamic batch dimension
INT32_MAX, INT64_MAX, UINT64_MAX = 2**31 - 1, 2**63 - 1, 2**64 - 1
UINT32_MAX = 2**32 - 1
# Requests per model the dynamic batcher may hold before rejecting more (here and in
# `serve`): with one-image requests and a max batch of 16, 16 batch runs of waiting at
# most; a burst of a few hundred clients is absorbed, a flood is refused instead of queued
# without bound.
DEFAULT_MAX_QUEUE = 256
_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "float64": "TYPE_FP64",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "bool": "TYPE_BOOL",
}


@dataclass(frozen=True)
class ServingOptions:
    """How Triton batches and places one model."""

    instances: int = 1  # model instances per device
    max_queue_delay_us: int = 100  # how long Triton may hold a request to fill a batch
    preferred_batch_sizes: tuple[int, ...] | None = None  # default: the profile's opt, max
    # Requests one model may queue before Triton rejects more at once. Triton's own default
    # (0) queues without bound: a flood then grows memory and latency until clients time out.
    max_queue: int = DEFAULT_MAX_QUEUE

    def __post_init__(self) -> None:
        # The upper bounds are the widths of ModelConfig's fields (int32 instance count,
        # uint64 delay, int32 batch sizes), past which protobuf raises a bare ValueError.
        if not (1 <= self.instances <= INT32_MAX and 0 <= self.max_queue_delay_us <= UINT64_MAX):
            raise QuantpipeError(
                f"--instances must be in 1..{INT32_MAX} and --max-queue-delay-us in "
                f"0..{UINT64_MAX}, got {self.instances}, {self.max_queue_delay_us}"
            )
        if not 1 <= self.max_queue <= UINT32_MAX:
            raise QuantpipeError(
                f"--max-queue must be in 1..{UINT32_MAX} (Triton's 0 would queue without "
                f"bound), got {self.max_queue}"
            )
        sizes = self.preferred_batch_sizes
        if sizes is not None and not (sizes and all(1 <= b <= INT32_MAX for b in sizes)):
            raise QuantpipeError(
                f"--preferred-batch-sizes must be one or more sizes in 1..{INT32_MAX}, got {sizes}"
            )


def platform(meta: EngineMeta) -> Platform:
    if meta.backend not in PLATFORMS:
        raise QuantpipeError(
            f"engine {meta.engine!r} ({meta.backend!r}) has no Triton backend: Triton serves "
            f"{', '.join(PLATFORMS)} engines"
        )
    return PLATFORMS[meta.backend]


def model_name(meta: EngineMeta) -> str:
    """`fp32.onnxruntime-cpu.int8.onnx` → `fp32_onnxruntime-cpu_int8` (no dots, which some
    clients and URLs treat specially)."""
    return Path(meta.engine).stem.replace(".", "_")


def model_config(
    name: str, meta: EngineMeta, options: ServingOptions, python_backend: bool = False
) -> Any:
    """The `ModelConfig` message serving the engine described by `meta` as model `name`:
    by Triton's own backend for the engine, or (`python_backend`) by Triton's Python backend
    running quantpipe's runner (`triton_python_model.py`), which serves any engine."""
    mc = _pb2()
    _check_text(meta, "the model name", name)
    batched = all(_batched(t) for t in [*meta.inputs, *meta.outputs])
    max_batch = meta.profile.max if batched else 0
    if max_batch > INT32_MAX:
        raise QuantpipeError(
            f"engine {meta.engine!r} has batch profile max {max_batch}, past Triton's "
            f"max_batch_size limit {INT32_MAX}: rebuild it with smaller --batch-sizes"
        )
    if python_backend:
        device = PLATFORMS[meta.backend].device if meta.backend in PLATFORMS else "cpu"
        config = mc.ModelConfig(name=name, backend="python", max_batch_size=max_batch)
    else:
        served = platform(meta)
        device = served.device
        config = mc.ModelConfig(name=name, platform=served.name, max_batch_size=max_batch)
    for info, field in ((meta.inputs, config.input), (meta.outputs, config.output)):
        for t in info:
            _check_text(meta, "a tensor name", t.name)
            field.add(name=t.name, data_type=_data_type(mc, t), dims=_dims(meta, t, batched))
    if batched:
        sizes = options.preferred_batch_sizes or (meta.profile.opt, meta.profile.max)
        outside = [b for b in sizes if not meta.profile.admits(b)]
        if outside:
            raise QuantpipeError(
                f"preferred batch sizes {outside} lie outside engine {meta.engine!r}'s profile "
                f"{meta.profile.min}..{meta.profile.max}: choose sizes inside it"
            )
        config.dynamic_batching.preferred_batch_size.extend(sorted(set(sizes)))
        config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
        policy = config.dynamic_batching.default_queue_policy
        policy.max_queue_size = options.max_queue
        policy.timeout_action = mc.ModelQueuePolicy.REJECT
    group = mc.ModelInstanceGroup
    kind = group.KIND_GPU if device == "gpu" else group.KIND_CPU
    config.instance_group.add(count=options.instances, kind=kind)
    if meta.backend == "onnxruntime-tensorrt":
        accel = config.optimization.execution_accelerators.gpu_execution_accelerator.add()
        accel.name = "tensorrt"
        accel.parameters["precision_mode"] = "FP16" if meta.precision == "fp16" else "FP32"
    return config


def to_text(config: Any) -> str:
    from google.protobuf import text_format

    return str(text_format.MessageToString(config))


def parse_config(text: str, where: str = "config.pbtxt") -> Any:
    """A `config.pbtxt` parsed into the `ModelConfig` message (a clear error if it is not)."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, _pb2().ModelConfig())
    except (text_format.ParseError, ValueError) as e:
        # ValueError: a value the parser accepts but protobuf's runtime will not store (an
        # enum given a 400-digit integer, found by the fuzzer). The parser quotes the
        # offending text, which may hold line breaks: one line.
        problem = " ".join(str(e).splitlines())[:200]
        raise QuantpipeError(f"{where} is not a Triton model configuration: {problem}") from None


def _pb2() -> Any:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def _batched(t: TensorInfo) -> bool:
    return bool(t.shape) and t.shape[0] == BATCH_DIM


def _dims(meta: EngineMeta, t: TensorInfo, batched: bool) -> Sequence[int]:
    """Triton's dims: named (free) dimensions are -1; a number must fit its int64 field
    and mean a size (-1 being Triton's own "free")."""
    shape = t.shape[1:] if batched else t.shape
    dims = [d if isinstance(d, int) else -1 for d in shape]
    bad = [d for d in dims if not -1 <= d <= INT64_MAX]
    if bad:
        raise QuantpipeError(
            f"engine {meta.engine!r}: tensor {t.name!r} has dimension {bad[0]}, which is no "
            "size: rebuild the engine and its metadata with `quantpipe engines --force`"
        )
    return dims


def _data_type(mc: Any, t: TensorInfo) -> int:
    if t.dtype not in _DTYPES:
        raise QuantpipeError(
            f"tensor {t.name!r} has dtype {t.dtype!r}, which this Triton configuration does not "
            f"map: one of {', '.join(_DTYPES)}"
        )
    return int(mc.DataType.Value(_DTYPES[t.dtype]))


def _check_text(meta: EngineMeta, what: str, text: str) -> None:
    """Protobuf strings are UTF-8: a lone surrogate (which JSON's \\ud800 escapes can put
    in the metadata) would fail deep inside protobuf with a UnicodeEncodeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise QuantpipeError(
            f"engine {meta.engine!r}: {what} {text!r} is not valid Unicode text: rebuild the "
            "engine and its metadata with `quantpipe engines --force`"
        ) from None
