"""`ptq`: INT8 post-training quantization → an explicitly quantized (Q/DQ) ONNX model.

Every requested calibrator's table is computed from one statistics pass (or read from
the cache); `--calibrator auto` quantizes with each, keeps the one whose outputs on the
`val` split are closest to the input model's (KL divergence), and reports all of them
on the disjoint `test` split.

Two artifacts: the portable INT8 Q/DQ model (what TensorRT builds from; ONNX Runtime runs
it too, partly in float) and its ONNX Runtime CPU build (same scales, UINT8 after Relus,
see quantpipe.quantize.ort_cpu), which is what a CPU host should serve.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx

from quantpipe.calibration import CALIBRATORS, CalibrationTable
from quantpipe.data.selection import Selection, select
from quantpipe.engines.onnxruntime_runner import OnnxRuntimeRunner, OrtConfig
from quantpipe.errors import QuantpipeError
from quantpipe.evaluate.evaluate import EvalSetup, evaluate
from quantpipe.evaluate.fidelity import output_kl
from quantpipe.export.onnx_export import load_onnx
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageContext, StageOutcome, run_stage
from quantpipe.quantize import QDQConfig, QDQResult, quantize_qdq
from quantpipe.quantize.ort_cpu import build_for_ort_cpu, ort_cpu_kernels
from quantpipe.stages.calibrate import CalibrateConfig, calibrate, imported_table
from quantpipe.stages.common import DataRef, ModelRef, stage_inputs
from quantpipe.stages.evaluate import ModelContract, artifact_label, model_contract
from quantpipe.stages.model_accuracy import headline_value


@dataclass(frozen=True)
class PtqConfig:
    calibrator: str = "auto"
    percentile: float = 99.99
    count: int = 1024
    exclude: tuple[str, ...] = ()
    calib_cache: str | None = None
    eval_count: int | None = None
    threads: int = 0

    def __post_init__(self) -> None:
        if self.calibrator != "auto" and self.calibrator not in CALIBRATORS:
            raise QuantpipeError(
                f"unknown --calibrator {self.calibrator!r}: use auto or {', '.join(CALIBRATORS)}"
            )
        self.calibrate_config()

    def calibrate_config(self) -> CalibrateConfig:
        names = tuple(CALIBRATORS) if self.calibrator == "auto" else (self.calibrator,)
        return CalibrateConfig(
            names, self.percentile, self.count, threads=self.threads, exclude=self.exclude
        )

    def qdq_config(self) -> QDQConfig:
        return QDQConfig(exclude=self.exclude)


def int8_name(onnx_path: Path, build: str = "qdq") -> str:
    """`model.fp32.onnx` → `model.int8.qdq.onnx`; `model.btc.onnx` → `model.btc.int8.qdq.onnx`.

    ``build="ort"`` names the ONNX Runtime CPU build (`model.int8.ort.onnx`).
    """
    label = artifact_label(onnx_path)
    return f"model.int8.{build}.onnx" if label == "fp32" else f"model.{label}.int8.{build}.onnx"


def run_ptq(
    run: RunDir, onnx_path: Path, data: DataRef, cfg: PtqConfig, force: bool, progress: bool = True
) -> StageOutcome:
    contract = model_contract(onnx_path, None)
    inputs = {**stage_inputs(ModelRef(""), None, data), "onnx": onnx_path}
    if cfg.calib_cache:
        inputs["calib_cache"] = Path(cfg.calib_cache)
    params = {**asdict(cfg), "data": data.spec, "seed": data.seed}
    params.pop("threads")
    label = artifact_label(onnx_path)
    name = "ptq" if label == "fp32" else f"ptq.{label}"

    def body(ctx: StageContext) -> dict[str, Any]:
        dataset = data.open()
        pre = contract.preprocessing
        val = select(dataset, "val", pre, data.seed, cfg.eval_count)
        test = select(dataset, "test", pre, data.seed, cfg.eval_count)
        tables, calib_note = _tables(
            run, onnx_path, select(dataset, "calib", pre, data.seed, cfg.count), cfg, progress
        )
        source = load_onnx(onnx_path)
        with tempfile.TemporaryDirectory(dir=run.path) as tmp:
            scored = _score_all(source, tables, cfg, Path(tmp), (val, test), contract, onnx_path)
            best = min(scored, key=lambda k: scored[k]["val_kl"])
            result = _quantize(source, tables[best], cfg)
        quantized = result.model
        out = ctx.output(int8_name(onnx_path))
        onnx.save(quantized, str(out))
        ort_out = ctx.output(int8_name(onnx_path, "ort"))
        ort_cpu = _ort_cpu_build(quantized, ort_out, test, contract, cfg.threads)
        float_run = OrtConfig(threads=cfg.threads)
        fp32 = {s.split: _accuracy(onnx_path, s, contract, float_run) for s in (val, test)}
        return {
            "input": str(onnx_path),
            "calibrator": best,
            "per_calibrator": scored,
            "fp32": fp32,
            "calibration": calib_note,
            "float_nodes": [asdict(f) for f in result.float_nodes],
            "qdq": _structure(quantized),
            "ort_cpu": ort_cpu | {"portable_kernels": _kernels(out)},
            "size": {"int8_bytes": out.stat().st_size, "input_bytes": onnx_path.stat().st_size},
            "data_val": val.provenance(),
            "data_test": test.provenance(),
        }

    return run_stage(run, name, inputs, params, body, force)


def _tables(
    run: RunDir, onnx_path: Path, calib: Selection, cfg: PtqConfig, progress: bool
) -> tuple[dict[str, CalibrationTable], dict[str, Any]]:
    if cfg.calib_cache:
        table = imported_table(Path(cfg.calib_cache), onnx_path, cfg.calibrate_config())
        return {"imported": table}, {"imported": cfg.calib_cache}
    result = calibrate(run.path, onnx_path, calib, cfg.calibrate_config(), progress)
    note = {
        "reused": result.reused,
        "computed": result.computed,
        "keys": {k: t.key for k, t in result.tables.items()},
        "data": calib.provenance(),
    }
    return result.tables, note


def _score_all(
    source: onnx.ModelProto,
    tables: dict[str, CalibrationTable],
    cfg: PtqConfig,
    tmp: Path,
    splits: tuple[Selection, Selection],
    contract: ModelContract,
    reference: Path,
) -> dict[str, dict[str, float]]:
    """Per calibrator: val and test accuracy, and the val KL divergence from the input
    model's outputs, by which `auto` chooses (see evaluate/fidelity.py for why).

    The Q/DQ models run in exact Q/DQ arithmetic (ONNX Runtime's fusions off): what
    TensorRT computes, free of the CPU kernels' saturation (see quantize/ort_cpu.py)."""
    scored = {}
    exact = OrtConfig(threads=cfg.threads, qdq_fusions=False)
    for name, table in tables.items():
        path = tmp / f"{name}.onnx"
        onnx.save(_quantize(source, table, cfg).model, str(path))
        scored[name] = {s.split: _accuracy(path, s, contract, exact) for s in splits}
        with OnnxRuntimeRunner(reference, exact) as ref, OnnxRuntimeRunner(path, exact) as cand:
            scored[name]["val_kl"] = output_kl(ref, cand, splits[0])
    return scored


def _quantize(source: onnx.ModelProto, table: CalibrationTable, cfg: PtqConfig) -> QDQResult:
    result = quantize_qdq(source, table.amax, cfg.qdq_config())
    model = result.model
    _set_meta(
        model,
        {p.key: p.value for p in source.metadata_props}
        | {"quantpipe.precision": "int8-qdq", "quantpipe.calibrator": table.calibrator},
    )
    return result


def _ort_cpu_build(
    quantized: onnx.ModelProto, out: Path, test: Selection, contract: ModelContract, threads: int
) -> dict[str, Any]:
    """Write the ONNX Runtime CPU build of ``quantized``; its test accuracy and kernels."""
    build = build_for_ort_cpu(quantized)
    meta = {p.key: p.value for p in quantized.metadata_props}
    _set_meta(build.model, meta | {"quantpipe.runtime": "onnxruntime-cpu"})
    onnx.save(build.model, str(out))
    return {
        "test": _accuracy(out, test, contract, OrtConfig(threads=threads)),
        "uint8_tensors": len(build.uint8_tensors),
        "merged_quantize": build.merged_quantize,
        "seven_bit_weights": len(build.seven_bit_weights),
        "kernels": _kernels(out),
        "bytes": out.stat().st_size,
    }


def _kernels(path: Path) -> dict[str, dict[str, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        return ort_cpu_kernels(path, Path(tmp) / "optimized.onnx")


def _set_meta(model: onnx.ModelProto, meta: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in meta.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value


def _accuracy(path: Path, data: Selection, contract: ModelContract, ort: OrtConfig) -> float:
    setup = EvalSetup(contract.task, contract.num_classes, progress=False)
    with OnnxRuntimeRunner(path, ort) as runner:
        return headline_value(evaluate(runner, data, setup))


def _structure(model: onnx.ModelProto) -> dict[str, Any]:
    ops = Counter(n.op_type for n in model.graph.node)
    return {
        "quantize_linear": ops["QuantizeLinear"],
        "dequantize_linear": ops["DequantizeLinear"],
        "ops": dict(sorted(ops.items())),
    }
