"""The Stage contract and the stage runner: skip when up to date, write outputs
atomically, record the typed result in the manifest.

A stage is a frozen object holding its config and the references to its inputs:

    class ExportStage:                      # quantpipe/stages/export.py
        kind = "export"                     # what kind of stage (the manifest's `stage`)
        result_type = ExportResult          # a JsonResult dataclass
        name -> "export"                    # the record's name, unique within a run
        inputs(run) -> {"weights": Path}    # files whose content decides the result
        params() -> {...}                   # everything else that does (JSON-able)
        run(ctx) -> ExportResult            # does the work, writes via ctx.output()

`run_stage` hashes the inputs, skips the stage when the manifest shows the same inputs,
parameters and intact outputs, else calls `run` and only when it returns renames every
output into place and records the result: an exception or Ctrl-C leaves earlier good
outputs and the manifest untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from quantpipe.errors import QuantpipeError
from quantpipe.pipeline.atomic import SCRATCH_PREFIX, new_file_mode, new_temporary
from quantpipe.pipeline.hashing import fingerprint_path, sha256_file
from quantpipe.pipeline.manifest import FileRecord, StageRecord
from quantpipe.pipeline.results import JsonResult
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.versions import library_versions

R = TypeVar("R", bound=JsonResult)
R_co = TypeVar("R_co", bound=JsonResult, covariant=True)


@dataclass(frozen=True)
class RunOptions:
    """How to run, as opposed to what to compute: never part of a stage's parameters.

    Attributes:
        force: rerun even when the manifest shows the stage up to date.
        progress: progress bars (off with --quiet).
        threads: CPU threads for ONNX Runtime and PyTorch; 0 leaves each library's default.
    """

    force: bool = False
    progress: bool = True
    threads: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.threads, bool) or self.threads < 0:
            raise QuantpipeError(f"--threads must be 0 (automatic) or positive, got {self.threads}")


class Stage(Protocol[R_co]):
    kind: ClassVar[str]

    @property
    def name(self) -> str: ...

    def inputs(self, run: RunDir) -> Mapping[str, Path]: ...

    def params(self) -> dict[str, Any]: ...

    def run(self, ctx: StageContext) -> R_co: ...

    @property
    def result_type(self) -> type[R_co]: ...


@dataclass
class StageContext:
    """What a running stage gets: its run directory, how to run, and where to write."""

    run: RunDir
    options: RunOptions = field(default_factory=RunOptions)
    _pending: dict[str, Path] = field(default_factory=dict)
    _adopted: list[str] = field(default_factory=list)

    @property
    def progress(self) -> bool:
        return self.options.progress

    @property
    def threads(self) -> int:
        return self.options.threads

    def output(self, relpath: str) -> Path:
        """A temporary path to write the output `relpath` (relative to the run directory)."""
        final = self.run.path / relpath
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = new_temporary(final)
        self._pending[relpath] = tmp
        return tmp

    def scratch_dir(self) -> tempfile.TemporaryDirectory[str]:
        """A temporary directory inside the run directory for intermediate files (removed on
        exit; one a killed process leaves behind is removed when the run is next opened)."""
        return tempfile.TemporaryDirectory(dir=self.run.path, prefix=SCRATCH_PREFIX)

    def adopt(self, relpath: str) -> None:
        """Record a file that already sits in the run directory as an output of this stage.

        For content-addressed caches (calibration tables) that are written atomically as
        soon as they are computed, so that a later failure does not throw the work away.
        """
        if not (self.run.path / relpath).is_file():
            raise RuntimeError(f"adopted output {relpath} does not exist")
        self._adopted.append(relpath)

    def _commit(self) -> list[FileRecord]:
        records = []
        for rel, tmp in self._pending.items():
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, new_file_mode())
            os.replace(tmp, self.run.path / rel)
        for rel in [*self._pending, *self._adopted]:
            final = self.run.path / rel
            records.append(FileRecord(rel, sha256_file(final), final.stat().st_size))
        self._pending.clear()
        return records

    def _discard(self) -> None:
        for tmp in self._pending.values():
            tmp.unlink(missing_ok=True)
        self._pending.clear()


@dataclass(frozen=True)
class StageOutcome(Generic[R]):
    record: StageRecord
    result: R
    skipped: bool


def run_stage(run: RunDir, stage: Stage[R], options: RunOptions | None = None) -> StageOutcome[R]:
    """Run `stage` unless the manifest shows it done with the same inputs and parameters."""
    options = options or RunOptions()
    input_records, params = _fingerprint(run, stage)
    previous = run.manifest.stages.get(stage.name)
    if not options.force and previous and _up_to_date(run, previous, input_records, params):
        return StageOutcome(previous, stage.result_type.from_json(previous.results), True)
    ctx = StageContext(run, options)
    start = time.perf_counter()
    try:
        result = stage.run(ctx)
        if previous is not None:
            # The renames below replace files the old record vouches for: forget it first, so
            # that a kill between two renames leaves no record claiming a file it no longer
            # matches (the stage then simply runs again).
            run.manifest.forget(stage.name)
        outputs = ctx._commit()
    finally:
        ctx._discard()
    record = StageRecord(
        name=stage.name,
        stage=stage.kind,
        inputs=input_records,
        params=params,
        outputs=outputs,
        results=result.to_json(),
        wall_s=round(time.perf_counter() - start, 3),
        versions=library_versions(),
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    run.manifest.record(record)
    return StageOutcome(record, result, skipped=False)


def will_run(run: RunDir, stage: Stage[Any], options: RunOptions) -> bool:
    """Whether `run_stage` would run `stage` now (for processes that must know beforehand,
    like data-parallel QAT's other ranks)."""
    input_records, params = _fingerprint(run, stage)
    previous = run.manifest.stages.get(stage.name)
    return (
        options.force or previous is None or not _up_to_date(run, previous, input_records, params)
    )


def _fingerprint(run: RunDir, stage: Stage[Any]) -> tuple[list[FileRecord], dict[str, Any]]:
    """The stage's input records (checked to exist) and parameters."""
    inputs = stage.inputs(run)
    missing = [f"{role} {p}" for role, p in inputs.items() if not p.exists()]
    if missing:
        raise QuantpipeError(
            f"stage {stage.name}: input not found: {', '.join(missing)}; pass an existing file "
            "or run the stage that writes it first"
        )
    return [FileRecord(str(p), fingerprint_path(p)) for p in inputs.values()], stage.params()


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
