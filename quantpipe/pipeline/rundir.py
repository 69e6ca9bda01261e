"""A run directory (`runs/<name>/`): its lock, its manifest, its artifacts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from quantpipe.errors import QuantpipeError
from quantpipe.pipeline.atomic import remove_temporaries
from quantpipe.pipeline.lock import RunDirLock
from quantpipe.pipeline.manifest import Manifest


@dataclass
class RunDir:
    path: Path
    manifest: Manifest
    _lock: RunDirLock

    @staticmethod
    def open(path: str | Path) -> RunDir:
        """Lock `path` (creating it) and load its manifest; use as a context manager."""
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise QuantpipeError(f"run directory {p} exists and is not a directory")
        lock = RunDirLock(p)
        lock.acquire()
        try:
            # Holding the lock, nobody else writes here: a temporary file is a killed
            # process's leftover, never part of an artifact.
            remove_temporaries(p)
            return RunDir(p, Manifest.load(p), lock)
        except BaseException:
            lock.release()
            raise

    def artifact(self, relpath: str) -> Path:
        return self.path / relpath

    def close(self) -> None:
        self._lock.release()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
