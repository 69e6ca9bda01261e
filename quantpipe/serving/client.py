"""Client-side helpers for a `quantpipe serve` process (tests and the load benchmark)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from typing import Any


def wait_until_ready(
    proc: subprocess.Popen, http_port: int, models: Sequence[str], timeout_s: float = 120.0
) -> Any:
    """An HTTP client of the server on 127.0.0.1:`http_port` once it and every one of
    `models` are ready; None if `proc` exits or `timeout_s` passes first (then `proc` is
    killed, and its output says why)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if client.is_server_ready() and all(map(client.is_model_ready, models)):
                return client
        except Exception:  # not listening yet
            pass
        time.sleep(0.5)
    proc.kill()
    return None
