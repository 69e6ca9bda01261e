"""How a stage's outcome is printed: ran or skipped, the files it wrote, its headline lines."""

from __future__ import annotations

from typing import Any

from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageOutcome


def report(run: RunDir, outcome: StageOutcome[Any]) -> None:
    rec = outcome.record
    state = (
        "up to date, skipped (--force reruns it)"
        if outcome.skipped
        else f"done in {rec.wall_s:.1f} s"
    )
    print(f"{rec.name}: {state}")
    for out in rec.outputs:
        verb = "kept" if outcome.skipped else "wrote"
        print(f"  {verb} {run.path / out.path} ({out.bytes:,} bytes)")
    for line in outcome.result.lines():
        print(f"  {line}")
