"""INT8 CPU speed on the models users bring: our ONNX Runtime CPU build against FP32 and
against ONNX Runtime's own quantize_static in its best configuration, with kernel censuses.

    python tests/bench/bench_models.py --out bench-models.json
    python tests/bench/bench_models.py --models resnet18 --quick --out x.json

For each torchvision model at 224x224 (random weights, BatchNorm statistics randomised as
trained ones are; speed does not depend on the weights): export to FP32 ONNX (opset 17,
dynamic batch); calibrate on synthetic images (tests/bench/bench_ptq.py's, seeded) and
build what `ptq` writes as model.int8.ort.onnx (widened plan, CPU rewrites, tactic pass);
quantize_static in each configuration its documentation recommends for this CPU
(quantpipe/bench/ort_baselines.py: QDQ S8S8, QDQ U8S8, QOperator U8S8; MinMax, per-channel,
after quant_pre_process) on the same images. Latency: median of interleaved rounds at
batch 1 and 32, all models of one network in one process, thread spinning off (see
bench_ptq.py). The baseline reported is quantize_static's fastest configuration at each
batch. Both sides calibrate with max (MinMax). Output cosine with FP32 on 64 held-out
images is a sanity check only: with random weights the logits hardly depend on the
image, so top-1 agreement says nothing here; accuracy is measured on trained models
(`ptq` in `make zoo`). Not a pytest test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ptq import (
    SyntheticImages,
    _session,
    cpu_info,
    export_torchvision,
    run_phase,
)

MODELS = ("mobilenet_v3_small", "efficientnet_b0", "mobilenet_v2", "shufflenet_v2_x1_0", "resnet18")


def phase_ours(args: dict[str, Any]) -> dict[str, Any]:
    """Calibrate (max, as the baselines' MinMax) and write our CPU build after the tactic pass."""
    import onnx

    from quantpipe.calibration import CollectConfig, MaxConfig, collect_statistics, compute_all
    from quantpipe.quantize.cpu_tactics import stem_tactics
    from quantpipe.quantize.ort_cpu import build_for_ort_cpu
    from quantpipe.quantize.ort_cpu_plan import plan_ort_cpu
    from quantpipe.quantize.qdq import apply_plan

    model = onnx.load(args["fp32"])
    images = SyntheticImages(args["count"], 16)
    start = time.perf_counter()
    tensors = plan_ort_cpu(model).calibration_tensors
    stats = collect_statistics(model, images, tensors, CollectConfig(threads=args["threads"]))
    amax = compute_all(stats, [MaxConfig()])[MaxConfig()]

    def build(convs: list[str]) -> onnx.ModelProto:
        plan = plan_ort_cpu(model, amax=amax, float_convs=convs)
        return build_for_ort_cpu(apply_plan(model, plan, amax)).model

    cache = Path(args["dir"]) / "tactics.json"
    tactics = stem_tactics(model, build, cache, args["threads"])
    onnx.save(build([t.node for t in tactics if t.keep_float]), args["out"])
    return {
        "seconds": time.perf_counter() - start - images.data_s,
        "tactics": [t.describe() for t in tactics],
    }


def phase_baseline(args: dict[str, Any]) -> dict[str, Any]:
    """quantize_static of the FP32 model in one configuration."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = args["fp32"].replace(".fp32.onnx", ".prepared.onnx")  # one per network
    if not Path(prepared).exists():
        quant_pre_process(args["fp32"], prepared)
    images = SyntheticImages(args["count"], 16)
    start = time.perf_counter()
    quantize_static(
        prepared,
        args["out"],
        _Reader(images),
        quant_format=getattr(QuantFormat, args["format"]),
        activation_type=getattr(QuantType, args["activation"]),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=args["reduce_range"],
        calibrate_method=CalibrationMethod.MinMax,
    )
    return {"seconds": time.perf_counter() - start - images.data_s}


class _Reader:
    def __init__(self, images: SyntheticImages) -> None:
        self.batches = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def phase_measure(args: dict[str, Any]) -> dict[str, Any]:
    """Latency at batch 1 and 32 (interleaved), census and agreement of every model."""
    from quantpipe.quantize.ort_census import ort_cpu_kernels

    paths = args["models"]
    sessions = {
        name: _session(path, args["threads"], spinning=False) for name, path in paths.items()
    }
    latency: dict[str, dict[str, float]] = {}
    for batch, rounds in ((1, args["reps1"]), (32, args["reps32"])):
        x = SyntheticImages(batch, batch, seed=99).batch_at(0)
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for s in sessions.values():
            s.run(None, {"input": x})
        for _ in range(rounds):
            for name, s in sessions.items():
                start = time.perf_counter()
                s.run(None, {"input": x})
                times[name].append(time.perf_counter() - start)
        latency[f"batch{batch}"] = {n: float(np.median(t)) * 1e3 for n, t in times.items()}
    feeds = list(SyntheticImages(64, 32, seed=7))
    outputs = {n: np.concatenate([s.run(None, f)[0] for f in feeds]) for n, s in sessions.items()}
    ref = outputs["fp32"]
    agreement = {
        n: {
            "top1_agree": float(np.mean(y.argmax(1) == ref.argmax(1))),
            "cosine": float(np.sum(y * ref) / np.linalg.norm(y) / np.linalg.norm(ref)),
        }
        for n, y in outputs.items()
        if n != "fp32"
    }
    census = {
        n: ort_cpu_kernels(Path(p), Path(args["dir"]) / f"{n}.optimized.onnx")
        for n, p in paths.items()
    }
    return {"latency_ms": latency, "agreement_with_fp32": agreement, "kernels": census}


def bench_model(name: str, a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from quantpipe.bench.ort_baselines import baseline_configs
    from quantpipe.engines.machine import cpu_info as machine_cpu

    fp32 = tmp / f"{name}.fp32.onnx"
    export_torchvision(fp32, name)
    common = {"fp32": str(fp32), "count": a.count, "threads": a.threads, "dir": str(tmp)}
    models = {"fp32": str(fp32), "ours": str(tmp / f"{name}.ours.onnx")}
    report: dict[str, Any] = {"ours": run_phase(phase_ours, {**common, "out": models["ours"]})}
    report["baselines"] = {}
    for config in baseline_configs(machine_cpu()):
        out = str(tmp / f"{name}.{config.name}.onnx")
        options = {
            "format": config.quant_format,
            "activation": config.activation,
            "reduce_range": config.reduce_range,
        }
        report["baselines"][config.name] = {
            "description": config.describe(),
            **run_phase(phase_baseline, {**common, **options, "out": out}),
        }
        models[config.name] = out
    reps1, reps32 = (10, 3) if a.quick else (40, 8)
    measured = run_phase(
        phase_measure, {**common, "models": models, "reps1": reps1, "reps32": reps32}
    )
    report.update(measured)
    report["ratios"] = ratios(measured["latency_ms"], list(report["baselines"]))
    return report


def ratios(latency: dict[str, dict[str, float]], baselines: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for batch, row in latency.items():
        best = min(baselines, key=lambda n: row[n])
        out[batch] = {
            "ours_vs_fp32": row["ours"] / row["fp32"],
            "best_quantize_static": best,
            "best_quantize_static_vs_fp32": row[best] / row["fp32"],
            "ours_vs_best_quantize_static": row["ours"] / row[best],
        }
    return out


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"\n{m['cpu']} ({m['cores']} cores, {' '.join(m['isa'])}), ORT {m['onnxruntime']}")
    header = f"{'model':20s} {'batch':>5s} {'FP32 ms':>8s} {'ours ms':>8s} {'ours/FP32':>9s}"
    print(header + f" {'best ORT q_s':>21s} {'ours/ORT':>8s}")
    for name, r in report["models"].items():
        for batch in ("batch1", "batch32"):
            row, ratio = r["latency_ms"][batch], r["ratios"][batch]
            best = ratio["best_quantize_static"]
            print(
                f"{name:20s} {batch[5:]:>5s} {row['fp32']:8.1f} {row['ours']:8.1f} "
                f"{ratio['ours_vs_fp32']:9.2f} {best:>13s} {row[best]:7.1f} "
                f"{ratio['ours_vs_best_quantize_static']:8.2f}"
            )
        k = r["kernels"]["ours"]
        print(f"{'':20s} ours: integer {k['integer']}; float {k['float']}; {k['conversions']}")
        print(f"{'':20s} agreement with FP32 (64 images): {r['agreement_with_fp32']['ours']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-models.json"))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--count", type=int, default=64, help="calibration images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer latency repeats")
    a = parser.parse_args()
    report: dict[str, Any] = {"config": vars(a) | {"out": str(a.out)}, "machine": cpu_info()}
    report["models"] = {}
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        for name in a.models.split(","):
            report["models"][name] = bench_model(name, a, Path(tmp))
            a.out.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive
    print_table(report)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
