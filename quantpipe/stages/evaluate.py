"""`eval`: accuracy of a model through any backend of the registry, on a split.

ONNX backends run an ONNX file (default: the run's `model.fp32.onnx`); PyTorch backends
run the model built from --model/--weights. Data without labels is scored as agreement
with the FP32 model (the run's own, or --reference).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from quantpipe.artifacts import eval_file, onnx_label
from quantpipe.data.selection import DataInfo, select
from quantpipe.engines.backend import Backend, RunnerOptions
from quantpipe.engines.base import RunnerContext
from quantpipe.engines.registry import DEFAULT_BACKEND, get_backend
from quantpipe.errors import QuantpipeError
from quantpipe.evaluate.evaluate import EvalSetup, Score, evaluate
from quantpipe.export.metadata import ModelContract, contract_from_onnx, no_contract
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageContext
from quantpipe.stages.common import DataRef, LabelSource, ModelRef


@dataclass(frozen=True)
class EvalConfig:
    backend: str = DEFAULT_BACKEND
    split: str = "test"
    count: int | None = None
    batch_size: int | None = None  # None: the selection's default_batch_size

    def __post_init__(self) -> None:
        get_backend(self.backend)  # an unknown name is refused here, naming the known ones
        if self.batch_size is not None and self.batch_size < 1:
            raise QuantpipeError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class EvalResult(Score):
    """The score, what was evaluated (artifact label, backend) and exactly on what data."""

    artifact: str = ""
    backend: str = ""
    provenance: DataInfo | None = None

    def lines(self) -> list[str]:
        return [self.headline()]


@dataclass(frozen=True)
class EvalStage:
    """Evaluate `onnx` (ONNX backends) or the PyTorch `model` (PyTorch backends)."""

    data: DataRef
    onnx: Path | None = None
    model: ModelRef | None = None
    config: EvalConfig = field(default_factory=EvalConfig)
    labels: LabelSource = field(default_factory=LabelSource)
    kind: ClassVar[str] = "eval"
    result_type: ClassVar[type[EvalResult]] = EvalResult

    def __post_init__(self) -> None:
        runs = self.backend.runs
        if runs == "torch" and self.model is None:
            raise QuantpipeError(
                f"--backend {self.backend.name} evaluates the PyTorch model: pass --model"
            )
        if runs == "onnx" and (self.onnx is None or not self.onnx.is_file()):
            raise QuantpipeError(
                f"ONNX model not found: {self.onnx} (run `quantpipe export` first or pass "
                "--onnx FILE)"
            )
        if runs == "engine":
            raise QuantpipeError(
                f"--backend {self.backend.name} runs engine files, which `eval` does not take: "
                "evaluate the ONNX model with an ONNX Runtime backend"
            )

    @property
    def backend(self) -> Backend:
        return get_backend(self.config.backend)

    @property
    def artifact(self) -> str:
        return onnx_label(None if self.backend.runs == "torch" else self.onnx)

    @property
    def name(self) -> str:
        return f"eval.{self.artifact}.{self.config.backend}"

    def contract(self) -> ModelContract:
        """Preprocessing, task and class count: from the ONNX metadata, else the registry."""
        onnx = self.onnx if self.backend.runs == "onnx" else None
        recorded = contract_from_onnx(onnx) if onnx else None
        if recorded is not None:
            return recorded
        if self.model is None:
            raise no_contract(self.onnx)
        return ModelContract.of_spec(self.model.spec)

    def inputs(self, run: RunDir) -> dict[str, Path]:
        inputs = {**self.data.inputs(), **self.labels.inputs(run.path, self.data)}
        if self.backend.runs == "torch" and self.model is not None:
            inputs |= self.model.inputs(self.model.resolve_weights(run))
        if self.backend.runs == "onnx" and self.onnx is not None:
            inputs["onnx"] = self.onnx
        return inputs

    def params(self) -> dict[str, Any]:
        return {
            "backend": self.config.backend,
            "split": self.config.split,
            "count": self.config.count,
            "batch_size": self.config.batch_size,
            "reference": self.labels.given,
            **self.data.params(),
            "preprocessing": self.contract().preprocessing.to_dict(),
        }

    def run(self, ctx: StageContext) -> EvalResult:
        contract, cfg = self.contract(), self.config
        selection = select(
            self.data.open(), cfg.split, contract.preprocessing, self.data.seed, cfg.count
        )
        selection = self.labels.label(selection, ctx.run.path, ctx.threads)
        setup = EvalSetup(contract.task, contract.num_classes, cfg.batch_size, ctx.progress)
        with self._runner(ctx) as runner:
            score = evaluate(runner, selection, setup)
        result = EvalResult(
            **vars(score),
            artifact=self.artifact,
            backend=cfg.backend,
            provenance=selection.info(),
        )
        out = ctx.output(eval_file(self.artifact, cfg.backend))
        out.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        return result

    def _runner(self, ctx: StageContext) -> RunnerContext:
        options = RunnerOptions(threads=ctx.threads)
        if self.backend.runs == "torch" and self.model is not None:
            return self.backend.runner(self.model.build(ctx.run), options)
        return self.backend.runner(self.onnx, options)
