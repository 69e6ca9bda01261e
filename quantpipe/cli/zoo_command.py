"""`quantpipe zoo`: the built-in trained models and the user's checkpoints through every
compression stage, then one table (zoo/report.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from quantpipe.pipeline.stage import RunOptions


def cmd_zoo(args: argparse.Namespace) -> int:
    from quantpipe.engines.machine import cpu_info
    from quantpipe.zoo.entries import ZooCounts, builtin_entries, checkpoint_entry
    from quantpipe.zoo.report import write_zoo_report
    from quantpipe.zoo.runner import run_entry

    entries = [] if args.no_builtin else builtin_entries(args.models)
    entries += [checkpoint_entry(*c) for c in args.checkpoint or ()]
    counts = ZooCounts.quick() if args.quick else ZooCounts()
    options = RunOptions(force=args.force, progress=not args.quiet, threads=args.threads)
    out = Path(args.out)
    rows = []
    for entry in entries:
        print(f"== {entry.model} on {entry.data}")
        rows.append(run_entry(entry, out, counts, options))
    path = write_zoo_report(rows, out, cpu_info().describe(), args.quick)
    print(path.read_text())
    print(f"wrote {path}")
    return 0
