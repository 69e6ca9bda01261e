"""What several stages share: model and data references, how they resolve in a run, and
where the labels come from for data without them."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantpipe.artifacts import FP32_ONNX, TRAINED_WEIGHTS
from quantpipe.data.registry import DATASETS, Dataset, open_dataset, parse_data_spec
from quantpipe.data.selection import Selection, select
from quantpipe.engines.base import RunnerContext
from quantpipe.engines.onnxruntime_runner import OnnxRuntimeRunner
from quantpipe.engines.ort_session import OrtConfig
from quantpipe.errors import DataError, ModelError, QuantpipeError
from quantpipe.evaluate.reference import ensure_labels
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageContext

if TYPE_CHECKING:
    from torch import nn

    from quantpipe.models.spec import ModelSpec, Preprocessing


@dataclass(frozen=True)
class ModelRef:
    """A model as the user named it: registry name or file.py:factory, weights, shape."""

    name: str
    weights: str | None = None
    input_shape: tuple[int, ...] | None = None

    @cached_property
    def spec(self) -> ModelSpec:
        """Resolved once: a user model's spec imports its file and runs it once."""
        from quantpipe.models.registry import get_model_spec

        return get_model_spec(self.name, self.input_shape)

    def params(self) -> dict[str, Any]:
        """What identifies the model in a stage's parameters (its weights are an input)."""
        spec = self.spec
        return {
            "model": self.name,
            "input_shape": list(spec.input_shape),
            "preprocessing": spec.preprocessing.to_dict(),
        }

    def resolve_weights(self, run: RunDir) -> str | None:
        """The weights to use: as given, else those the run's train stage wrote."""
        spec = self.spec
        if self.weights is not None:
            from quantpipe.models.checkpoint import check_weights_argument

            return str(check_weights_argument(self.weights))
        trained = run.artifact(TRAINED_WEIGHTS)
        if spec.weights == "trained" and not trained.is_file():
            raise ModelError(
                f"model {spec.name} has no weights in {run.path}: run `quantpipe train` for "
                "this run first, or pass --weights FILE"
            )
        # Whatever `train` wrote in this run, for any model: a user's model.py trained here
        # was exported with its random initial weights before (EfficientNet-B0 at 7.65 %).
        return str(trained) if trained.is_file() else None

    def build(self, run: RunDir) -> nn.Module:
        """The model in eval mode with its weights (see `resolve_weights`)."""
        from quantpipe.models.registry import build_model

        return build_model(self.spec, self.resolve_weights(run))

    def inputs(self, weights: str | None) -> dict[str, Path]:
        """The model's files whose content decides a stage's result."""
        inputs: dict[str, Path] = {}
        if weights is not None:
            inputs["weights"] = Path(weights)
        if ".py:" in self.name:
            inputs["model_file"] = Path(self.name.rpartition(":")[0])
        return inputs


@dataclass(frozen=True)
class DataRef:
    """A data set as `NAME[:PATH]` plus the seed of its splits."""

    spec: str
    seed: int = 0

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise QuantpipeError(f"--seed must be non-negative, got {self.seed}")

    def open(self) -> Dataset:
        return open_dataset(self.spec)

    def path(self) -> Path | None:
        path = parse_data_spec(self.spec)[1]
        if path is not None and not path.exists():
            raise DataError(f"data path not found: {path} (from --data {self.spec})")
        return path

    def may_lack_labels(self) -> bool:
        return not DATASETS[parse_data_spec(self.spec)[0]].always_labelled

    def inputs(self) -> dict[str, Path]:
        path = self.path()
        return {} if path is None else {"data": path}

    def params(self) -> dict[str, Any]:
        return {"data": self.spec, "seed": self.seed}


@dataclass(frozen=True)
class LabelSource:
    """Where labels come from when the data has none: a reference ONNX model's predictions.

    `given` is the user's --reference; by default the run's own FP32 ONNX model is used.
    """

    given: str | None = None

    def path(self, run_path: Path) -> Path:
        return Path(self.given) if self.given else run_path / FP32_ONNX

    def inputs(self, run_path: Path, data: DataRef) -> dict[str, Path]:
        """The reference is an input wherever it may be used (so a new one reruns the stage)."""
        path = self.path(run_path)
        if self.given is not None and not path.is_file():
            raise QuantpipeError(
                f"reference model not found: {path} (from --reference); pass the FP32 ONNX "
                "model whose predictions stand in for labels"
            )
        may_use = self.given is not None or (data.may_lack_labels() and path.is_file())
        return {"reference": path} if may_use else {}

    def label(
        self,
        selection: Selection,
        run_path: Path,
        threads: int,
        fallback: tuple[Callable[[], RunnerContext], str] | None = None,
    ) -> Selection:
        """`selection` with labels: its own, else the reference model's predictions.

        Args:
            fallback: a reference runner factory and its name, used when there is no
                reference ONNX file (the btc stage passes its FP32 PyTorch model).
        """
        if selection.labelled:
            return selection
        path = self.path(run_path)
        if path.is_file() or fallback is None:
            self._check(path)
            return ensure_labels(selection, lambda: _onnx_runner(path, threads), _named(path))
        return ensure_labels(selection, *fallback)

    def val_test(
        self,
        dataset: Dataset,
        pre: Preprocessing,
        data: DataRef,
        count: int | None,
        ctx: StageContext,
        fallback: tuple[Callable[[], RunnerContext], str] | None = None,
    ) -> tuple[Selection, Selection]:
        """The `val` split (selection) and the `test` split (report), first `count` samples
        of each, with labels (see `label`)."""
        val, test = (
            self.label(
                select(dataset, s, pre, data.seed, count), ctx.run.path, ctx.threads, fallback
            )
            for s in ("val", "test")
        )
        return val, test

    def _check(self, path: Path) -> None:
        if not path.is_file():
            raise QuantpipeError(
                f"the data has no labels, so accuracy is agreement with a reference model, and "
                f"{path} does not exist: run `quantpipe export` first or pass --reference "
                "FP32.onnx"
            )


def _named(path: Path) -> str:
    return f"the predictions of {path.name}"


def _onnx_runner(path: Path, threads: int) -> RunnerContext:
    return OnnxRuntimeRunner(path, OrtConfig(threads=threads))


def default_run_name(model_name: str) -> str:
    """A run directory name from a model name (`dir/net.py:build` → `net-build`)."""
    base = model_name.replace(".py:", "-").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-") or "run"
