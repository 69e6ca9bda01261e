"""Atomic file writes: a crash or Ctrl-C never leaves a half-written artifact.

The new content goes to a temporary file in the destination's own directory (so the
final rename stays on one file system and is atomic), is fsynced, then renamed over
the destination. Until the rename, an earlier good file under the final name is
untouched.

Temporary files are named `.<final name>.<random>.tmp` and scratch directories
`.scratch-<random>`, so that `remove_temporaries` can find what a killed process (SIGKILL,
power loss) left behind and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"
SCRATCH_PREFIX = ".scratch-"


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `dest`; rename it onto `dest` on success.

    The caller writes the file at the yielded path by any means (a library that
    wants a file name, e.g. `onnx.save`). On any exception, KeyboardInterrupt
    included, the temporary file is removed and `dest` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temporary(dest)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def new_temporary(dest: Path) -> Path:
    """A new, empty temporary file beside `dest`, named as `remove_temporaries` expects."""
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=TEMP_SUFFIX, dir=dest.parent)
    os.close(fd)
    return Path(name)


def remove_temporaries(root: Path) -> list[Path]:
    """Remove the temporary files and scratch directories under `root` that an interrupted
    writer left; return them. Only for a directory this process holds exclusively (a locked
    run directory): another writer's live temporary file would be removed too."""
    found = []
    for path in sorted(root.rglob(".*")):
        if path.is_symlink():
            continue
        if path.is_file() and path.name.endswith(TEMP_SUFFIX):
            path.unlink(missing_ok=True)
            found.append(path)
        elif path.is_dir() and path.name.startswith(SCRATCH_PREFIX):
            shutil.rmtree(path, ignore_errors=True)
            found.append(path)
    return found


def new_file_mode() -> int:
    """The mode an ordinary new file gets here (0o666 less the umask). Temporary files are
    created 0600; an artifact keeps that only if the umask says so, or a serving container
    running as another user could not read the engines it is given."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `dest` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(dest: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `dest` atomically."""
    atomic_write_bytes(dest, text.encode("utf-8"))


def atomic_write_json(dest: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON to `dest` atomically."""
    atomic_write_text(dest, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # A directory fsync makes the rename itself durable; not every platform allows it.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
