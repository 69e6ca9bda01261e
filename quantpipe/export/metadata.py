"""What `export` records in an ONNX file for its consumers, and reading it back.

Every later stage, and a serving host without torch, learns a model's preprocessing, task
and class count from these metadata_props, so this module imports onnx only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantpipe import __version__
from quantpipe.errors import QuantpipeError
from quantpipe.export.onnx_file import load_onnx
from quantpipe.models.spec import ModelSpec, Preprocessing

PREPROCESSING_KEY = "quantpipe.preprocessing"
DEPLOY_FORM_KEY = "quantpipe.deploy_form"


@dataclass(frozen=True)
class ModelContract:
    """What evaluation needs to know about a model, from ONNX metadata or the registry."""

    preprocessing: Preprocessing
    task: str
    num_classes: int
    deploy_form: str = ""  # e.g. RepVGG's fused form: what the graph is, when not train-time

    @staticmethod
    def of_spec(spec: ModelSpec) -> ModelContract:
        return ModelContract(spec.preprocessing, spec.task, spec.num_classes, spec.deploy_form)


def set_metadata(proto: Any, spec: ModelSpec) -> None:
    """Record what a downstream consumer needs to feed the model correctly."""
    meta = {
        "quantpipe.version": __version__,
        "quantpipe.model": spec.name,
        "quantpipe.task": spec.task,
        "quantpipe.num_classes": str(spec.num_classes),
        "quantpipe.input_shape": json.dumps(list(spec.input_shape)),
        PREPROCESSING_KEY: json.dumps(spec.preprocessing.to_dict()),
    }
    if spec.deploy_form:  # the graph is not the train-time architecture: say which form
        meta[DEPLOY_FORM_KEY] = spec.deploy_form
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in meta.items():
        prop = existing.get(key) or proto.metadata_props.add()
        prop.key, prop.value = key, value
    proto.producer_name = "quantpipe"
    proto.producer_version = __version__


def read_metadata(proto: Any) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def contract_from_onnx(path: Path) -> ModelContract | None:
    """The contract recorded in an ONNX file by `export`; None if it has none."""
    meta = read_metadata(load_onnx(path, load_external_data=False))
    if PREPROCESSING_KEY not in meta:
        return None
    return ModelContract(
        Preprocessing.from_dict(json.loads(meta[PREPROCESSING_KEY])),
        meta.get("quantpipe.task", "classification"),
        int(meta.get("quantpipe.num_classes", "0")),
        meta.get(DEPLOY_FORM_KEY, ""),
    )


def require_contract(path: Path) -> ModelContract:
    """The contract recorded in `path`; a user error when the file has none."""
    contract = contract_from_onnx(path)
    if contract is None:
        raise no_contract(path)
    return contract


def no_contract(path: Path | None) -> QuantpipeError:
    return QuantpipeError(
        f"{path} carries no quantpipe preprocessing metadata: export it with "
        "`quantpipe export`, or pass --model NAME so its preprocessing is known"
    )
