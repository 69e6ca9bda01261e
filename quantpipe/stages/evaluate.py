"""`eval`: accuracy of an ONNX model (ONNX Runtime) or of the PyTorch model, on a split."""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from quantpipe.data.selection import select
from quantpipe.engines.base import RunnerContext
from quantpipe.engines.onnxruntime_runner import OnnxRuntimeRunner, OrtConfig
from quantpipe.engines.torch_runner import TorchRunner
from quantpipe.errors import QuantpipeError
from quantpipe.evaluate.evaluate import EvalSetup, evaluate
from quantpipe.export.onnx_export import load_onnx, read_metadata
from quantpipe.models.registry import build_model
from quantpipe.models.spec import Preprocessing
from quantpipe.pipeline.atomic import atomic_path
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageContext, StageOutcome, run_stage
from quantpipe.stages.common import FP32_ONNX, DataRef, ModelRef, resolve_weights, stage_inputs

BACKENDS = ("onnxruntime-cpu", "onnxruntime-cuda", "torch-cpu", "torch-cuda")


@dataclass(frozen=True)
class EvalConfig:
    backend: str = "onnxruntime-cpu"
    split: str = "test"
    count: int | None = None
    batch_size: int = 256
    threads: int = 0
    # For data without labels: the model whose arg-max counts as the truth (agreement).
    # Default: the run's model.fp32.onnx.
    reference: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise QuantpipeError(
                f"unknown --backend {self.backend!r}: use one of {', '.join(BACKENDS)}"
            )
        if self.batch_size < 1:
            raise QuantpipeError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class ModelContract:
    """What evaluation needs to know about a model, from ONNX metadata or the registry."""

    preprocessing: Preprocessing
    task: str
    num_classes: int


def artifact_label(onnx_path: Path | None) -> str:
    """`model.fp32.onnx` → `fp32`; PyTorch itself → `pytorch`."""
    if onnx_path is None:
        return "pytorch"
    name = onnx_path.name.removesuffix(".onnx")
    return name.removeprefix("model.") if name != "model" else "model"


def run_eval(
    run: RunDir,
    onnx_path: Path | None,
    model: ModelRef | None,
    data: DataRef,
    cfg: EvalConfig,
    force: bool,
    progress: bool = True,
) -> StageOutcome:
    """Evaluate an ONNX file (ONNX Runtime backends) or the PyTorch model (torch backends)."""
    on_torch = cfg.backend.startswith("torch")
    if on_torch and model is None:
        raise QuantpipeError(f"--backend {cfg.backend} evaluates the PyTorch model: pass --model")
    if not on_torch and (onnx_path is None or not onnx_path.is_file()):
        raise QuantpipeError(
            f"ONNX model not found: {onnx_path} (run `quantpipe export` first or pass --onnx FILE)"
        )
    weights = resolve_weights(run, model.spec(), model.weights) if on_torch and model else None
    inputs = stage_inputs(model or ModelRef(""), weights, data)
    contract = model_contract(onnx_path if not on_torch else None, model)
    label = f"{artifact_label(None if on_torch else onnx_path)}.{cfg.backend}"
    if onnx_path is not None and not on_torch:
        inputs["onnx"] = onnx_path
    if cfg.reference:
        inputs["reference"] = Path(cfg.reference)
    params = {
        **asdict(cfg),
        "data": data.spec,
        "seed": data.seed,
        "preprocessing": contract.preprocessing.to_dict(),
    }
    params.pop("threads")

    def body(ctx: StageContext) -> dict[str, Any]:
        selection = select(data.open(), cfg.split, contract.preprocessing, data.seed, cfg.count)
        runner = _runner(cfg, onnx_path, model, weights)
        setup = EvalSetup(contract.task, contract.num_classes, cfg.batch_size, progress)
        reference = None if selection.labels is not None else _reference(run, cfg)
        with runner, contextlib.ExitStack() as stack:
            if reference is not None:
                stack.enter_context(reference)
            result = evaluate(runner, selection, setup, reference)  # type: ignore[arg-type]
        result["provenance"] = selection.provenance()
        with atomic_path(ctx.output(f"eval/{label}.json")) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n")
        return result

    return run_stage(run, f"eval.{label}", inputs, params, body, force)


def _reference(run: RunDir, cfg: EvalConfig) -> OnnxRuntimeRunner:
    path = Path(cfg.reference) if cfg.reference else run.artifact(FP32_ONNX)
    if not path.is_file():
        raise QuantpipeError(
            f"the data has no labels, so accuracy is agreement with a reference model, and "
            f"{path} does not exist: pass --reference FP32.onnx"
        )
    return OnnxRuntimeRunner(path, OrtConfig(threads=cfg.threads))


def _runner(
    cfg: EvalConfig, onnx_path: Path | None, model: ModelRef | None, weights: str | None
) -> RunnerContext:
    device = cfg.backend.split("-", 1)[1]
    if cfg.backend.startswith("torch"):
        assert model is not None  # checked by run_eval
        return TorchRunner(build_model(model.spec(), weights), device, cfg.threads)
    return OnnxRuntimeRunner(onnx_path, OrtConfig(device, cfg.threads))  # type: ignore[arg-type]


def model_contract(onnx_path: Path | None, model: ModelRef | None) -> ModelContract:
    """Preprocessing, task and class count: from the ONNX metadata, else the registry."""
    if onnx_path is not None:
        meta = read_metadata(load_onnx(onnx_path))
        if "quantpipe.preprocessing" in meta:
            return ModelContract(
                Preprocessing.from_dict(json.loads(meta["quantpipe.preprocessing"])),
                meta.get("quantpipe.task", "classification"),
                int(meta.get("quantpipe.num_classes", "0")),
            )
    if model is None:
        raise QuantpipeError(
            f"{onnx_path} carries no quantpipe preprocessing metadata: pass "
            "--model NAME so its preprocessing is known"
        )
    spec = model.spec()
    return ModelContract(spec.preprocessing, spec.task, spec.num_classes)
