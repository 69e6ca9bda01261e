"""Ctrl-C and SIGTERM at awkward moments: one line and the shell's exit status (130, 143),
never a traceback or a process killed by its own signal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import quantpipe.cli as cli


def _raising(error: BaseException):
    def handler(args: object) -> int:
        raise error

    return lambda command: handler


@pytest.mark.parametrize(
    ("stop", "code", "word"),
    [(KeyboardInterrupt(), 130, "interrupted"), (cli._Terminated(), 143, "terminated")],
)
def test_a_signal_inside_an_extension_modules_import_is_a_stop_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, stop, code, word
) -> None:
    # What pybind11 raises when a signal arrives while a module initialises (onnxruntime's,
    # seen by the interruption harness): ImportError("initialization failed") from it.
    failed = ImportError("initialization failed")
    failed.__cause__ = stop
    monkeypatch.setattr(cli, "_handler", _raising(failed))
    assert cli.main(["datasets"]) == code
    err = capsys.readouterr().err.strip()
    assert err == f"quantpipe datasets: {word}; no partial artifact was kept"


def test_an_import_error_of_another_cause_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_handler", _raising(ImportError("a real bug")))
    with pytest.raises(ImportError, match="a real bug"):
        cli.main(["datasets"])


def test_an_interrupt_seen_inside_pyrun_code_does_not_kill_the_program_at_exit(
    tmp_path: Path,
) -> None:
    # A command interrupted inside code an extension runs through PyRun_*: CPython then
    # killed the finished `python -m quantpipe` with SIGINT at exit (returncode -2, not 130).
    (tmp_path / "interrupted_cli.py").write_text(
        "import ctypes, quantpipe.cli as cli\n"
        "def interrupted(argv=None):\n"
        "    ctypes.pythonapi.PyRun_SimpleString(b'raise KeyboardInterrupt')\n"
        "    return cli.EXIT_INTERRUPTED\n"
        "cli.main = interrupted\n"
        "raise SystemExit(cli.program())\n"
    )
    argv = [sys.executable, "-m", "interrupted_cli"]  # -m, as `python -m quantpipe` runs
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, timeout=60)
    assert proc.returncode == 130, proc.stderr
