"""The btc stage end to end: wall time of `quantpipe btc --target-bits 4.5`, as a user runs it.

    python tests/bench/bench_btc_stage.py --out bench-btc-stage.json
    python tests/bench/bench_btc_stage.py --model cifar10-resnet56=runs/r56/model.pt

Each model is coded `--repeats` times, each time as a new process in a new run directory
(so nothing is cached: the FP32 scores are measured, the ONNX export is redone), on the JPEG
CIFAR-10 test set of ../shared (`test` split: 4,000 images). The reference in the same run
is the stage's floor: the paper's σ rule on the same model with `--no-baselines` (export,
code, score FP32 and the result; no Fisher importance, no re-tuning), so `vs_floor` is what
the budgeted mode's importance and re-tuning cost on top. Reported per model: wall seconds
(median, min, max), the CPU seconds of the child, the result's top-1 drop on test and the
re-tuning steps run (and whether every repeat gave the same: the stage is deterministic).

Why a script and not a test: the figures depend on the machine; they are for the README and
the issue's targets (ResNet-56 ≤ 60 s on 2 cores), not a pass/fail in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
DATA = f"cifar10:{SHARED / 'data' / 'cifar10-test-jpeg.tar'}"
DEFAULT_MODELS = {
    "cifar10-resnet20": SHARED / "weights" / "cifar10-resnet20-12fca82f.th",
    "cifar10-resnet32": SHARED / "weights" / "cifar10-resnet32-d509ac18.th",
}


def run_once(model: str, weights: Path, mode: list[str], workdir: Path) -> dict[str, Any]:
    """One `quantpipe btc` process in a new run directory: its wall and CPU seconds and
    what it recorded."""
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    argv = [sys.executable, "-m", "quantpipe", "btc", "--model", model, "--weights",
            str(weights), "--data", DATA, *mode, "--run-dir", str(run_dir), "--quiet"]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    result = json.loads((run_dir / "manifest.json").read_text())["stages"]["btc"]["results"]
    accuracy = result["accuracy"]
    return {
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "test_drop": accuracy["fp32"]["test"] - accuracy["btc_test"],
        "fp32_test": accuracy["fp32"]["test"],
        "b_eff": result["summary"]["b_eff"],
        "retune_steps_run": result.get("retune_steps_run"),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [r["wall_s"] for r in runs]
    return {
        "wall_s_median": statistics.median(walls),
        "wall_s_min": min(walls),
        "wall_s_max": max(walls),
        "cpu_s_median": statistics.median(r["cpu_s"] for r in runs),
        **{k: v for k, v in runs[-1].items() if not k.endswith("_s")},
        # Deterministic stage: every repeat should give the same result and steps.
        "same_result_every_run": len({(r["test_drop"], r["retune_steps_run"]) for r in runs}) == 1,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench-btc-stage.json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--target-bits", type=float, default=4.5)
    ap.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=WEIGHTS",
        help="a model to add to ResNet-20 and -32 (e.g. a ResNet-56 you trained)",
    )
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from quantpipe.engines.machine import cpu_info

    models = dict(DEFAULT_MODELS)
    for item in args.model:
        name, _, weights = item.partition("=")
        if not weights or not Path(weights).is_file():
            raise SystemExit(f"--model {item}: give NAME=WEIGHTS with an existing weights file")
        models[name] = Path(weights)
    budget = ["--target-bits", str(args.target_bits)]
    floor = ["--no-baselines"]  # the paper's σ rule: no importance, no re-tuning
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name, weights in models.items():
            timed = {"budget": [], "floor": []}
            for _ in range(args.repeats):  # interleaved, so drift hits both alike
                timed["budget"].append(run_once(name, weights, budget, Path(workdir)))
                timed["floor"].append(run_once(name, weights, floor, Path(workdir)))
            budgeted, sigma = summarise(timed["budget"]), summarise(timed["floor"])
            row = {
                "model": name,
                "target_bits": budgeted,
                "floor_sigma_rule": sigma,
                "vs_floor": budgeted["wall_s_median"] / sigma["wall_s_median"],
            }
            rows.append(row)
            print(
                f"{name}: --target-bits {args.target_bits} {budgeted['wall_s_median']:.1f} s "
                f"median ({budgeted['wall_s_min']:.1f}-{budgeted['wall_s_max']:.1f}), "
                f"{budgeted['retune_steps_run']} re-tuning steps, test drop "
                f"{budgeted['test_drop']:+.2f} points; σ-rule floor "
                f"{sigma['wall_s_median']:.1f} s; {row['vs_floor']:.2f}× the floor",
                flush=True,
            )
    report = {
        "command": f"quantpipe btc --target-bits {args.target_bits} (new run directory each)",
        "data": f"{DATA}, test split (4,000 images)",
        "machine": cpu_info().describe(),
        "cpus": len(os.sched_getaffinity(0)),
        "repeats": args.repeats,
        "results": rows,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
