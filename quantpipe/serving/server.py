"""`quantpipe serve`: engines served by Triton Inference Server through nvidia-pytriton.

pytriton starts a real `tritonserver` (shipped in its wheel, with Triton's Python backend)
and binds Python functions as Triton models. Each engine becomes two models:

- `<model>` (e.g. `fp32_onnxruntime-cpu_int8`): the engine's own inputs and outputs,
  float32 tensors exactly as the engine takes them, run by the backend registry's runner
  (ONNX Runtime here; TensorRT or PyTorch on CUDA on GPU hosts);
- `<model>_raw`: uint8 images (H, W, C), preprocessed server-side as the ONNX model's
  metadata says (resize, crop, scale, normalise), then the same runner.

Triton's dynamic batcher gathers requests into batches up to the engine profile's max;
Triton itself checks every request's names, shapes and data types against the model's
configuration and answers a bad one with an error, and keeps serving.

This runs in the serving environment (`.venv-serve`, numpy < 2): nvidia-pytriton 0.7.0
pins numpy < 2 and, with numpy 2 installed anyway, answers with empty outputs.
"""

from __future__ import annotations

import os
import signal
import socket
import sysconfig
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantpipe.engines.backend import RunnerOptions
from quantpipe.engines.metadata import EngineMeta, load_engine
from quantpipe.engines.registry import get_backend
from quantpipe.errors import QuantpipeError

SERVE_VENV = ".venv-serve"
RAW_SUFFIX = "_raw"


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_queue_delay_us: int = 100
    threads: int = 0  # ONNX Runtime / PyTorch CPU threads per model; 0: the library's default

    def ports(self) -> dict[str, int]:
        return {"--http-port": self.http_port, "--grpc-port": self.grpc_port,
                "--metrics-port": self.metrics_port}  # fmt: skip


@dataclass(frozen=True)
class ServedModel:
    name: str
    engine: Path
    meta: EngineMeta
    raw: bool  # a `_raw` twin taking uint8 images exists


def check_environment() -> None:
    """pytriton present and numpy < 2, or one line saying where serving runs."""
    major = int(np.__version__.split(".")[0])
    try:
        import pytriton  # noqa: F401
    except ImportError:
        major = max(major, 99)
    if major >= 2:
        raise QuantpipeError(
            f"serving runs in its own environment (nvidia-pytriton 0.7 needs numpy < 2; this "
            f"one has numpy {np.__version__} or lacks pytriton): use {SERVE_VENV}/bin/quantpipe "
            "serve, which `make setup` creates"
        )


