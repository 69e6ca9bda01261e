"""`quantpipe serve` under load and faults: a real Triton server (the serving environment's
tritonserver) on 127.0.0.1, queried by tritonclient. A 30 s soak with every answer checked
and flat memory; a flood past capacity gets fast explicit rejections from the bounded
queue; malformed requests get errors while the server keeps answering; a SIGKILL, of the
server's process group or of the server alone, leaves the run as it was and no process
or temporary file behind; a dead tritonserver stops `serve`.

The wrong shape and data type of test_serve.py are not repeated here."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from quantpipe.data.preprocess import to_model_input
from quantpipe.data.sources import Source
from quantpipe.engines.backend import RunnerOptions
from quantpipe.engines.machine import cpu_info
from quantpipe.engines.registry import get_backend
from quantpipe.export.metadata import require_contract
from quantpipe.serving.client import (
    Outcome,
    send_at_once,
    soak,
    tree,
    wait_until_ready,
)
from quantpipe.serving.server import free_ports
from tests.conftest import digits_run_with_engines

ROOT = Path(__file__).parents[2]
SERVE = ROOT / ".venv-serve" / "bin" / "quantpipe"
pytestmark = pytest.mark.skipif(
    not SERVE.is_file(), reason="no serving environment (.venv-serve): `make setup` creates it"
)
MODEL = "fp32_onnxruntime-cpu_int8"  # the INT8 engine of the run, as Triton names it
RAW = MODEL + "_raw"
QUEUE = 32  # --max-queue of the servers here: small, so that a flood of 256 overflows it
# A leak shows as resident memory that grows with requests. After the warm-up the tree's
# RSS (~380 MiB: quantpipe, tritonserver, two stubs and their helpers) moved by 0.1 MiB in
# 30 s of ~12,700 requests (measured); 8 MiB is ~2 % of it, far above that noise, and at
# the ≥ 1,000 requests asserted below it catches any leak of 8 KiB or more per request.
RSS_GROWTH_BOUND = 8 * 2**20


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve-faults") / "run"
    digits_run_with_engines(path, "1,16")
    return path


@pytest.fixture(scope="module")
def digests(run: Path) -> dict[str, str]:
    """The sha256 of every file of the run before any server ran on it."""
    return _digests(run)


@pytest.fixture(scope="module")
def reference(run: Path):
    """The INT8 engine's answer to a batch, in-process (what the server must answer)."""
    engine = run / "engines" / "fp32.onnxruntime-cpu.int8.onnx"
    with get_backend("onnxruntime-cpu").runner(engine, RunnerOptions(threads=1)) as runner:
        yield lambda x: next(iter(runner.infer({"input": x}).values()))


@dataclass
class Server:
    proc: subprocess.Popen
    http: int
    grpc: int
    metrics: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _start(run: Path, log: Path) -> Server:
    """`quantpipe serve` of the run's INT8 engine on free loopback ports, as the leader of a
    new process group (so the group can be killed as a supervisor would), its output to
    `log` (a pipe nobody reads could fill and block it)."""
    http, grpc, metrics = free_ports(3)
    argv = [str(SERVE), "serve", str(run), "--select", "*.int8.*", "--threads", "1"]
    argv += ["--max-queue", str(QUEUE), "--http-port", str(http), "--grpc-port", str(grpc)]
    argv += ["--metrics-port", str(metrics)]
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Server(proc, http, grpc, metrics, log)


def _ready(server: Server) -> None:
    if wait_until_ready(server.proc, server.http, (MODEL, RAW)) is None:
        pytest.fail(f"server did not become ready: {server.output()}")


