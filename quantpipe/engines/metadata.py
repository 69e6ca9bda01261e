"""The JSON beside every engine file, and the checks made before an engine is run.

`engines/<model>.<backend>.<precision>.{onnx,plan}` comes with `<same name>.json`: what
built it (runtime and version), for which machine (CPU model and instruction sets, or GPU
name and compute capability), in which precision, its inputs, outputs and batch profile,
the source ONNX's sha256, the build options and time. `load_engine` refuses, with one
line, an engine whose file does not match its recorded sha256, one built by another
TensorRT version, or one built for another GPU: TensorRT plans are specific to both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantpipe.engines.backend import BatchProfile, outside_profile
from quantpipe.engines.machine import CpuInfo, GpuInfo, gpu_info
from quantpipe.errors import CorruptArtifactError, QuantpipeError, shown
from quantpipe.pipeline.hashing import sha256_file
from quantpipe.pipeline.results import JsonResult

FORMAT = 1
# Runtimes whose engine files only run where they were built (same version, same GPU).
MACHINE_SPECIFIC = ("tensorrt",)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: list[int | str]  # str: a named free dimension such as "batch"


@dataclass(frozen=True)
class EngineMeta(JsonResult):
    """Everything the JSON beside an engine records (see the module doc)."""

    engine: str
    sha256: str
    bytes: int
    backend: str
    runtime: str
    runtime_version: str
    precision: str
    model: str  # the run's model it was built from: fp32, btc, ...
    source: str
    source_sha256: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    profile: BatchProfile
    cpu: CpuInfo
    gpu: GpuInfo | None
    build_options: dict[str, Any]
    build_seconds: float
    built_at: str
    quantpipe: str
    format: int = FORMAT

    def admits(self, batch: int) -> bool:
        return self.profile.admits(batch)


def meta_path(engine: Path) -> Path:
    """`engines/fp32.tensorrt.int8.plan` → `engines/fp32.tensorrt.int8.json`."""
    return engine.with_suffix(".json")


def load_engine(engine: Path, *, on_this_host: bool = True) -> EngineMeta:
    """The metadata of `engine`, after checking the file and (`on_this_host`: to run it
    here, not to package it for another host) this host match it."""
    if not engine.is_file():
        raise QuantpipeError(f"engine not found: {engine} (build it with `quantpipe engines`)")
    path = meta_path(engine)
    if not path.is_file():
        raise QuantpipeError(
            f"engine {engine} has no metadata beside it ({path.name}): build engines with "
            "`quantpipe engines`, which writes both"
        )
    meta = read_meta(path)
    _check_file(engine, meta)
    if on_this_host and meta.runtime in MACHINE_SPECIFIC:
        _check_host(engine, meta)
    return meta


def read_meta(path: Path) -> EngineMeta:
    """The metadata in the JSON file `path` (no checks against the engine); any damage is
    one CorruptArtifactError naming the file."""
    rebuild = "rebuild the engine with `quantpipe engines --force`"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:  # valid JSON nested deeper than Python's recursion limit
        raise CorruptArtifactError(
            f"{path} is not valid engine metadata (JSON nested too deeply); {rebuild}"
        ) from None
    except ValueError as e:  # bad UTF-8, bad JSON, an integer past Python's digit limit
        raise CorruptArtifactError(
            f"{path} is not valid engine metadata ({e}); {rebuild}"
        ) from None
    try:
        return EngineMeta.from_json(data)
    except QuantpipeError as e:  # from_json's, or a field's own check (BatchProfile's):
        # neither knows the file
        raise CorruptArtifactError(f"{path} is not valid engine metadata: {e}") from None


def _check_file(engine: Path, meta: EngineMeta) -> None:
    if engine.stat().st_size != meta.bytes or sha256_file(engine) != meta.sha256:
        raise CorruptArtifactError(
            f"engine {engine} does not match its metadata (size or sha256 differ): it was "
            "changed or damaged after it was built; rebuild it with `quantpipe engines --force`"
        )


def _check_host(engine: Path, meta: EngineMeta) -> None:
    installed = installed_runtime_version(meta.runtime)
    if installed != meta.runtime_version:
        raise QuantpipeError(
            f"engine {engine} was built by {shown(meta.runtime)} {shown(meta.runtime_version)}"
            f", and this host has {installed or 'none'}: TensorRT engines run only on the "
            "version that built them; rebuild it here with `quantpipe engines --force`"
        )
    here = gpu_info()
    if meta.gpu is not None and (here is None or here != meta.gpu):
        raise QuantpipeError(
            f"engine {engine} was built for {shown(meta.gpu.describe())}, and this host has "
            f"{here.describe() if here else 'no GPU'}: rebuild it here with "
            "`quantpipe engines --force`"
        )


def installed_runtime_version(runtime: str) -> str | None:
    """The version of `runtime` importable here (None when it is not)."""
    import importlib

    try:
        return str(importlib.import_module(runtime).__version__)
    except Exception:  # missing or broken: either way not the version that built it
        return None


def check_batch(engine: Path, meta: EngineMeta, batch: int) -> None:
    if not meta.admits(batch):
        raise outside_profile(engine.name, batch, meta.profile.min, meta.profile.max)


def onnx_io(model: Any) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Inputs and outputs of an ONNX model (initializers excluded), with dtype and shape."""
    import onnx

    initializers = {i.name for i in model.graph.initializer}

    def describe(values: Any) -> list[TensorInfo]:
        infos = []
        for v in values:
            if v.name in initializers:
                continue
            t = v.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
            shape: list[int | str] = [d.dim_param or d.dim_value for d in t.shape.dim]
            infos.append(TensorInfo(v.name, dtype, shape))
        return infos

    return describe(model.graph.input), describe(model.graph.output)
