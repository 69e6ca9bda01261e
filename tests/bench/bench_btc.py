"""Benchmark BTC encode/decode against a plain per-tensor 8-bit min/max quantizer.

    python tests/bench/bench_btc.py --out bench-btc.json

Builds torchvision resnet50 with random weights (no download), takes its Conv and
Linear weights (~25 M), and measures for each method, in the same run:
encode and decode throughput (weights/s, median of --repeats timed runs after one
warm-up) and peak extra memory during one call (tracemalloc peak, which numpy
reports its buffers to), relative to the FP32 bytes of the weights.

Methods: `plain8` = per-tensor asymmetric 8-bit min/max (uniform.minmax_*);
`btc_sigma` = encode_model with the paper's rule (B, tau); `btc_target` = encode_model
with the target-bits policy. BTC encode includes everything encode_model does
(mode choice, codes, per-block error and the summary's RMSE); decode is decode_model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from quantpipe.btc.container import read_container, write_container
from quantpipe.btc.model import ModelEncoding, decode_model, encode_model, select_weight_names
from quantpipe.btc.policy import Policy, SigmaRule, TargetBits
from quantpipe.btc.uniform import minmax_decode, minmax_encode

TARGETS = {"encode_weights_per_s": 100e6, "decode_weights_per_s": 200e6, "peak_mem_ratio": 3.0}


def _load_weights() -> dict[str, np.ndarray]:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    sd = model.state_dict()
    return {k: sd[k].detach().numpy().copy() for k in select_weight_names(model)}


def _time(fn: Callable[[], Any], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (all threads) seconds of each of `repeats` runs after a warm-up."""
    fn()  # warm-up (thread pool, page faults, caches)
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def _peak_extra_bytes(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def _plain_fns(weights: dict[str, np.ndarray]) -> tuple[Callable[[], Any], Callable[[], Any]]:
    coded = {k: minmax_encode(w, 8) for k, w in weights.items()}

    def encode() -> Any:
        return {k: minmax_encode(w, 8) for k, w in weights.items()}

    def decode() -> Any:
        return {k: minmax_decode(c, lo, st, weights[k].shape) for k, (c, lo, st) in coded.items()}

    return encode, decode


def _plain_quality(weights: dict[str, np.ndarray], n: int) -> dict[str, float]:
    sse = 0.0
    for w in weights.values():
        codes, lo, step = minmax_encode(w, 8)
        d = minmax_decode(codes, lo, step, w.shape).astype(np.float64) - w
        sse += float(np.dot(d.reshape(-1), d.reshape(-1)))
    b_eff = 8.0 + 64 * len(weights) / n  # float32 min and step per tensor
    return {"b_avg": 8.0, "b_eff": b_eff, "rmse": float(np.sqrt(sse / n))}


def _btc_fns(
    weights: dict[str, np.ndarray], policy: Policy, workers: int | None
) -> tuple[Callable[[], Any], Callable[[], Any], dict[str, Any]]:
    names = list(weights)
    result = encode_model(weights, names, policy, workers=workers)

    def encode() -> Any:
        return encode_model(weights, names, policy, workers=workers)

    def decode() -> Any:
        return decode_model(result.encoded, workers=workers)

    s = result.summary
    info = {"b_avg": s.b_avg, "b_eff": s.b_eff, "rmse": s.rmse, "frac_high": s.frac_high}
    return encode, decode, info | _container_io(result, s.n, 3)


def _measure(
    name: str, enc: Callable[[], Any], dec: Callable[[], Any], n: int, repeats: int
) -> dict[str, Any]:
    row: dict[str, Any] = {"method": name}
    for op, fn in (("encode", enc), ("decode", dec)):
        wall, cpu = _time(fn, repeats)
        row[f"{op}_s_median"] = statistics.median(wall)
        row[f"{op}_s_all"] = wall
        row[f"{op}_weights_per_s"] = n / statistics.median(wall)
        # Per CPU-second (all threads): less sensitive to other load on a shared machine.
        row[f"{op}_cpu_s_median"] = statistics.median(cpu)
        row[f"{op}_weights_per_cpu_s"] = n / statistics.median(cpu)
        row[f"{op}_peak_extra_bytes"] = _peak_extra_bytes(fn)
        row[f"{op}_peak_mem_ratio"] = row[f"{op}_peak_extra_bytes"] / (4 * n)
    print(f"  {name}: done", file=sys.stderr)
    return row


def _container_io(result: ModelEncoding, n: int, repeats: int) -> dict[str, Any]:
    """Write and read the coded weights as a model.btc (extra information, no target)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.btc")
        wall_w, _ = _time(lambda: write_container(path, result.encoded, {}, {}), repeats)
        wall_r, _ = _time(lambda: read_container(path), repeats)
        size = os.path.getsize(path)
    return {
        "container_bytes": size,
        "container_write_weights_per_s": n / statistics.median(wall_w),
        "container_read_weights_per_s": n / statistics.median(wall_r),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        "method       encode M w/s (per CPU-s)  decode M w/s (per CPU-s)  "
        "enc peak/FP32  dec peak/FP32  b_eff   rmse"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['method']:<12} {r['encode_weights_per_s'] / 1e6:>12.1f} "
            f"({r['encode_weights_per_cpu_s'] / 1e6:>6.1f})  "
            f"{r['decode_weights_per_s'] / 1e6:>12.1f} "
            f"({r['decode_weights_per_cpu_s'] / 1e6:>6.1f})  "
            f"{r['encode_peak_mem_ratio']:>13.2f}  {r['decode_peak_mem_ratio']:>13.2f}  "
            f"{r['b_eff']:>5.3f}  {r['rmse']:.3e}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench-btc.json")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--tau", type=float, default=0.05)
    ap.add_argument("--target-bits", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=None, help="threads (default: all CPUs)")
    args = ap.parse_args(argv)

    load_start = os.getloadavg()
    weights = _load_weights()
    n = sum(w.size for w in weights.values())
    print(f"resnet50: {len(weights)} Conv/Linear weights, {n / 1e6:.2f} M weights", file=sys.stderr)
    plain_enc, plain_dec = _plain_fns(weights)
    rows = [_measure("plain8", plain_enc, plain_dec, n, args.repeats)]
    rows[0].update(_plain_quality(weights, n))
    policies: dict[str, Policy] = {
        "btc_sigma": SigmaRule(args.tau, block_size=args.block_size),
        "btc_target": TargetBits(args.target_bits, block_size=args.block_size),
    }
    for name, policy in policies.items():
        enc, dec, info = _btc_fns(weights, policy, args.workers)
        rows.append(_measure(name, enc, dec, n, args.repeats) | info | policy.describe())
    plain = rows[0]
    for r in rows[1:]:
        for op in ("encode", "decode"):
            r[f"{op}_speed_vs_plain8"] = r[f"{op}_weights_per_s"] / plain[f"{op}_weights_per_s"]
            r[f"{op}_cpu_speed_vs_plain8"] = (
                r[f"{op}_weights_per_cpu_s"] / plain[f"{op}_weights_per_cpu_s"]
            )
        r["meets_targets"] = {
            "encode": r["encode_weights_per_s"] >= TARGETS["encode_weights_per_s"],
            "decode": r["decode_weights_per_s"] >= TARGETS["decode_weights_per_s"],
            "memory": max(r["encode_peak_mem_ratio"], r["decode_peak_mem_ratio"])
            <= TARGETS["peak_mem_ratio"],
        }
    print(_table(rows))
    for r in rows[1:]:
        print(
            f"{r['method']}: model.btc {r['container_bytes'] / 1e6:.2f} MB, write "
            f"{r['container_write_weights_per_s'] / 1e6:.0f} M w/s, read+decode "
            f"{r['container_read_weights_per_s'] / 1e6:.0f} M w/s"
        )
        print(
            f"{r['method']}: encode {r['encode_speed_vs_plain8']:.2f}x plain8 "
            f"({r['encode_cpu_speed_vs_plain8']:.2f}x per CPU-s), decode "
            f"{r['decode_speed_vs_plain8']:.2f}x ({r['decode_cpu_speed_vs_plain8']:.2f}x), "
            f"targets met {r['meets_targets']}"
        )
    report = {
        "model": "torchvision resnet50 (random init)",
        "n_weights": n,
        "n_tensors": len(weights),
        "fp32_bytes": 4 * n,
        "repeats": args.repeats,
        "workers": args.workers,
        "cpus": len(os.sched_getaffinity(0)),
        "loadavg_at_start": load_start,
        "loadavg_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "targets": TARGETS,
        "results": rows,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
