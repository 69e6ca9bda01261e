"""What several stages share: model/data references and how they resolve in a run."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantpipe.data.registry import Dataset, open_dataset, parse_data_spec
from quantpipe.errors import DataError, ModelError, QuantpipeError
from quantpipe.models.checkpoint import check_weights_argument
from quantpipe.models.registry import get_model_spec
from quantpipe.models.spec import ModelSpec
from quantpipe.pipeline.rundir import RunDir

TRAINED_WEIGHTS = "model.pt"
FP32_ONNX = "model.fp32.onnx"


@dataclass(frozen=True)
class ModelRef:
    """A model as the user named it: registry name or file.py:factory, weights, shape."""

    name: str
    weights: str | None = None
    input_shape: tuple[int, ...] | None = None

    def spec(self) -> ModelSpec:
        return get_model_spec(self.name, self.input_shape)


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


def resolve_weights(run: RunDir, spec: ModelSpec, weights: str | None) -> str | None:
    """The weights to use: as given, else those the run's train stage wrote."""
    if weights is not None:
        return str(check_weights_argument(weights))
    trained = run.artifact(TRAINED_WEIGHTS)
    if spec.weights == "trained":
        if not trained.is_file():
            raise ModelError(
                f"model {spec.name} has no weights in {run.path}: run `quantpipe train` for this "
                "run first, or pass --weights FILE"
            )
        return str(trained)
    return None


def stage_inputs(model: ModelRef, weights: str | None, data: DataRef | None) -> dict[str, Path]:
    """Files whose content decides a stage's result (fingerprinted in the manifest)."""
    inputs: dict[str, Path] = {}
    if weights is not None:
        inputs["weights"] = Path(weights)
    if ".py:" in model.name:
        inputs["model_file"] = Path(model.name.rpartition(":")[0])
    if data is not None and (path := data.path()) is not None:
        inputs["data"] = path
    return inputs


def model_params(model: ModelRef, spec: ModelSpec) -> dict[str, Any]:
    return {
        "model": model.name,
        "input_shape": list(spec.input_shape),
        "preprocessing": spec.preprocessing.to_dict(),
    }


def default_run_name(model_name: str) -> str:
    """A run directory name from a model name (`dir/net.py:build` → `net-build`)."""
    base = model_name.replace(".py:", "-").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-") or "run"
