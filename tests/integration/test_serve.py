"""`quantpipe serve`: a real Triton server (nvidia-pytriton's tritonserver, in the serving
environment) queried by tritonclient over HTTP and gRPC on 127.0.0.1; its answers equal the
runner's; bad requests get an error and the server keeps serving; bad starts are one line."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from quantpipe.cli import main
from quantpipe.data.preprocess import to_model_input
from quantpipe.data.sources import Source
from quantpipe.engines.backend import RunnerOptions
from quantpipe.engines.registry import get_backend
from quantpipe.export.metadata import require_contract
from quantpipe.serving.client import wait_until_ready
from quantpipe.serving.server import free_ports
from tests.conftest import digits_run_with_engines

ROOT = Path(__file__).parents[2]
SERVE = ROOT / ".venv-serve" / "bin" / "quantpipe"
pytestmark = pytest.mark.skipif(
    not SERVE.is_file(), reason="no serving environment (.venv-serve): `make setup` creates it"
)
MODEL = "fp32_onnxruntime-cpu_int8"  # the INT8 engine of the run, as Triton names it


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "run"
    digits_run_with_engines(path, "1,16")
    return path


@pytest.fixture(scope="module")
def server(run: Path):
    http, grpc, metrics = free_ports(3)
    argv = [str(SERVE), "serve", str(run), "--select", "*.int8.*,*.fp32.*", "--threads", "1"]
    argv += ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _ready(proc, http, MODEL, MODEL + "_raw")  # Triton loads them one after the other
    yield proc, http, grpc, metrics
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def _ready(proc: subprocess.Popen, http: int, *models: str) -> httpclient.InferenceServerClient:
    """A client once the server says `models` are ready (the test fails if it never does)."""
    client = wait_until_ready(proc, http, models)
    if client is None:
        pytest.fail(
            f"server did not become ready: {proc.stdout.read()[-3000:] if proc.stdout else ''}"
        )
    return client


def _reference(run: Path, x: np.ndarray) -> np.ndarray:
    engine = run / "engines" / "fp32.onnxruntime-cpu.int8.onnx"
    with get_backend("onnxruntime-cpu").runner(engine, RunnerOptions(threads=1)) as runner:
        return next(iter(runner.infer({"input": x}).values()))


def _inputs(module, name: str, x: np.ndarray, dtype: str) -> list:
    one = module.InferInput(name, list(x.shape), dtype)
    one.set_data_from_numpy(x)
    return [one]


def test_http_and_grpc_answers_equal_the_runners(run: Path, server) -> None:
    _, http, grpc, _ = server
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    want = _reference(run, x)
    for module, port in ((httpclient, http), (grpcclient, grpc)):
        client = module.InferenceServerClient(f"127.0.0.1:{port}")
        got = client.infer(MODEL, _inputs(module, "input", x, "FP32")).as_numpy("output")
        np.testing.assert_array_equal(got, want)


def test_raw_uint8_images_are_preprocessed_server_side(run: Path, server) -> None:
    _, _, grpc, _ = server
    images = np.random.default_rng(1).integers(0, 17, (4, 8, 8, 1), dtype=np.uint8)
    pre = require_contract(run / "model.fp32.onnx").preprocessing
    x = to_model_input(images, Source("image", 0, lambda _: images, None, 255.0), pre)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}")
    got = client.infer(MODEL + "_raw", _inputs(grpcclient, "image", images, "UINT8"))
    np.testing.assert_allclose(got.as_numpy("output"), _reference(run, x), rtol=1e-5, atol=1e-5)


def test_a_bad_request_gets_an_error_and_the_server_keeps_serving(run: Path, server) -> None:
    _, http, _, _ = server
    client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
    wrong_shape = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(InferenceServerException, match="unexpected shape"):
        client.infer(MODEL, _inputs(httpclient, "input", wrong_shape, "FP32"))
    wrong_type = np.zeros((2, 1, 8, 8), np.float16)
    with pytest.raises(InferenceServerException, match="data-type"):
        client.infer(MODEL, _inputs(httpclient, "input", wrong_type, "FP16"))
    x = np.ones((1, 1, 8, 8), np.float32)
    got = client.infer(MODEL, _inputs(httpclient, "input", x, "FP32")).as_numpy("output")
    np.testing.assert_array_equal(got, _reference(run, x))


def test_the_python_backend_repository_serves_through_quantpipes_runner(run: Path) -> None:
    # `triton --python-backend` writes triton-python/; the serving environment's tritonserver
    # loads it as a stock Triton would and runs quantpipe's runner inside its Python backend.
    argv = ["triton", "--run-dir", str(run), "--python-backend", "--select", "*.int8.*"]
    assert main([*argv, "--quiet", "--force"]) == 0
    http, grpc, metrics = free_ports(3)
    argv = [str(SERVE), "serve", "--repository", str(run / "triton-python")]
    argv += ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = _ready(proc, http, MODEL + "_python")
        x = np.random.default_rng(2).standard_normal((3, 1, 8, 8)).astype(np.float32)
        got = client.infer(MODEL + "_python", _inputs(httpclient, "input", x, "FP32"))
        np.testing.assert_array_equal(got.as_numpy("output"), _reference(run, x))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def _serve(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SERVE), "serve", *argv], capture_output=True, text=True, timeout=120)


def test_bad_starts_are_one_line(run: Path, tmp_path: Path) -> None:
    (http,) = free_ports(1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", http))
        taken.listen()
        done = _serve(str(run), "--http-port", str(http))
    assert done.returncode == 2 and f"port {http} on 127.0.0.1 is not free" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.json").write_text('{"format": 2, "stages": {}}')
    done = _serve(str(empty))
    assert done.returncode == 2 and "has no engines" in done.stderr


def test_the_pipeline_environment_points_to_the_serving_one(run: Path, capsys) -> None:
    # This environment has numpy 2, with which pytriton 0.7 answers empty outputs.
    assert main(["serve", str(run)]) == 2
    assert ".venv-serve/bin/quantpipe serve" in capsys.readouterr().err
