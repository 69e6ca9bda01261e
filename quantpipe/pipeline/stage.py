"""Running one stage: skip when up to date, write outputs atomically, record it.

A stage body receives a `StageContext`, asks it for output paths (temporary names in
the run directory), writes there, and returns its results. Only when the body returns
are all outputs renamed into place and the manifest updated: an exception or Ctrl-C
leaves earlier good outputs and the manifest untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quantpipe.errors import QuantpipeError
from quantpipe.pipeline.hashing import fingerprint_path, sha256_file
from quantpipe.pipeline.manifest import FileRecord, StageRecord
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.versions import library_versions


@dataclass
class StageContext:
    run: RunDir
    _pending: dict[str, Path] = field(default_factory=dict)

    def output(self, relpath: str) -> Path:
        """A temporary path to write the output `relpath` (relative to the run directory)."""
        final = self.run.path / relpath
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        self._pending[relpath] = Path(tmp)
        return Path(tmp)

    def _commit(self) -> list[FileRecord]:
        records = []
        for rel, tmp in self._pending.items():
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            final = self.run.path / rel
            os.replace(tmp, final)
            records.append(FileRecord(rel, sha256_file(final), final.stat().st_size))
        self._pending.clear()
        return records

    def _discard(self) -> None:
        for tmp in self._pending.values():
            tmp.unlink(missing_ok=True)
        self._pending.clear()


@dataclass(frozen=True)
class StageOutcome:
    record: StageRecord
    skipped: bool


def run_stage(
    run: RunDir,
    name: str,
    inputs: Mapping[str, Path],
    params: dict[str, Any],
    body: Callable[[StageContext], dict[str, Any]],
    force: bool = False,
) -> StageOutcome:
    """Run `body` unless the manifest shows it done with the same inputs and parameters."""
    missing = [f"{role} {p}" for role, p in inputs.items() if not p.exists()]
    if missing:
        raise QuantpipeError(f"stage {name}: input not found: {', '.join(missing)}")
    input_records = [FileRecord(str(p), fingerprint_path(p)) for p in inputs.values()]
    previous = run.manifest.stages.get(name)
    if not force and previous and _up_to_date(run, previous, input_records, params):
        return StageOutcome(previous, skipped=True)
    ctx = StageContext(run)
    start = time.perf_counter()
    try:
        results = body(ctx)
        outputs = ctx._commit()
    finally:
        ctx._discard()
    record = StageRecord(
        name,
        input_records,
        params,
        outputs,
        results,
        round(time.perf_counter() - start, 3),
        library_versions(),
        datetime.now(UTC).isoformat(timespec="seconds"),
    )
    run.manifest.record(record)
    return StageOutcome(record, skipped=False)


def _up_to_date(
    run: RunDir, prev: StageRecord, inputs: list[FileRecord], params: dict[str, Any]
) -> bool:
    if prev.inputs != inputs or prev.params != _json_roundtrip(params):
        return False
    for out in prev.outputs:
        path = run.path / out.path
        if not path.is_file() or sha256_file(path) != out.sha256:
            return False
    return True


def _json_roundtrip(params: dict[str, Any]) -> Any:
    # The manifest stores JSON: tuples come back as lists; compare like with like.
    return json.loads(json.dumps(params, default=str))
