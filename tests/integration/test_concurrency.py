"""Concurrency: one process at a time per run directory (a second is refused in one line and
the first is unharmed), and calibration tables, written by several processes at once into
one directory while others read it, are never seen half-written."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quantpipe.calibration.cache import (
    CalibrationTable,
    import_trt_cache,
    make_table,
    read_table_json,
    table_paths,
    write_table,
)
from quantpipe.calibration.calibrators import MaxConfig
from quantpipe.cli import main
from quantpipe.errors import QuantpipeError
from quantpipe.pipeline.hashing import sha256_file
from quantpipe.pipeline.manifest import Manifest

WRITERS, READERS, ROUNDS = 4, 2, 60


def _quantpipe(*argv: str) -> list[str]:
    return [sys.executable, "-m", "quantpipe", *argv, "--quiet"]


def test_a_second_process_on_a_busy_run_is_refused_and_the_first_finishes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    where = ["--data", "digits", "--quiet", "--run-dir", str(run)]
    assert main(["train", "--model", "digits-mlp", *where, "--epochs", "1"]) == 0
    assert main(["export", "--model", "digits-mlp", *where]) == 0
    first = subprocess.Popen(
        _quantpipe("ptq", "--data", "digits", "--calib-count", "64", "--run-dir", str(run)),
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_lock_holder(run, first)
    second = subprocess.run(
        _quantpipe("ptq", "--data", "digits", "--calib-count", "64", "--run-dir", str(run)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert f"in use by another quantpipe process (pid {first.pid})" in lines[0]
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    manifest = Manifest.load(run)
    outputs = [o for record in manifest.stages.values() for o in record.outputs]
    assert "ptq" in manifest.stages and len(outputs) > 3
    for out in outputs:
        assert sha256_file(run / out.path) == out.sha256, out.path


def _wait_for_lock_holder(run: Path, proc: subprocess.Popen[str]) -> None:
    """Until `proc` has written its pid into the run's lock file (it holds the lock then)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lock = run / ".lock"
        if lock.is_file() and lock.read_text().strip() == str(proc.pid):
            return
        assert proc.poll() is None, "the first process ended before it took the lock"
        time.sleep(0.01)
    pytest.fail("the first process never took the lock")


def _table(amax_scale: float) -> CalibrationTable:
    # Many tensors, so that each write takes long enough for readers to race it.
    amax = {f"layer{i}.output": amax_scale * (1 + i % 7) for i in range(3000)}
    return make_table("ab" * 32, MaxConfig(), {"data": "digits"}, amax)


def _write_repeatedly(directory: str) -> None:
    for _ in range(ROUNDS):
        write_table(directory, _table(1.0))


def _read_repeatedly(directory: str, found: multiprocessing.Queue) -> None:
    """Read the table as fast as possible; report what was seen (never a broken file)."""
    json_path, trt_path = table_paths(directory, _table(1.0).key)
    complete = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and complete < ROUNDS * WRITERS:
        if not json_path.is_file():
            continue  # not written yet; once there, a rename never takes the name away
        try:
            table, trt = read_table_json(json_path), import_trt_cache(trt_path)
        except QuantpipeError as e:
            found.put(f"error: {e}")
            return
        complete += table.amax == _table(1.0).amax and len(trt) == 3000
    found.put(complete)


def test_tables_written_by_many_processes_while_others_read_are_never_half_written(
    tmp_path: Path,
) -> None:
    context = multiprocessing.get_context("spawn")
    found: multiprocessing.Queue = context.Queue()
    readers = [
        context.Process(target=_read_repeatedly, args=(str(tmp_path), found))
        for _ in range(READERS)
    ]
    writers = [
        context.Process(target=_write_repeatedly, args=(str(tmp_path),)) for _ in range(WRITERS)
    ]
    for p in [*readers, *writers]:
        p.start()
    for p in [*writers, *readers]:
        p.join(timeout=120)
        assert p.exitcode == 0
    seen = [found.get(timeout=10) for _ in range(READERS)]
    assert all(isinstance(s, int) and s > 0 for s in seen), seen  # no error message
    names = sorted(p.name for p in tmp_path.iterdir())
    key = _table(1.0).key
    assert names == [f"{key}.json", f"{key}.trtcache"]  # one table, no temporary left
    assert read_table_json(tmp_path / f"{key}.json").amax == _table(1.0).amax
