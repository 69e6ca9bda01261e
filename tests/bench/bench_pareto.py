"""Benchmark the Pareto bit allocation on ResNet-50's layers.

    python tests/bench/bench_pareto.py --out bench-pareto.json

Builds torchvision resnet50 on the meta device (no weights, no memory), takes its 54 Conv
and Linear layers with their weight counts, gives them random positive sensitivities
(log-normal, seeded) and times `pareto_frontier` with widths (2, 4, 8): the median of
--repeats runs after one warm-up. Reports the frontier size and the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from quantpipe.engines.machine import cpu_info
from quantpipe.mixed.pareto import Layer, pareto_frontier

WIDTHS = (2, 4, 8)
TARGET_S = 5.0  # the target for a ResNet-50 sized input


def resnet50_layers(seed: int) -> list[Layer]:
    """ResNet-50's Conv/Linear layers: name, weight count, a random sensitivity."""
    import torch
    from torch import nn

    from quantpipe.models.registry import MODELS

    # The meta device gives shapes without allocating or initialising 25 M weights.
    with torch.device("meta"):
        model = MODELS["resnet50"].build()
    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    rng = np.random.default_rng(seed)
    sensitivities = rng.lognormal(0.0, 1.0, len(modules))
    return [
        Layer(name, int(m.weight.numel()), float(s))
        for (name, m), s in zip(modules, sensitivities, strict=True)
    ]


def run(repeats: int, seed: int) -> dict[str, Any]:
    layers = resnet50_layers(seed)
    frontier = pareto_frontier(layers, WIDTHS)  # warm-up (imports, allocator)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        frontier = pareto_frontier(layers, WIDTHS)
        times.append(time.perf_counter() - start)
    params = [x.params for x in layers]
    return {
        "model": "resnet50",
        "layers": len(layers),
        "params_min": min(params),
        "params_max": max(params),
        "widths": list(WIDTHS),
        "seed": seed,
        "repeats": repeats,
        "median_s": statistics.median(times),
        "times_s": times,
        "target_s": TARGET_S,
        "frontier_points": len(frontier),
        "smallest_bytes": frontier[0].size_bytes,
        "largest_bytes": frontier[-1].size_bytes,
        "cpu": cpu_info().describe(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = run(args.repeats, args.seed)
    print(
        f"resnet50: {result['layers']} layers ({result['params_min']}..{result['params_max']}"
        f" weights), widths {WIDTHS}: pareto_frontier {result['median_s']:.4f} s median of "
        f"{args.repeats} (target < {TARGET_S:g} s), {result['frontier_points']} points; "
        f"CPU {result['cpu']}"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
