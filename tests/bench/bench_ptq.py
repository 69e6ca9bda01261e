"""PTQ benchmark: our calibration + Q/DQ vs onnxruntime.quantization.quantize_static.

    python tests/bench/bench_ptq.py --out bench-ptq.json            # 1,024 images
    python tests/bench/bench_ptq.py --quick --out bench-ptq.json    # 64 images, fewer repeats

torchvision resnet18 with random weights (BatchNorm statistics randomised too, so the folded
biases differ as trained ones do) is exported to FP32 ONNX (opset 17, dynamic batch). The same
synthetic images (smooth random fields plus noise, ImageNet-normalised, generated per batch
from a seed) feed: plain FP32 inference, our calibration (one collection pass, all four
calibrators) as `ptq` runs it (histograms of a quarter of the spatial positions, exact
maxima) and binning every value (`--histogram-stride 1`), and quantize_static (QDQ,
per-channel, Entropy, its other defaults). Each phase runs in its own process, so its peak
RSS (VmHWM) is its own; data generation time is subtracted from every phase. FP32 and our
two calibrations take turns for `--repeats` rounds (a shared 2-core VM varies by 10-20 %
from one minute to the next): their seconds are medians, their ratios the median of each
round's ratio. Not a pytest test.

Latency: median over interleaved rounds, ONNX Runtime CPU, of the FP32 model, our INT8 Q/DQ
model (portable), its ONNX Runtime CPU build (what `ptq` writes as model.int8.ort.onnx; the
INT8 figure that counts on a CPU host) and quantize_static's model. Thread spinning is off
in the sessions that take turns: with it, the idle pool of the session that just ran spins
on the cores while the next one runs, which inflated latencies up to 2.6x here (2 cores)
and made the ratios depend on the order of the models. Phases with one session keep ONNX
Runtime's default.

The conv-floor phase times single convolutions of resnet18's shapes, FP32 Conv against a
fused QLinearConv (UINT8 in, INT8 per-channel weights): the ratio ONNX Runtime's integer
kernels reach on this CPU, below which no graph rewrite can take the whole model.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# One BLAS thread for the synthetic-image generation, so that the only parallelism in every
# phase is the ONNX Runtime (and our binning) threads being measured.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

IMAGE = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)


class SyntheticImages:
    """Batches of ``count`` synthetic images, regenerated identically on every pass."""

    def __init__(self, count: int, batch: int, seed: int = 0) -> None:
        self.count, self.batch, self.seed = count, batch, seed
        self.data_s = 0.0  # time spent generating, subtracted from every measurement
        low = 28
        grid = np.linspace(0, low - 1, IMAGE)
        lo = np.floor(grid).astype(int).clip(0, low - 2)
        frac = (grid - lo).astype(np.float32)
        self.upsample = np.zeros((IMAGE, low), dtype=np.float32)  # bilinear, as a matrix
        self.upsample[np.arange(IMAGE), lo] = 1 - frac
        self.upsample[np.arange(IMAGE), lo + 1] = frac

    def __len__(self) -> int:
        return -(-self.count // self.batch)

    def batch_at(self, k: int) -> np.ndarray:
        start = time.perf_counter()
        n = min(self.batch, self.count - k * self.batch)
        rng = np.random.default_rng((self.seed, k))
        low = rng.normal(0.45, 0.22, size=(n, 3, 28, 28)).astype(np.float32)
        img = np.einsum("hi,ncij,wj->nchw", self.upsample, low, self.upsample, optimize=True)
        img += rng.normal(0, 0.04, size=img.shape).astype(np.float32)
        out = ((np.clip(img, 0, 1) - MEAN) / STD).astype(np.float32)
        self.data_s += time.perf_counter() - start
        return out

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for k in range(len(self)):
            yield {"input": self.batch_at(k)}


def export_torchvision(path: Path, name: str = "resnet18") -> None:
    """torchvision's ``name`` with random weights (BatchNorm statistics randomised as trained
    ones are) as FP32 ONNX, opset 17, dynamic batch."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.onnx.export(
        model,
        torch.randn(1, 3, IMAGE, IMAGE),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def _session(model: str | bytes, threads: int, spinning: bool = True) -> Any:
    """A CPU session; ``spinning=False`` where sessions take turns (see the module doc)."""
    import onnx

    from quantpipe.engines.ort_session import OrtConfig, make_session

    loaded = onnx.load_from_string(model) if isinstance(model, bytes) else model
    return make_session(loaded, OrtConfig(threads=threads, spinning=spinning))


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def phase_idle(args: dict[str, Any]) -> dict[str, Any]:
    """Baseline: a process with the same imports and the FP32 session, doing nothing."""
    import onnx  # noqa: F401

    _session(args["fp32"], args["threads"])
    return {"peak_rss_mib": _peak_rss_mib()}


