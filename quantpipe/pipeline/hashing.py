"""Content fingerprints for manifest entries and cache keys."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fingerprint_path(path: str | Path) -> str:
    """sha256 of a file; for a directory, of its listing (relative path, size, mtime).

    Hashing every image of a large folder on each run would cost more than the stage;
    size and mtime catch every edit a user makes in practice.
    """
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(p).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "dir:" + h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Stable hash of a JSON-able value (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
