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

Under load the batcher's queue is bounded (`--max-queue`, default 256 requests per model:
Triton's `dynamic_batching { default_queue_policy { max_queue_size } }`, set through
pytriton's `QueuePolicy`). A request that finds the queue full is rejected at once with
"Exceeds maximum queue size" (HTTP 503, gRPC UNAVAILABLE), so a flood past capacity gets
fast explicit rejections instead of an ever longer wait and an ever larger server; the
wait of an admitted request is bounded by the queue's length times a batch's run time.
Triton's default (0) queues without bound: measured on this digits model, 4096 concurrent
requests waited up to 3.5 s each, and the wait grows with the flood. Triton 2.51's metrics
do not count these rejections (`nv_inference_request_failure{reason="REJECTED"}` stayed 0,
measured): only the clients see them.

Limits of the Triton and pytriton underneath (2.51, 0.7), measured:

- no request-size limit at the HTTP or gRPC front end (no `--http-max-input-size` yet).
  The engine's model has fixed dimensions, so an oversized request is refused by Triton's
  shape check once read; the `_raw` model's are free, so any image reaches the Python
  backend: over MAX_IMAGE_BYTES it is refused before preprocessing (resizing a 300 MiB
  image held the model 30 s), but the shared memory it passed through (the backend's
  region, pytriton's tensor store) grows to the largest request and never shrinks: one
  300 MiB image left the process tree ~2.5 GiB larger. Beyond loopback, put a proxy with
  a body-size limit in front;
- an error while running a batch (a `_raw` image preprocessing refuses: channels it
  cannot convert, no pixels, too large) fails that batch with HTTP 500 / gRPC INTERNAL and
  the Python traceback in the message: pytriton has no per-request error. Triton batches
  only requests of one shape, so the error never reaches requests of other shapes;
- NaN and inf inputs are answered as the engine answers them in-process (FP32: NaN; the
  INT8 CPU build maps NaN to finite outputs), the other rows of a batch unchanged;
- in bursts, a batch sometimes waits 0.5 s more (a failing one ~1 s) in pytriton's ZeroMQ
  hop between the stub and this process: of 8 requests sent at once, the first answered
  in 10 ms and the other 7 after 0.51 s. Rare under steady load (p99 50-90 ms in a 30 s
  soak at 8 clients); not a hang, and not fixable from here.

If tritonserver dies, `serve` stops and says so (exit 2) rather than living on, serving
nothing. If `serve` itself dies without stopping Triton (SIGKILL), its watchdog
(quantpipe/serving/watchdog.py) kills tritonserver and the Python-backend stubs at once and
removes pytriton's workspace and shared memory; a server killed with its watchdog (its
whole session) leaves those for the next `serve` to remove.

This runs in the serving environment (`.venv-serve`, numpy < 2): nvidia-pytriton 0.7.0
pins numpy < 2 and, with numpy 2 installed anyway, answers with empty outputs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
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
from quantpipe.serving.triton_config import DEFAULT_MAX_QUEUE

SERVE_VENV = ".venv-serve"
RAW_SUFFIX = "_raw"
# The most bytes (H x W x C) one image sent to a `_raw` model may have: a 2560x2048 RGB
# image, far beyond what a classifier's preprocessing resizes to.
MAX_IMAGE_BYTES = 16 * 2**20
WORKSPACE_PREFIX = "quantpipe-serve-"  # pytriton's workspace: PREFIX<host>-<pid>
MONITOR_S = 1.0  # how often serve checks that tritonserver and the models still live


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_queue_delay_us: int = 100
    threads: int = 0  # ONNX Runtime / PyTorch CPU threads per model; 0: the library's default
    max_queue: int = DEFAULT_MAX_QUEUE  # requests queued per model before Triton rejects

    def __post_init__(self) -> None:
        if self.max_queue < 1:
            raise QuantpipeError(
                f"--max-queue must be at least 1 (requests queued per model), got "
                f"{self.max_queue}: Triton's 0 would queue without bound"
            )

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

    remove_stale_workspaces()
    workspace = workspace_path()
    config = TritonConfig(
        http_address=options.host, http_port=options.http_port,
        grpc_address=options.host, grpc_port=options.grpc_port,
        metrics_address=options.host, metrics_port=options.metrics_port,
        exit_timeout_secs=5, log_file=log_file(), model_repository=repository,
    )  # fmt: skip
    stop = stop or threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in _signals()}
    runners = []
    watchdog = _start_watchdog(workspace)  # before tritonserver starts: no unguarded moment
    try:
        with Triton(config=config, workspace=workspace) as triton:
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
            _wait(triton, stop)
    finally:
        for runner in runners:
            runner.deactivate()
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop_watchdog(watchdog)


