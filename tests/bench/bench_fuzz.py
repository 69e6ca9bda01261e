"""Fuzz every on-disk format quantpipe reads at a chosen budget; count, time and report.

    .venv/bin/python tests/bench/bench_fuzz.py --examples 100000 --out runs/bench/fuzz.json
    .venv/bin/python tests/bench/bench_fuzz.py --examples 2000 --formats btc,qpmix --out x.json

Runs the cases of tests/fuzz/strategies.py's FORMATS through hypothesis's own engine (a
@given function called directly; generation only, no shrinking, no example database)
under the same oracle as the pytest file: a case parses, or is refused with a one-line
QuantpipeError naming the file. Every other outcome is a crash; crashes do not stop the
run, they are counted and grouped by exception type and the line that raised it, with
the first case of each group. The JSON holds, per format, the cases actually executed
(counted in the test body: hypothesis may stop early when it runs out of distinct
cases), how many parsed, were refused and crashed, the wall time, cases/s and the
slowest case; and the CPU model. Exits 1 on any crash. Not a pytest test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hypothesis import HealthCheck, Phase, given, seed, settings

from quantpipe.engines.machine import cpu_info
from tests.fuzz.strategies import FORMATS, run_case

KEEP_CHARS = 400  # of a crashing case's repr and message, in the report


def _load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages at the end: how shared the machine was."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _signature(err: BaseException) -> str:
    """Exception type and the innermost quantpipe (else any) line that raised it: one
    crash group per cause, however many cases reach it."""
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if "/quantpipe/" in f.filename] or frames
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    return f"{type(err).__name__} at {where}"


def fuzz_format(name: str, examples: int, random_seed: int, chunk: int) -> dict[str, Any]:
    """Run `examples` cases of one format (fewer if hypothesis runs out of distinct ones);
    the counts, timing and crash groups. The cases run as hypothesis runs of at most
    `chunk` each, seeded apart: one run's record of every case it tried grows with it,
    and over 100 000 cases would cost a gigabyte and slow each case down."""
    strategy, _ = FORMATS[name]
    stats: dict[str, Any] = {"cases": 0, "parsed": 0, "refused": 0, "crashes": 0}
    groups: dict[str, dict[str, Any]] = {}
    slowest = 0.0

    def body(case: Any) -> None:
        nonlocal slowest
        stats["cases"] += 1
        start = time.perf_counter()
        try:
            parsed = run_case(name, case)
        except Exception as err:  # counting every crash, whatever it is, is the point
            stats["crashes"] += 1
            group = groups.setdefault(
                _signature(err),
                {"count": 0, "message": str(err)[:KEEP_CHARS], "case": repr(case)[:KEEP_CHARS]},
            )
            group["count"] += 1
        else:
            stats["parsed" if parsed else "refused"] += 1
        slowest = max(slowest, time.perf_counter() - start)

    start, cpu = time.perf_counter(), time.process_time()
    for i, first in enumerate(range(0, examples, chunk)):
        run = settings(
            max_examples=min(chunk, examples - first),
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )(given(strategy)(body))
        seed(random_seed * 1_000_003 + i)(run)()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    stats.update(
        wall_s=round(wall, 3),
        cpu_s=round(cpu, 3),  # this process's CPU time: wall time on a shared machine is not
        cases_per_s=round(stats["cases"] / wall, 1) if wall else None,
        slowest_case_s=round(slowest, 4),
        crash_groups=groups,
    )
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2000, help="cases per format")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis's random seed")
    parser.add_argument(
        "--chunk", type=int, default=10_000, help="cases per hypothesis run (bounds memory)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the JSON report")
    args = parser.parse_args(argv)
    names = [n for n in args.formats.split(",") if n]
    unknown = sorted(set(names) - set(FORMATS))
    if unknown:
        parser.error(f"unknown formats {unknown}; known: {', '.join(FORMATS)}")
    results = {}
    for name in names:
        results[name] = fuzz_format(name, args.examples, args.seed, args.chunk)
        r = results[name]
        print(
            f"{name:20s} {r['cases']:7d} cases {r['wall_s']:8.1f} s ({r['cpu_s']:.1f} s CPU) "
            f"{r['cases_per_s']:8.1f}/s "
            f"parsed {r['parsed']:6d} refused {r['refused']:6d} crashes {r['crashes']}",
            flush=True,
        )
        for sig, group in r["crash_groups"].items():
            print(f"    {group['count']:6d} x {sig}: {group['message'][:160]}", flush=True)
    cases = sum(r["cases"] for r in results.values())
    wall = sum(r["wall_s"] for r in results.values())
    cpu = sum(r["cpu_s"] for r in results.values())
    report = {
        "cpu": cpu_info().describe(),
        "python": platform.python_version(),
        "examples_per_format": args.examples,
        "seed": args.seed,
        "chunk": args.chunk,
        "formats": results,
        "total": {
            "cases": cases,
            "crashes": sum(r["crashes"] for r in results.values()),
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "cases_per_s": round(cases / wall, 1) if wall else None,
            "cases_per_cpu_s": round(cases / cpu, 1) if cpu else None,
        },
        "load_average": _load_average(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(
        f"total {cases} cases in {wall:.1f} s; {report['total']['crashes']} crashes -> {args.out}"
    )
    return 1 if report["total"]["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
