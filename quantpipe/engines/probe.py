"""Probe backends in child processes, so that `quantpipe backends` reports a missing or
broken library (an ImportError, a crash in a native extension, a hang) instead of dying
with it, and the CLI process itself never imports torch or onnxruntime.

`python -m quantpipe.engines.probe NAME` probes one backend and prints its availability
as one JSON line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

from quantpipe.engines.backend import Availability, Backend
from quantpipe.engines.registry import get_backend

TIMEOUT_S = 120


def probe_isolated(backends: Sequence[Backend]) -> list[Availability]:
    """Each backend's availability, probed in its own process (all at once)."""
    with ThreadPoolExecutor(max(1, len(backends))) as pool:
        return list(pool.map(_probe_child, backends))


def _probe_child(backend: Backend) -> Availability:
    command = [sys.executable, "-m", "quantpipe.engines.probe", backend.name]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return Availability(False, f"its probe did not finish in {TIMEOUT_S} s")
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return Availability(False, f"probing it crashed the process ({last[:160]})")
    return Availability(**json.loads(lines[-1]))


def main(argv: Sequence[str]) -> int:
    (name,) = argv
    print(json.dumps(asdict(get_backend(name).probe())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