def _stop(server: Server) -> None:
    """SIGTERM, and a clean exit, if the server still runs."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0, server.output()


@pytest.fixture(scope="module")
def stale() -> list[Path]:
    """What a server killed with its watchdog leaves (planted, for a pid that has exited):
    the next server to start removes it."""
    exited = subprocess.Popen(["true"])
    exited.wait()
    pid = exited.pid  # free again; Linux hands pids out in order, so not reused soon
    home = os.environ.get("PYTRITON_HOME") or Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "pytriton"
    )
    workspace = Path(home) / f"quantpipe-serve-{socket.gethostname()}-{pid}"
    (workspace / "tritonserver" / "bin").mkdir(parents=True)
    (workspace / "tritonserver" / "bin" / "tritonserver").write_bytes(b"\0" * 1024)
    region = Path(f"/dev/shm/pytrtion{pid}-0123abcd-test")
    region.write_bytes(b"\0" * 4096)
    return [workspace, region]


@pytest.fixture(scope="module")
def servers(
    run: Path, digests: dict[str, str], stale: list[Path],
    tmp_path_factory: pytest.TempPathFactory,
):  # fmt: skip
    """Three servers, started together (start-up is most of a destructive test's time;
    idle, the other two take ~1 % of a core each during the first one's soak, measured)."""
    logs = tmp_path_factory.mktemp("serve-logs")
    started = [_start(run, logs / f"serve-{i}.log") for i in range(3)]
    try:
        for s in started:
            _ready(s)
        yield started
    finally:
        _stop(started[0])  # the others are killed by their tests
        for s in started[1:]:
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(servers: list[Server]) -> Server:
    """The server of the soak, the flood and the malformed requests (then killed)."""
    return servers[0]


@pytest.fixture(scope="module")
def two_more(servers: list[Server]) -> list[Server]:
    return servers[1:]


def test_a_dead_servers_leftovers_are_removed_when_the_next_one_starts(
    servers: list[Server], stale: list[Path]
) -> None:
    assert [p for p in stale if p.exists()] == []


def test_an_unbounded_queue_is_refused_in_one_line(run: Path) -> None:
    done = subprocess.run(
        [str(SERVE), "serve", str(run), "--max-queue", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--max-queue must be at least 1" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _batches(count: int, rows: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((rows, 1, 8, 8)).astype(np.float32) for _ in range(count)]


def _inputs(module, name: str, x: np.ndarray, dtype: str) -> list:
    one = module.InferInput(name, list(x.shape), dtype)
    one.set_data_from_numpy(x)
    return [one]


def _answers_correctly(server: Server, reference) -> None:
    """A normal request, over HTTP, gets the engine's answer."""
    x = _batches(1, rows=3)[0]
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http}")
    got = client.infer(MODEL, _inputs(httpclient, "input", x, "FP32")).as_numpy("output")
    np.testing.assert_allclose(got, reference(x), rtol=1e-5, atol=1e-5)


def test_a_30_s_soak_has_no_errors_and_flat_memory(server: Server, reference) -> None:
    # 8 closed-loop clients: each waits for its answer, so at most 8 requests are queued
    # (below the queue's 32: nothing is rejected) while the batcher always has work.
    batches = _batches(64)
    expected = [reference(x) for x in batches]
    figures = soak(server.proc.pid, server.http, MODEL, batches, expected, 8, 30.0, 2.0)
    start, end = figures["rss_start"], figures["rss_end"]
    print(
        f"\nsoak: {figures['requests']} requests, {figures['errors']} errors, "
        f"{figures['requests_per_s']:.1f} req/s, p50 {figures['p50_ms']:.2f} ms, p99 "
        f"{figures['p99_ms']:.2f} ms, RSS {start / 2**20:.1f} -> {end / 2**20:.1f} MiB "
        f"(samples {figures['rss_samples_mib']}), 8 clients, CPU {cpu_info().describe()}"
    )
    assert figures["errors"] == 0, figures["first_error"]
    assert figures["requests"] >= 1000
    assert end - start <= RSS_GROWTH_BOUND, figures["rss_samples_mib"]


def test_a_flood_past_capacity_is_rejected_fast_and_the_server_survives(
    server: Server, reference
) -> None:
    # 256 requests at once against a queue of 32 and one model instance: most cannot be
    # queued. Each must end, answered or rejected, well within its 30 s deadline (an
    # unbounded queue would answer them all, later and later); none may fail otherwise.
    config = httpclient.InferenceServerClient(f"127.0.0.1:{server.http}").get_model_config(MODEL)
    policy = config["dynamic_batching"]["default_queue_policy"]
    assert policy["max_queue_size"] == QUEUE and policy["timeout_action"] == "REJECT"
    x = _batches(1)[0]
    began = time.perf_counter()
    outcomes = send_at_once(server.grpc, MODEL, x, 256, 256, timeout_s=30.0)
    wall = time.perf_counter() - began
    kinds = [k for k, _, _ in outcomes]
    slowest = max(s for _, s, _ in outcomes)
    print(
        f"\nflood: 256 requests in {wall:.2f} s: {kinds.count('answered')} answered, "
        f"{kinds.count('rejected')} rejected, {kinds.count('error')} other errors, slowest "
        f"{slowest * 1000:.0f} ms (queue {QUEUE})"
    )
    assert kinds.count("error") == 0, [d for k, _, d in outcomes if k == "error"][:3]
    assert kinds.count("rejected") > 0 and kinds.count("answered") > 0
    assert slowest < 10.0
    want = reference(x)
    for kind, _, answer in outcomes:
        if kind == "answered":
            np.testing.assert_allclose(answer, want, rtol=1e-5, atol=1e-5)
    _answers_correctly(server, reference)


def test_malformed_requests_get_errors_and_the_server_keeps_answering(
    run: Path, server: Server, reference
) -> None:
    bad = {
        "an empty batch": (MODEL, "input", np.zeros((0, 1, 8, 8), np.float32), "FP32"),
        "a batch over the max (17 > 16)": (
            MODEL, "input", np.zeros((17, 1, 8, 8), np.float32), "FP32"),
        "a wrong input name": (MODEL, "pixels", np.zeros((1, 1, 8, 8), np.float32), "FP32"),
        "64 MiB for a 256-byte input": (
            MODEL, "input", np.zeros((16, 1, 1024, 1024), np.float32), "FP32"),
        "4-channel images for a 1-channel model": (
            RAW, "image", np.zeros((1, 8, 8, 4), np.uint8), "UINT8"),
        "2-channel images": (RAW, "image", np.zeros((1, 8, 8, 2), np.uint8), "UINT8"),
        "0x0 images": (RAW, "image", np.zeros((1, 0, 0, 1), np.uint8), "UINT8"),
        "an image over 16 MiB": (RAW, "image", np.zeros((1, 4200, 4200, 1), np.uint8), "UINT8"),
        "float images": (RAW, "image", np.zeros((1, 8, 8, 1), np.float32), "FP32"),
    }  # fmt: skip
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http}", network_timeout=120.0)
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")
    for what, (model, name, x, dtype) in bad.items():
        with pytest.raises(InferenceServerException) as e:
            http.infer(model, _inputs(httpclient, name, x, dtype))
        print(f"HTTP, {what}: {str(e.value).splitlines()[0][:150]}")
        _answers_correctly(server, reference)
        with pytest.raises(InferenceServerException) as e:
            grpc.infer(model, _inputs(grpcclient, name, x, dtype), client_timeout=120.0)
        print(f"gRPC, {what}: {str(e.value).splitlines()[0][:150]}")
        _answers_correctly(server, reference)

    # NaN and ±inf are answered as the engine answers them in-process (the INT8 engine
    # maps NaN to a finite output), and the other rows of the batch are unchanged.
    x = _batches(1, rows=4)[0]
    poisoned = x.copy()
    poisoned[1], poisoned[2, 0, 0, 0] = np.nan, np.inf
    got = grpc.infer(MODEL, _inputs(grpcclient, "input", poisoned, "FP32")).as_numpy("output")
    np.testing.assert_allclose(got, reference(poisoned), rtol=1e-5, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(got[[0, 3]], reference(x)[[0, 3]], rtol=1e-5, atol=1e-5)
    _answers_correctly(server, reference)


def test_bad_raw_requests_do_not_fail_good_ones_sent_with_them(run: Path, server: Server) -> None:
    # An error in the model fails its whole batch; Triton batches only requests of one
    # shape, so a bad request's error never reaches the good ones queued beside it.
    pre = require_contract(run / "model.fp32.onnx").preprocessing
    source = Source("image", 0, lambda _: None, None, 255.0)
    good = [np.full((1, s, s, 1), 7 * s, np.uint8) for s in (8, 16)]
    want = {im.shape: _engine(run, to_model_input(im, source, pre)) for im in good}
    shapes = [im.shape for im in good] + [(1, 8, 8, 4)]

    async def mixed() -> list[tuple[tuple[int, ...], object]]:
        client = grpcaio.InferenceServerClient(f"127.0.0.1:{server.grpc}")

        async def one(shape: tuple[int, ...]) -> tuple[tuple[int, ...], object]:
            image = np.full(shape, 7 * shape[1], np.uint8)
            try:
                got = await client.infer(RAW, _inputs(grpcclient, "image", image, "UINT8"))
                return shape, got.as_numpy("output")
            except InferenceServerException as e:
                return shape, e

        try:
            return await asyncio.gather(*(one(s) for s in shapes * 4))  # 12 < the queue
        finally:
            await client.close()

    for shape, answer in asyncio.run(mixed()):
        if shape[-1] == 4:
            assert isinstance(answer, InferenceServerException)
            assert "images have 4 channels but the model takes 1" in str(answer)
        else:
            assert isinstance(answer, np.ndarray), answer
            np.testing.assert_allclose(answer, want[shape], rtol=1e-5, atol=1e-5)


def _engine(run: Path, x: np.ndarray) -> np.ndarray:
    engine = run / "engines" / "fp32.onnxruntime-cpu.int8.onnx"
    with get_backend("onnxruntime-cpu").runner(engine, RunnerOptions(threads=1)) as runner:
        return next(iter(runner.infer({"input": x}).values()))


@dataclass
class Footprint:
    """What a server's tree is and holds: processes (pid and start time, so a recycled pid
    is not mistaken for a survivor), pytriton's workspace, model directories, shared
    memory, ports."""

    processes: dict[int, bytes]
    workspace: Path
    files: list[Path]
    ports: list[int]


def _footprint(server: Server) -> Footprint:
    pids = tree(server.proc.pid)
    processes = {p: _start_time(p) for p in pids}
    argvs = {p: Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0") for p in pids}
    (tritonserver,) = [a[0] for a in argvs.values() if a[0].endswith(b"/bin/tritonserver")]
    workspace = Path(os.fsdecode(tritonserver)).parents[2]
    files = [Path(f"/dev/shm/{n}") for n in os.listdir("/dev/shm") if n.startswith(
        f"pytrtion{server.proc.pid}-")]  # fmt: skip
    for p in pids:
        for line in Path(f"/proc/{p}/maps").read_text().splitlines():
            if " /dev/shm/psm_" in line:
                files.append(Path(line.split()[-1]))
        if argvs[p][1:2] and argvs[p][1].endswith(b"/1/model.py"):
            files.append(Path(os.fsdecode(argvs[p][1])).parents[1])  # /tmp/folderXXXXXX
    assert files, "a served model holds shared memory and a model directory"
    return Footprint(processes, workspace, sorted(set(files)), [server.http, server.grpc])


def _start_time(pid: int) -> bytes:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return stat[stat.rindex(b")") + 2 :].split()[19]


def _survivors(footprint: Footprint) -> list[int]:
    alive = []
    for pid, started in footprint.processes.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if fields[0] != b"Z" and fields[19] == started:  # a zombie is dead, not yet reaped
            alive.append(pid)
    return alive


def _leftovers(footprint: Footprint) -> list[str]:
    """What of `footprint` still exists: processes, files, ports still taken."""
    left = [f"process {p}" for p in _survivors(footprint)]
    left += [str(f) for f in [footprint.workspace, *footprint.files] if f.exists()]
    for port in footprint.ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                left.append(f"port {port}")
    return left


def _kill_mid_request(server: Server, kill: Callable[[], None], reference) -> list[Outcome]:
    """Requests in flight (64 at once, from another thread), then `kill`; their outcomes
    (each must end, with an answer or an error, within its 30 s deadline)."""
    x = _batches(1)[0]
    _answers_correctly(server, reference)
    outcomes: list[Outcome] = []
    flood = threading.Thread(
        target=lambda: outcomes.extend(send_at_once(server.grpc, MODEL, x, 4000, 64, 30.0))
    )
    flood.start()
    time.sleep(1.0)  # the flood is under way: 64 requests in flight all the time
    kill()
    flood.join(timeout=60)
    assert not flood.is_alive(), "requests hung after the kill"
    return outcomes


def _wait_for_nothing_left(footprint: Footprint, timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := _leftovers(footprint)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_sigkill_of_the_servers_process_group_mid_request_leaves_nothing(
    run: Path, digests: dict[str, str], server: Server, reference
) -> None:
    footprint = _footprint(server)
    outcomes = _kill_mid_request(
        server, lambda: os.killpg(server.proc.pid, signal.SIGKILL), reference
    )
    assert server.proc.wait(timeout=10) == -signal.SIGKILL
    kinds = [k for k, _, _ in outcomes]
    assert kinds.count("answered") > 0 and kinds.count("error") > 0  # killed mid-flood
    # The watchdog, in its own session, outlives the group and removes what it left.
    assert _wait_for_nothing_left(footprint, 15.0) == []
    assert _digests(run) == digests


def test_sigkill_of_the_server_alone_mid_request_leaves_nothing(
    run: Path, digests: dict[str, str], two_more: list[Server], reference
) -> None:
    # As the OOM killer does: tritonserver and the stubs outlive their parent, which held
    # the models; without the watchdog they lived ~20 s more, holding the ports.
    server = two_more[0]
    footprint = _footprint(server)
    killed = time.monotonic()
    _kill_mid_request(server, lambda: server.proc.send_signal(signal.SIGKILL), reference)
    assert _wait_for_nothing_left(footprint, 10.0) == []
    print(f"\nthe server's tree was gone {time.monotonic() - killed:.1f} s after the kill")
    assert _digests(run) == digests


def test_serve_stops_with_an_error_when_tritonserver_dies(two_more: list[Server]) -> None:
    server = two_more[1]
    footprint = _footprint(server)
    (tritonserver,) = [
        p for p in footprint.processes
        if Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0].endswith(b"/bin/tritonserver")
    ]  # fmt: skip
    os.kill(tritonserver, signal.SIGKILL)
    assert server.proc.wait(timeout=20) == 2, server.output()
    assert "tritonserver exited unexpectedly" in server.output()
    assert _wait_for_nothing_left(footprint, 10.0) == []


def test_the_watchdog_kills_only_what_runs_from_its_servers_workspace(tmp_path: Path) -> None:
    # Workspaces are named by pid: pid 1234's is a prefix of pid 12345's, which must live.
    from quantpipe.serving.watchdog import clean_up

    mine, other = tmp_path / "quantpipe-serve-h-1234", tmp_path / "quantpipe-serve-h-12345"
    procs = {}
    for ws in (mine, other):
        (ws / "bin").mkdir(parents=True)
        sleeper = "import time; time.sleep(60)"
        procs[ws] = subprocess.Popen([sys.executable, "-c", sleeper, str(ws / "bin" / "x")])
    folder = tmp_path / "noted"
    folder.mkdir()
    try:
        clean_up(str(mine), "pytrtion-no-such-prefix-", {folder})
        assert procs[mine].wait(timeout=10) == -signal.SIGKILL
        assert procs[other].poll() is None
        assert not mine.exists() and not folder.exists() and other.exists()
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