def phase_fp32(args: dict[str, Any]) -> dict[str, Any]:
    session = _session(args["fp32"], args["threads"])
    images = SyntheticImages(args["count"], args["batch"])
    start = time.perf_counter()
    for feed in images:
        session.run(None, feed)
    return {"seconds": time.perf_counter() - start - images.data_s, "peak_rss_mib": _peak_rss_mib()}


def phase_ours(args: dict[str, Any]) -> dict[str, Any]:
    """Calibration and the models as the ptq stage makes them: the tensors of the widened
    CPU plan (a superset of the portable plan's), the portable Q/DQ model, the CPU build."""
    import onnx

    from quantpipe.calibration import (
        CollectConfig,
        EntropyConfig,
        MaxConfig,
        MseConfig,
        PercentileConfig,
        collect_statistics,
        compute_all,
    )
    from quantpipe.quantize import QDQConfig
    from quantpipe.quantize.ort_cpu_plan import plan_ort_cpu
    from quantpipe.stages.ptq_scoring import Quantizer

    quantizer = Quantizer(Path(args["fp32"]), QDQConfig())
    model = quantizer.source
    images = SyntheticImages(args["count"], args["batch"])
    configs = [MaxConfig(), PercentileConfig(99.99), EntropyConfig(), MseConfig()]
    start = time.perf_counter()
    plan = plan_ort_cpu(model)
    config = CollectConfig(threads=args["threads"], histogram_stride=args["histogram_stride"])
    stats = collect_statistics(model, images, plan.calibration_tensors, config)
    collect_s = time.perf_counter() - start - images.data_s
    start = time.perf_counter()
    tables = compute_all(stats, configs)
    compute_s = time.perf_counter() - start
    peak = _peak_rss_mib()
    start = time.perf_counter()
    prefix = f"{args['dir']}/{args['prefix']}"
    for c in configs:
        quantized = quantizer.quantize(tables[c], c.name)
        onnx.save(quantized.model, f"{prefix}_{c.name}.onnx")
        build = quantizer.for_ort_cpu(quantized)
        onnx.save(build.model, f"{prefix}_{c.name}.ort.onnx")
    return {
        "seconds": collect_s + compute_s,
        "collect_seconds": collect_s,
        "compute_4_calibrators_seconds": compute_s,
        "qdq_seconds_per_model": (time.perf_counter() - start) / len(configs),
        "peak_rss_mib": peak,
        "calibrated_tensors": len(plan.calibration_tensors),
        "float_nodes": [f.name for f in quantizer.plan().float_nodes],
        "amax": {c.name: dict(tables[c]) for c in configs},
    }


class _OrtReader:
    """quantize_static's data reader over the same images, with the strided-range API."""

    def __init__(self, images: SyntheticImages) -> None:
        self.images, self.range, self.k = images, range(len(images)), 0

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.range, self.k = range(start_index, end_index), 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.k >= len(self.range):
            return None
        self.k += 1
        return {"input": self.images.batch_at(self.range[self.k - 1])}


def phase_ort(args: dict[str, Any]) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    images = SyntheticImages(args["count"], args["batch"])
    start = time.perf_counter()
    # Its Entropy calibrator keeps every activation of a collect_data() call in memory; the
    # strided option (one batch per call) is what keeps 1,024 images within RAM.
    quantize_static(
        args["fp32"],
        f"{args['dir']}/ort_entropy.onnx",
        _OrtReader(images),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"CalibStridedMinMax": 1},
    )
    seconds = time.perf_counter() - start - images.data_s
    return {"seconds": seconds, "peak_rss_mib": _peak_rss_mib()}