def _wait(triton: Any, stop: threading.Event) -> None:
    """Until `stop`; an error if tritonserver or a model's proxy dies first (pytriton then
    stops, and a `serve` left waiting would look alive while serving nothing)."""
    while not stop.wait(MONITOR_S):
        if not triton.is_alive():
            raise QuantpipeError(
                f"tritonserver exited unexpectedly; nothing is served any more (Triton's log: "
                f"{log_file()})"
            )


def workspace_path() -> Path:
    """pytriton's workspace for this process: named with the host and pid, so a later
    `serve` can tell a dead server's leftovers from a live one's."""
    from pytriton.constants import PYTRITON_HOME

    return Path(PYTRITON_HOME) / f"{WORKSPACE_PREFIX}{socket.gethostname()}-{os.getpid()}"


def shm_prefix(pid: int) -> str:
    """The prefix of the shared-memory regions pytriton names for a server with `pid`."""
    return f"pytrtion{pid}-"  # sic: pytriton's spelling


def remove_stale_workspaces() -> list[Path]:
    """Remove what servers of this host that died with their watchdog left (workspaces and
    shared memory, a stray tritonserver if one still runs from there); the removed
    workspaces. A server of another host or a live one is left alone."""
    from quantpipe.serving.watchdog import clean_up

    here = workspace_path()
    removed = []
    for old in here.parent.glob(f"{WORKSPACE_PREFIX}{socket.gethostname()}-*"):
        pid = old.name.rsplit("-", 1)[1]
        # `here` is not made yet: one there is a dead server's whose pid this one reuses.
        if old == here or (pid.isdigit() and not _alive(int(pid))):
            clean_up(str(old), shm_prefix(int(pid)))
            removed.append(old)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _start_watchdog(workspace: Path) -> subprocess.Popen:
    """The watchdog (quantpipe/serving/watchdog.py), in its own session, reading a pipe
    only this process can close: at its death, however it comes."""
    argv = ["-m", "quantpipe.serving.watchdog", str(workspace), shm_prefix(os.getpid())]
    return subprocess.Popen(
        [sys.executable, *argv],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip


def _stop_watchdog(watchdog: subprocess.Popen) -> None:
    """After a clean stop: close the lifeline; the watchdog finds nothing left and exits."""
    if watchdog.stdin is not None:
        watchdog.stdin.close()
    try:
        watchdog.wait(timeout=30)
    except subprocess.TimeoutExpired:
        watchdog.kill()


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
    from pytriton.model_config import (
        DynamicBatcher,
        ModelConfig,
        QueuePolicy,
        Tensor,
        TimeoutAction,
    )

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

    # The bounded queue: a request past `max_queue` waiting ones is rejected at once.
    queue = QueuePolicy(max_queue_size=o.max_queue, timeout_action=TimeoutAction.REJECT)
    config = ModelConfig(
        max_batch_size=meta.profile.max,
        batcher=DynamicBatcher(
            max_queue_delay_microseconds=o.max_queue_delay_us, default_queue_policy=queue
        ),
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
            check_image_size(image)
            return run(to_model_input(image, images, pre))

        raw_in = [Tensor(name="image", dtype=np.uint8, shape=(-1, -1, -1))]
        triton.bind(name + RAW_SUFFIX, infer_raw, raw_in, outputs, config=config, strict=True)
    return ServedModel(name, engine, meta, pre is not None)


def check_image_size(images: np.ndarray) -> None:
    """Refuse images over MAX_IMAGE_BYTES before preprocessing them: the raw model's
    dimensions are free, so Triton admits any size, and resizing a 300 MiB image held the
    model for 30 s (measured) while every other raw request waited."""
    each = images[0].nbytes if len(images) else 0
    if each > MAX_IMAGE_BYTES:
        raise QuantpipeError(
            f"images of {'x'.join(map(str, images.shape[1:]))} ({each / 2**20:.1f} MiB each) "
            f"exceed the {MAX_IMAGE_BYTES // 2**20} MiB per image the raw model takes: resize "
            "them before sending"
        )


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
