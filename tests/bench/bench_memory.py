"""Peak memory of the heavy stages on 1,024 images at 224×224: calibrate, ptq, qat and bench
(export and engines run too, as the steps they need, and are measured alike).

Each stage runs as its own `quantpipe` process on torchvision resnet18 (random weights: memory
does not depend on them) with the CIFAR-10 JPEG test set resized to 224×224 by the model's
preprocessing. Peak memory is the largest sum of VmRSS over the process and all its children,
sampled every 20 ms, cross-checked with the kernel's ru_maxrss of the largest child; each is
compared with the bound the README states.

    python tests/bench/bench_memory.py --data cifar10:../shared/data/cifar10-test-jpeg.tar \\
        --out bench-results/bench-memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from quantpipe.engines.machine import cpu_info

IMAGES = 1024
MIB = 1 << 20
# The bounds the README states (MiB of resident memory, the whole process tree).
BOUNDS_MIB = {"calibrate": 1024, "ptq": 2048, "qat": 4096, "bench": 2048}


def stages(data: str) -> dict[str, list[str]]:
    count = ["--calib-count", str(IMAGES)]
    return {
        "export": ["export", "--model", "resnet18", "--data", data],
        "calibrate": ["calibrate", "--data", data, *count],
        "ptq": ["ptq", "--data", data, *count, "--eval-count", str(IMAGES)],
        "qat": [
            "qat",
            "--data",
            data,
            "--epochs",
            "1",
            "--train-count",
            str(IMAGES),
            "--eval-count",
            str(IMAGES),
            "--batch-size",
            "32",
        ],
        "engines": ["engines", "--batch-sizes", "1,32"],
        "bench": [
            "bench",
            "--data",
            data,
            "--batch-sizes",
            "1,32",
            "--count",
            str(IMAGES),
            "--duration",
            "2",
        ],
    }


def tree_rss(pid: int) -> int:
    """Bytes resident in `pid` and every descendant (0 once it has gone)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += _rss(p)
        todo += children.get(p, [])
    return total


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(argv: list[str]) -> dict[str, float]:
    """Run one command; its wall time, peak tree RSS and the kernel's ru_maxrss."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, err = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {err[-2000:]}")
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_tree_rss_mib": round(peak[0] / MIB, 1),
        # ru_maxrss (KiB) covers the largest child waited for so far: only a lower bound for
        # this command when an earlier one was larger.
        "ru_maxrss_mib": round(maxrss / 1024, 1) if maxrss > before else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an image data set, e.g. cifar10:PATH")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="quantpipe-memory-") as tmp:
        where = ["--quiet", "--run-dir", str(Path(tmp) / "run"), "--threads", str(args.threads)]
        for name, argv in stages(args.data).items():
            rows[name] = measure([sys.executable, "-m", "quantpipe", *argv, *where])
            bound = BOUNDS_MIB.get(name)
            rows[name]["bound_mib"] = bound
            print(
                f"{name:<10} {rows[name]['wall_s']:>7} s  peak {rows[name]['peak_tree_rss_mib']}"
                f" MiB (bound {bound})"
            )
    over = [
        n for n, r in rows.items() if r["bound_mib"] and r["peak_tree_rss_mib"] > r["bound_mib"]
    ]
    summary = {
        "cpu": cpu_info().describe(),
        "cores": os.cpu_count(),
        "images": IMAGES,
        "model": "resnet18",
        "input": "3x224x224",
        "stages": rows,
        "over_bound": over,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
