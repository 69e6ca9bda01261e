"""The CPU serving image, really built and run.

podman builds docker/Dockerfile.cpu FROM a local Debian 12 image that debootstrap makes (no
registry but the package ones is reachable here, so the public base image is replaced
through the BASE build argument), then runs `quantpipe inspect` and `quantpipe eval --onnx`
in it with --network=none and compares them with the same commands on the host. Skipped,
with the reason, where podman, runc or debootstrap is missing or not run as root.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quantpipe.cli import main
from tests.conftest import digits_run_with_engines

ROOT = Path(__file__).parents[2]
TOOLS = ("podman", "runc", "debootstrap")
MISSING = [t for t in TOOLS if shutil.which(t) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING) or os.geteuid() != 0,
    reason=f"needs {', '.join(MISSING) or 'root'} to build images without a Docker daemon "
    "(make setup installs the tools where apt is usable)",
)
BASE = "localhost/debian-bookworm:minbase"
IMAGE = "localhost/quantpipe-cpu:test"
MIRROR = os.environ.get("QUANTPIPE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
ENV = {**os.environ, "CONTAINERS_CONF": str(ROOT / "docker" / "containers.conf")}


def podman(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["podman", "--runtime", "runc", *args],
        capture_output=True, text=True, timeout=timeout, env=ENV,
    )  # fmt: skip
    return done


def _last(done: subprocess.CompletedProcess) -> str:
    lines = (done.stderr or done.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit {done.returncode}"


def _pip_cert() -> str | None:
    """The CA bundle pip trusts here, when one is configured (a TLS proxy's)."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.cert"],
        capture_output=True, text=True,
    )  # fmt: skip
    path = os.environ.get("PIP_CERT") or done.stdout.strip()
    return path if path and Path(path).is_file() else None


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    if podman("image", "exists", BASE).returncode != 0:
        rootfs = tmp_path_factory.mktemp("rootfs")
        boot = subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), MIRROR],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if boot.returncode != 0:  # the host's network or mirror, not the image
            pytest.skip(f"debootstrap could not fetch Debian 12 from {MIRROR}: {_last(boot)}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["podman", "import", "-", BASE], stdin=tar.stdout, capture_output=True, env=ENV
        )
        assert tar.wait() == 0 and imported.returncode == 0, imported.stderr[-2000:]
    # Whether this host can run containers at all (kernel, cgroups), apart from our image.
    probe = podman("run", "--rm", "--network=none", BASE, "true", timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run a container on this host: {_last(probe)}")
    build = ["build", "--network=host", "-f", "docker/Dockerfile.cpu", "-t", IMAGE]
    build += ["--build-arg", f"BASE={BASE}"]
    cert = _pip_cert()
    if cert:  # mounted for the build only, never copied into the image
        build += ["-v", f"{cert}:/run/host-ca.crt:ro", "--build-arg", "PIP_CERT=/run/host-ca.crt"]
    done = subprocess.run(
        ["podman", "--runtime", "runc", *build, str(ROOT)],
        capture_output=True, text=True, timeout=1800, env=ENV,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return IMAGE


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits-mlp with its engines, and its test images as an .npz the image can read."""
    path = tmp_path_factory.mktemp("image") / "run"
    from sklearn.datasets import load_digits

    digits_run_with_engines(path, "1,8")
    digits = load_digits()
    x = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    np.savez(path / "digits.npz", x=x, y=digits.target.astype(np.int64))
    return path


def test_the_image_has_no_torch_and_runs_as_a_user(image: str) -> None:
    probe = "import importlib.util as u, os; print(u.find_spec('torch') is None, os.getuid())"
    done = podman("run", "--rm", "--network=none", "--entrypoint", "python", image, "-c", probe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "10001"]
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
    print(f"image {image}: {size / 1e6:.0f} MB")


def _inside(image: str, run: Path, out: Path, *argv: str) -> str:
    """`quantpipe ARGV` in the image, the run mounted read-only at /run-dir, `out` writable."""
    mounts = ["-v", f"{run}:/run-dir:ro", "-v", f"{out}:/out"]
    done = podman("run", "--rm", "--network=none", *mounts, image, *argv)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_inspect_and_eval_inside_equal_the_hosts(
    image: str, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # the image's user writes its eval record there
    engine = "engines/fp32.onnxruntime-cpu.int8.onnx"
    inside = _inside(image, run, out, "inspect", f"/run-dir/{engine}")
    capsys.readouterr()
    assert main(["inspect", str(run / engine)]) == 0
    host = capsys.readouterr().out
    assert inside.replace("/run-dir", str(run)) == host

    evaluate = ["eval", "--onnx", "MODEL", "--data", "npz:DATA", "--split", "all", "--quiet"]

    def accuracy(text: str) -> str:
        match = re.search(r"top-1 ([\d.]+) %", text)
        assert match, text
        return match.group(1)

    argv = [a.replace("MODEL", "/run-dir/model.int8.ort.onnx") for a in evaluate]
    argv = [a.replace("DATA", "/run-dir/digits.npz") for a in argv]
    inside = _inside(image, run, out, *argv, "--run-dir", "/out/eval")
    capsys.readouterr()
    argv = [a.replace("MODEL", str(run / "model.int8.ort.onnx")) for a in evaluate]
    argv = [a.replace("DATA", str(run / "digits.npz")) for a in argv]
    assert main([*argv, "--run-dir", str(tmp_path / "host-eval")]) == 0
    assert accuracy(inside) == accuracy(capsys.readouterr().out)
