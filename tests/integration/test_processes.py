"""Behaviour that needs real processes: the run-directory lock and Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from quantpipe.pipeline.rundir import RunDir

QP = [sys.executable, "-m", "quantpipe"]


def test_second_process_on_a_locked_run_directory_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with RunDir.open(run_dir):
        proc = subprocess.run(
            [*QP, "export", "--model", "digits-mlp", "--run-dir", str(run_dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "is in use by another quantpipe process" in err
    assert not (run_dir / "model.fp32.onnx").exists()


def test_ctrl_c_during_export_keeps_the_earlier_model_and_leaves_no_partial(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    good = b"an earlier good model.fp32.onnx"
    (run_dir / "model.fp32.onnx").write_bytes(good)
    # A large-input model: its parity check runs long enough to be interrupted mid-stage.
    # Ctrl-C as in a terminal: SIGINT at its default. A test run started in the background
    # by a non-interactive shell inherits SIGINT ignored, and so would the export (observed:
    # it then ran to completion and returned 0).
    proc = subprocess.Popen(
        [*QP, "export", "--model", "fcn-resnet18-19", "--run-dir", str(run_dir), "--quiet"],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not list(run_dir.glob(".model.fp32.onnx.*.tmp")):
        assert proc.poll() is None, f"export ended before it could be interrupted: {proc.stderr}"
        assert time.monotonic() < deadline, "export never started writing"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert (run_dir / "model.fp32.onnx").read_bytes() == good
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))
