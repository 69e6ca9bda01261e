"""What the stages after ptq (qat, mixed) take from a run's PTQ result, and the checks they
share: ptq's record and activation ranges, the training split, trained weights written
back into the float graph, and the agreement of a fake-quantized module with its export."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quantpipe.artifacts import CALIB_DIR, record_name
from quantpipe.calibration import import_trt_cache, load_table
from quantpipe.data.selection import Selection, select
from quantpipe.engines.onnxruntime_runner import OnnxRuntimeRunner
from quantpipe.engines.ort_session import OrtConfig
from quantpipe.errors import DataError, QuantpipeError
from quantpipe.pipeline.hashing import sha256_file
from quantpipe.pipeline.manifest import Manifest, StageRecord
from quantpipe.stages.common import DataRef
from quantpipe.stages.ptq_result import CalibrationNote, PtqResult

if TYPE_CHECKING:
    import onnx
    import torch


def ptq_record(manifest: Manifest, run_path: Path, onnx: Path, stage: str) -> StageRecord:
    """The manifest's record of `ptq` for `onnx`; a clear error naming `stage` when absent."""
    record = manifest.stages.get(record_name("ptq", onnx))
    if record is None:
        raise QuantpipeError(
            f"{stage} starts from the PTQ result of {onnx.name}, and run {run_path} has none: "
            "run `quantpipe ptq` first"
        )
    return record


def ptq_ranges(run_path: Path, onnx: Path, ptq: PtqResult) -> tuple[dict[str, float], str]:
    """ptq's kept activation ranges and a key naming them."""
    note = ptq.calibration
    if isinstance(note, CalibrationNote):
        key = note.keys[ptq.calibrator]
        table = load_table(run_path / CALIB_DIR, key, sha256_file(onnx))
        return dict(table.amax), key
    cache = Path(note.imported)
    return dict(import_trt_cache(cache)), sha256_file(cache)


def training_split(
    dataset: Any, data: DataRef, pre: Any, count: int | None, stage: str
) -> Selection:
    """The `train` split; a clear error for data that has none."""
    try:
        return select(dataset, "train", pre, data.seed, count)
    except DataError as e:
        raise QuantpipeError(
            f"{stage} needs a train split and {data.spec} has none ({e}): give data with a "
            "train pool, or a single pool that quantpipe splits"
        ) from None


def write_weights(model: onnx.ModelProto, weights: Mapping[str, np.ndarray], path: Path) -> None:
    """Save a copy of `model` whose initializers named in `weights` hold those values."""
    import onnx
    from onnx import numpy_helper

    trained = onnx.ModelProto()
    trained.CopyFrom(model)
    for init in trained.graph.initializer:
        if init.name in weights:
            init.CopyFrom(numpy_helper.from_array(weights[init.name], init.name))
    onnx.save(trained, str(path))


def top1_agreement(
    module: torch.nn.Module, onnx_path: Path, data: Selection, ort: OrtConfig
) -> float:
    """Top-1 agreement (%) of a fake-quantized torch module and its exported Q/DQ model."""
    from quantpipe.engines.torch_runner import TorchRunner

    same = total = 0
    with TorchRunner(module) as torch_runner, OnnxRuntimeRunner(onnx_path, ort) as onnx_runner:
        for x, _ in data.batches():
            a = next(iter(torch_runner.infer({"input": x}).values())).argmax(1)
            b = next(iter(onnx_runner.infer({onnx_runner.input_names[0]: x}).values())).argmax(1)
            same += int(np.sum(a == b))
            total += a.size
    return 100.0 * same / max(total, 1)