def check_ports(options: ServeOptions) -> None:
    """Every port free on the host, or one line naming the one in use."""
    for flag, port in options.ports().items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((options.host, port))
            except OSError as e:
                raise QuantpipeError(
                    f"port {port} on {options.host} is not free ({e.strerror}): choose another "
                    f"with {flag}, or stop what holds it"
                ) from None


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` ports free on `host` now (for tests and benchmarks on loopback)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind((host, 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def serve(
    engines: list[Path],
    options: ServeOptions,
    on_ready: Callable[[list[ServedModel]], None] | None = None,
    stop: threading.Event | None = None,
    repository: Path | None = None,
) -> None:
    """Serve `engines` (bound here), or else the models of a Python-backend `repository`
    (as `quantpipe triton --python-backend` writes it: the server loads them itself), until
    SIGINT/SIGTERM or `stop`."""
    if engines and repository is not None:
        raise QuantpipeError("serve engines or a --repository, not both")
    check_environment()
    check_ports(options)
    # The Python backend's stub must load this Python's libpython, not the system's older
    # one (measured: Debian's fails with "'_thread.RLock' object has no attribute
    # '_recursion_count'"); tritonserver, a child process, inherits this.
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}"
    from pytriton.triton import Triton, TritonConfig

    config = TritonConfig(
        http_address=options.host, http_port=options.http_port,
        grpc_address=options.host, grpc_port=options.grpc_port,
        metrics_address=options.host, metrics_port=options.metrics_port,
        exit_timeout_secs=5, log_file=log_file(), model_repository=repository,
    )  # fmt: skip
    stop = stop or threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in _signals()}
    runners = []
    try:
        with Triton(config=config) as triton:
            served = []
            for engine in engines:
                meta = load_engine(engine)
                runner = get_backend(meta.backend).runner(engine, RunnerOptions(options.threads))
                runner.activate()
                runners.append(runner)
                served.append(_bind(triton, engine, meta, runner, options))
            triton.run()
            if on_ready is not None:
                on_ready(served)
            stop.wait()
    finally:
        for runner in runners:
            runner.deactivate()
        for s, handler in previous.items():
            signal.signal(s, handler)


def log_file() -> Path:
    """Where tritonserver's own log goes (it logs every model load and unload)."""
    return Path(tempfile.gettempdir()) / f"quantpipe-serve-{os.getpid()}.triton.log"


def _signals() -> list[signal.Signals]:
    # Signal handlers can only be set from the main thread; a caller serving from another
    # thread stops the server with `stop` instead.
    if threading.current_thread() is not threading.main_thread():
        return []
    return [signal.SIGINT, signal.SIGTERM]


def _bind(triton: Any, engine: Path, meta: EngineMeta, runner: Any, o: ServeOptions) -> ServedModel:
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    from quantpipe.serving.triton_config import model_name

    if len(meta.inputs) != 1:
        raise QuantpipeError(f"engine {engine.name} has {len(meta.inputs)} inputs; serve takes one")
    (inp,) = meta.inputs
    name = model_name(meta)

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        out = runner.infer({inp.name: x})
        values = list(out.values())  # runners name outputs as the model does, or positionally
        return {t.name: np.asarray(out.get(t.name, values[i])) for i, t in enumerate(meta.outputs)}

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return run(inputs[inp.name])

    def tensors(infos: Any) -> list[Any]:
        return [Tensor(name=t.name, dtype=np.dtype(t.dtype), shape=_dims(t.shape)) for t in infos]

    config = ModelConfig(
        max_batch_size=meta.profile.max,
        batcher=DynamicBatcher(max_queue_delay_microseconds=o.max_queue_delay_us),
    )
    outputs = tensors(meta.outputs)
    triton.bind(name, infer, tensors(meta.inputs), outputs, config=config, strict=True)
    pre = _preprocessing(engine, meta)
    if pre is not None:
        from quantpipe.data.preprocess import to_model_input
        from quantpipe.data.sources import Source

        images = Source("image", 0, lambda _: np.empty(0), None, 255.0)

        @batch
        def infer_raw(image: np.ndarray) -> dict[str, np.ndarray]:
            return run(to_model_input(image, images, pre))

        raw_in = [Tensor(name="image", dtype=np.uint8, shape=(-1, -1, -1))]
        triton.bind(name + RAW_SUFFIX, infer_raw, raw_in, outputs, config=config, strict=True)
    return ServedModel(name, engine, meta, pre is not None)


def _dims(shape: list[int | str]) -> tuple[int, ...]:
    """Without the batch dimension; named free dimensions are -1."""
    return tuple(d if isinstance(d, int) else -1 for d in shape[1:])


def _preprocessing(engine: Path, meta: EngineMeta) -> Any:
    """The preprocessing recorded in the engine's ONNX model (the engine itself for ONNX
    Runtime engines, else the run's source model beside `engines/`), or None."""
    from quantpipe.export.metadata import contract_from_onnx

    for onnx_file in (engine, engine.parent.parent / meta.source):
        if onnx_file.suffix == ".onnx" and onnx_file.is_file():
            contract = contract_from_onnx(onnx_file)
            if contract is not None:
                return contract.preprocessing
    return None