def phase_latency(args: dict[str, Any]) -> dict[str, Any]:
    models = args["models"].items()
    sessions = {name: _session(path, args["threads"], spinning=False) for name, path in models}
    out: dict[str, Any] = {}
    for batch, rounds in ((1, args["reps1"]), (32, args["reps32"])):
        x = SyntheticImages(batch, batch, seed=99).batch_at(0)
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for s in sessions.values():
            s.run(None, {"input": x})
        for _ in range(rounds):  # interleaved, so drift and neighbours hit all models alike
            for name, s in sessions.items():
                start = time.perf_counter()
                s.run(None, {"input": x})
                times[name].append(time.perf_counter() - start)
        out[f"batch{batch}"] = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
    return out


def phase_agreement(args: dict[str, Any]) -> dict[str, Any]:
    """Top-1 agreement and output cosine of each INT8 model with FP32 on held-out images."""
    images = SyntheticImages(64, 32, seed=7)
    ref = _session(args["fp32"], args["threads"])
    feeds = list(images)
    fp32 = np.concatenate([ref.run(None, f)[0] for f in feeds])
    out = {}
    for name, path in args["models"].items():
        s = _session(path, args["threads"])
        y = np.concatenate([s.run(None, f)[0] for f in feeds])
        cos = float(np.sum(y * fp32) / np.linalg.norm(y) / np.linalg.norm(fp32))
        out[name] = {"top1_agree": float(np.mean(y.argmax(1) == fp32.argmax(1))), "cosine": cos}
    return out


# resnet18's convolutions: (in, out, size, kernel, stride); batch 1 and 8.
RESNET18_CONVS = (
    (3, 64, 224, 7, 2),
    (64, 64, 56, 3, 1),
    (128, 128, 28, 3, 1),
    (256, 256, 14, 3, 1),
    (512, 512, 7, 3, 1),
)


