"""Which engines of a run to serve or package: the `engines` stage's, in its order,
optionally narrowed by file-name patterns."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path

from quantpipe.errors import QuantpipeError
from quantpipe.pipeline.manifest import Manifest


def run_engines(run_path: Path, patterns: Sequence[str] = ()) -> list[Path]:
    """The run's engines matching any of `patterns` (fnmatch on file names; none: all).
    Reads the manifest without locking the run: serving only reads it."""
    from quantpipe.stages.engines import EnginesResult

    record = Manifest.load(run_path).stages.get("engines")
    if record is None:
        raise QuantpipeError(f"run {run_path} has no engines: run `quantpipe engines` first")
    engines = [run_path / e.file for e in EnginesResult.from_json(record.results).engines]
    if not patterns:
        return engines
    chosen = [e for e in engines if any(fnmatch.fnmatch(e.name, p) for p in patterns)]
    if not chosen:
        raise QuantpipeError(
            f"--select {','.join(patterns)} matches none of the run's engines "
            f"({', '.join(e.name for e in engines)})"
        )
    return chosen