def _conv_model(cin: int, cout: int, size: int, k: int, stride: int, int8: bool) -> bytes:
    """One Conv(+Relu); INT8: UINT8 input and output Q/DQ so ONNX Runtime fuses QLinearConv."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (cout, cin, k, k)).astype(np.float32)
    conv = {"pads": [k // 2] * 4, "strides": [stride, stride]}
    inits = [numpy_helper.from_array(np.zeros(cout, np.float32), "b")]
    if int8:
        scale = (np.abs(w).max(axis=(1, 2, 3)) / 127).astype(np.float32)
        q = np.clip(np.rint(w / scale[:, None, None, None]), -127, 127).astype(np.int8)
        inits += [
            numpy_helper.from_array(q, "wq"),
            numpy_helper.from_array(scale, "ws"),
            numpy_helper.from_array(np.zeros(cout, np.int8), "wz"),
            numpy_helper.from_array(np.array(0.02, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.uint8), "z"),
        ]
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
            helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
            helper.make_node("Conv", ["xd", "w", "b"], ["y"], **conv),
            helper.make_node("Relu", ["y"], ["r"]),
            helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"]),
            helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["out"]),
        ]
    else:
        inits.append(numpy_helper.from_array(w, "w"))
        nodes = [
            helper.make_node("Conv", ["x", "w", "b"], ["y"], **conv),
            helper.make_node("Relu", ["y"], ["out"]),
        ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", cin, size, size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


def phase_conv_floor(args: dict[str, Any]) -> dict[str, Any]:
    """INT8/FP32 latency of single convolutions (median of interleaved repeats)."""
    rows = []
    for cin, cout, size, k, stride in RESNET18_CONVS:
        sessions = {
            precision: _session(
                _conv_model(cin, cout, size, k, stride, precision == "int8"),
                args["threads"],
                spinning=False,
            )
            for precision in ("fp32", "int8")
        }
        for batch in (1, 8):
            x = np.abs(np.random.default_rng(1).normal(size=(batch, cin, size, size)))
            feed = {"x": x.astype(np.float32)}
            times: dict[str, list[float]] = {p: [] for p in sessions}
            for s in sessions.values():
                s.run(None, feed)
            for _ in range(args["reps"]):
                for p, s in sessions.items():
                    start = time.perf_counter()
                    s.run(None, feed)
                    times[p].append(time.perf_counter() - start)
            fp32, int8 = (float(np.median(times[p])) * 1e3 for p in ("fp32", "int8"))
            shape = f"{cin}->{cout} {size}x{size} k{k}s{stride}"
            rows.append(
                {
                    "conv": shape,
                    "batch": batch,
                    "fp32_ms": fp32,
                    "int8_ms": int8,
                    "ratio": int8 / fp32,
                }
            )
    return {"rows": rows}


def run_phase(fn: Any, args: dict[str, Any]) -> dict[str, Any]:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, (args,))


def cpu_info() -> dict[str, Any]:
    import onnxruntime

    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in text.splitlines() if "model name" in ln), ""
    )
    flags = next(
        (ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []
    )
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "isa": [f for f in wanted if f in flags],
        "onnxruntime": onnxruntime.__version__,
        "load_average_before": os.getloadavg(),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-ptq.json"))
    parser.add_argument("--count", type=int, default=1024, help="calibration images")
    parser.add_argument("--quick", action="store_true", help="64 images, fewer latency repeats")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-ort", action="store_true", help="skip quantize_static")
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of FP32 and our calibrations (medians)"
    )
    return parser.parse_args()


def main() -> None:
    a = parse_args()
    count = 64 if a.quick else a.count
    report: dict[str, Any] = {"config": {"count": count, "batch": a.batch, "threads": a.threads}}
    report["machine"] = cpu_info()
    with tempfile.TemporaryDirectory(prefix="bench-ptq-") as tmp:
        fp32 = f"{tmp}/resnet18.fp32.onnx"
        export_torchvision(Path(fp32))
        common = {"fp32": fp32, "count": count, "batch": a.batch, "threads": a.threads, "dir": tmp}
        run_phases(report, common, quick=a.quick, with_ort=not a.skip_ort, repeats=a.repeats)
    add_ratios(report)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {a.out}")


def run_phases(
    report: dict[str, Any], common: dict[str, Any], quick: bool, with_ort: bool, repeats: int
) -> None:
    """Each phase in its own process, results into ``report``."""
    tmp = common["dir"]
    report["idle"] = run_phase(phase_idle, common)
    report.update(calibration_rounds(common, repeats))
    models = {
        "fp32": common["fp32"],
        "ours_int8": f"{tmp}/ours_entropy.ort.onnx",  # the ONNX Runtime CPU build
        "ours_qdq_portable": f"{tmp}/ours_entropy.onnx",
    }
    int8 = {}
    for n in ("max", "percentile", "entropy", "mse"):
        int8[f"ours_{n}"] = f"{tmp}/ours_{n}.onnx"
        int8[f"ours_{n}_ort_cpu_build"] = f"{tmp}/ours_{n}.ort.onnx"
    if with_ort:
        report["ort_quantize_static"] = run_phase(phase_ort, common)
        models["ort_int8"] = int8["ort_entropy"] = f"{tmp}/ort_entropy.onnx"
    reps1, reps32 = (10, 3) if quick else (60, 12)
    latency_args = {**common, "models": models, "reps1": reps1, "reps32": reps32}
    report["latency_ms"] = run_phase(phase_latency, latency_args)
    report["agreement_with_fp32"] = run_phase(phase_agreement, {**common, "models": int8})
    report["conv_floor"] = run_phase(phase_conv_floor, {**common, "reps": 5 if quick else 15})


def calibration_rounds(common: dict[str, Any], repeats: int) -> dict[str, Any]:
    """FP32 inference and our two calibrations in turn, ``repeats`` times: the median run of
    each (its other figures with it) and the median of the per-round ratios."""
    phases = {
        "fp32_inference": (phase_fp32, {}),
        "ours": (phase_ours, {"histogram_stride": 2, "prefix": "ours"}),
        "ours_every_value": (phase_ours, {"histogram_stride": 1, "prefix": "ours_every_value"}),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in phases}
    for _ in range(max(1, repeats)):
        for name, (fn, extra) in phases.items():
            runs[name].append(run_phase(fn, {**common, **extra}))
    out: dict[str, Any] = {}
    for name, rows in runs.items():
        middle = _middle(rows, key=lambda r: r["seconds"])
        out[name] = {**middle, "runs_seconds": [r["seconds"] for r in rows]}
    fp32 = out["fp32_inference"]["runs_seconds"]
    for name in ("ours", "ours_every_value"):
        per_round = [a / b for a, b in zip(out[name]["runs_seconds"], fp32, strict=True)]
        out[name]["vs_fp32_per_round"] = per_round
        out[name]["vs_fp32_median"] = _middle(per_round)
    out["ours"]["amax_vs_every_value"] = amax_ratios(out["ours"], out["ours_every_value"])
    for name in ("ours", "ours_every_value"):
        out[name].pop("amax")
    return out


def amax_ratios(sampled: dict[str, Any], exact: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per calibrator, how far the sampled histograms moved each tensor's range from the
    one binning every value: min, median and max of amax(sampled) / amax(every value)."""
    out = {}
    for name, table in sampled["amax"].items():
        ratios = [table[t] / exact["amax"][name][t] for t in table]
        out[name] = {"min": min(ratios), "median": _middle(ratios), "max": max(ratios)}
    return out


def _middle(values: list[Any], key: Any = None) -> Any:
    """The median element itself (the upper one of an even count), not an average: a run
    whose other figures come with it."""
    return sorted(values, key=key)[len(values) // 2]


def add_ratios(report: dict[str, Any]) -> None:
    fp32_s = report["fp32_inference"]["seconds"]
    ratios = {
        "ours_calibration_vs_fp32": report["ours"]["vs_fp32_median"],
        "ours_every_value_calibration_vs_fp32": report["ours_every_value"]["vs_fp32_median"],
    }
    if "ort_quantize_static" in report:
        ratios["ort_calibration_vs_fp32"] = report["ort_quantize_static"]["seconds"] / fp32_s
    for batch, row in report["latency_ms"].items():
        for name in ("ours_int8", "ours_qdq_portable", "ort_int8"):
            if name in row:
                ratios[f"{name}_latency_vs_fp32_{batch}"] = row[name] / row["fp32"]
        if "ort_int8" in row:
            ratios[f"ours_vs_ort_latency_{batch}"] = row["ours_int8"] / row["ort_int8"]
    report["ratios"] = ratios


def print_table(report: dict[str, Any]) -> None:
    m, fp32 = report["machine"], report["fp32_inference"]
    print(f"\n{m['cpu']} ({m['cores']} cores, {' '.join(m['isa'])}), ORT {m['onnxruntime']}")
    print(f"{'phase':32s} {'seconds':>9s} {'x FP32':>7s} {'peak RSS MiB':>13s}")
    print(
        f"{'idle process (baseline)':32s} {'':>9s} {'':>7s} {report['idle']['peak_rss_mib']:13.0f}"
    )
    for key, label in (
        ("fp32_inference", "FP32 inference"),
        ("ours", "ours: 1 pass + 4 calibrators"),
        ("ours_every_value", "ours, every value binned"),
        ("ort_quantize_static", "ORT quantize_static Entropy"),
    ):
        if key in report:
            r = report[key]
            ratio = r.get("vs_fp32_median", r["seconds"] / fp32["seconds"])
            print(f"{label:32s} {r['seconds']:9.2f} {ratio:7.2f} {r['peak_rss_mib']:13.0f}")
    print(f"\n{'latency ms (median)':32s} {'batch 1':>9s} {'batch 32':>9s}")
    lat = report["latency_ms"]
    for name in lat["batch1"]:
        b1, b32 = lat["batch1"][name], lat["batch32"][name]
        r1, r32 = b1 / lat["batch1"]["fp32"], b32 / lat["batch32"]["fp32"]
        print(f"{name:32s} {b1:9.1f} {b32:9.1f}   ({r1:.2f}x, {r32:.2f}x FP32)")
    print(f"\n{'agreement with FP32 (64 imgs)':32s} {'top-1':>7s} {'cosine':>8s}")
    for name, row in report["agreement_with_fp32"].items():
        print(f"{name:32s} {row['top1_agree']:7.3f} {row['cosine']:8.4f}")
    print(f"\n{'single conv, INT8 / FP32 latency':32s} {'batch':>5s} {'FP32 ms':>8s} {'ratio':>6s}")
    for row in report["conv_floor"]["rows"]:
        print(f"{row['conv']:32s} {row['batch']:5d} {row['fp32_ms']:8.2f} {row['ratio']:6.2f}")


if __name__ == "__main__":
    main()
