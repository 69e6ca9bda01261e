"""`engines`: every model of a run built for every backend that builds engines here.

For each float model of the run (FP32, BTC-decoded) and precision (FP32; FP16, from an
FP16 ONNX made here and checked against FP32 in ONNX Runtime; INT8, from the run's Q/DQ
model or its ONNX Runtime CPU build, per backend) the backend's builder writes
`engines/<model>.<backend>.<precision>.{onnx,plan}` and the stage writes the JSON beside
it (engines/metadata.py). Backends that cannot build here are listed with the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from quantpipe import __version__
from quantpipe.artifacts import (
    BTC_ONNX,
    ENGINES_DIR,
    FP32,
    FP32_ONNX,
    engine_file,
    fp16_file,
    int8_file,
    mp_file,
    onnx_label,
    qat_file,
)
from quantpipe.engines.backend import Backend, BatchProfile, BuildJob
from quantpipe.engines.fp16 import Fp16Check
from quantpipe.engines.machine import cpu_info, gpu_info
from quantpipe.engines.metadata import EngineMeta, meta_path, onnx_io
from quantpipe.engines.registry import all_backends, get_backend
from quantpipe.errors import QuantpipeError
from quantpipe.pipeline.hashing import sha256_file
from quantpipe.pipeline.results import JsonResult
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageContext
from quantpipe.stages.common import DataRef

PRECISIONS = ("fp32", "fp16", "int8")
FP16_CHECK_SAMPLES = 256


@dataclass(frozen=True)
class EnginesConfig:
    """backends: () builds for every backend that can build here; precisions as listed.
    The batch profile spans the batch sizes; opt (what TensorRT tunes for) is the largest,
    i.e. throughput under batching."""

    backends: tuple[str, ...] = ()
    precisions: tuple[str, ...] = PRECISIONS
    batch_sizes: tuple[int, ...] = (1, 8, 32, 128)
    workspace_mib: int = 4096

    def __post_init__(self) -> None:
        for name in self.backends:
            if get_backend(name).builder is None:
                raise QuantpipeError(f"--backends {name}: this backend builds no engine files")
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown or not self.precisions:
            raise QuantpipeError(f"--precisions {unknown}: use some of {', '.join(PRECISIONS)}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise QuantpipeError(f"--batch-sizes must be positive, got {self.batch_sizes}")
        if self.workspace_mib < 1:
            raise QuantpipeError(f"--workspace-mib must be positive, got {self.workspace_mib}")

    @property
    def profile(self) -> BatchProfile:
        return BatchProfile(min(self.batch_sizes), max(self.batch_sizes), max(self.batch_sizes))


@dataclass(frozen=True)
class BuiltEngine:
    file: str
    backend: str
    model: str
    precision: str
    bytes: int
    build_seconds: float


@dataclass(frozen=True)
class NotBuilt:
    what: str
    reason: str


@dataclass(frozen=True)
class EnginesResult(JsonResult):
    engines: list[BuiltEngine]
    not_built: list[NotBuilt]
    fp16_checks: dict[str, Fp16Check] = field(default_factory=dict)  # by model label

    def lines(self) -> list[str]:
        lines = [
            f"{e.file}: {e.backend}, {e.precision}, {e.bytes / 1024:.1f} KiB, "
            f"built in {e.build_seconds:.1f} s"
            for e in self.engines
        ]
        for label, c in self.fp16_checks.items():
            lines.append(
                f"FP16 {label} vs FP32 in ONNX Runtime: top-1 agreement "
                f"{c.top1_agreement:.2f} %, max relative difference {c.max_rel_diff:.2e} "
                f"({c.samples:,} samples)"
            )
        lines += [f"not built: {n.what}: {n.reason}" for n in self.not_built]
        return lines


@dataclass(frozen=True)
class EnginesStage:
    data: DataRef | None = None  # samples for the FP16 check (random inputs without)
    config: EnginesConfig = field(default_factory=EnginesConfig)
    kind: ClassVar[str] = "engines"
    name: ClassVar[str] = kind
    result_type: ClassVar[type[EnginesResult]] = EnginesResult

    def inputs(self, run: RunDir) -> dict[str, Path]:
        sources = {s.name: s for s in _float_models(run)}
        if not sources:
            raise QuantpipeError(
                f"run {run.path} has no model to build engines from: run `quantpipe export` first"
            )
        for backend in self._backends()[0]:
            for source in list(sources.values()):
                int8 = run.artifact(int8_file(source, backend.int8_build))
                if int8.is_file():
                    sources[int8.name] = int8
            sources |= {p.name: p for p in _tuned_int8(run, backend).values()}
        return {**sources, **(self.data.inputs() if self.data else {})}

    def params(self) -> dict[str, Any]:
        gpu = gpu_info()
        return {
            "backends": list(self.config.backends),
            "precisions": list(self.config.precisions),
            "batch_sizes": list(self.config.batch_sizes),
            "workspace_mib": self.config.workspace_mib,
            # TensorRT engines belong to a GPU: another host builds them anew.
            "gpu": None if gpu is None else gpu.describe(),
            **(self.data.params() if self.data else {"data": None, "seed": None}),
        }

    def run(self, ctx: StageContext) -> EnginesResult:
        backends, not_built = self._backends()
        built: list[BuiltEngine] = []
        checks: dict[str, Fp16Check] = {}
        for source in _float_models(ctx.run):
            fp16 = self._fp16(ctx, source, checks)
            for backend in backends:
                variants = self._variants(ctx.run, source, fp16, backend, not_built)
                for precision, model_file in variants.items():
                    built.append(self._build(ctx, backend, source, precision, model_file))
        if "int8" in self.config.precisions:
            for backend in backends:
                for label, model_file in _tuned_int8(ctx.run, backend).items():
                    built.append(self._build(ctx, backend, model_file, "int8", model_file, label))
        return EnginesResult(built, not_built, checks)

    def _backends(self) -> tuple[list[Backend], list[NotBuilt]]:
        """The backends to build for, and those skipped with why."""
        if self.config.backends:
            chosen = [get_backend(n) for n in self.config.backends]
            for b in chosen:
                b.require_available()  # asked for by name: not building is an error
            return chosen, []
        usable, skipped = [], []
        for b in (b for b in all_backends() if b.builder is not None):
            availability = b.probe()
            if availability.available:
                usable.append(b)
            else:
                skipped.append(NotBuilt(b.name, availability.detail))
        return usable, skipped

    def _variants(
        self, run: RunDir, source: Path, fp16: Path | None, backend: Backend, notes: list[NotBuilt]
    ) -> dict[str, Path]:
        """For one float model and backend: the ONNX file each precision is built from."""
        wanted = self.config.precisions
        files = {"fp32": source} if "fp32" in wanted else {}
        if fp16 is not None:
            files["fp16"] = fp16
        int8 = run.artifact(int8_file(source, backend.int8_build))
        if "int8" in wanted and int8.is_file():
            files["int8"] = int8
        elif "int8" in wanted:
            what = f"{onnx_label(source)}.{backend.name}.int8"
            notes.append(NotBuilt(what, f"no {int8.name} in the run: run `quantpipe ptq` first"))
        return files

    def _fp16(self, ctx: StageContext, source: Path, checks: dict[str, Fp16Check]) -> Path | None:
        """The FP16 ONNX of the FP32 model (a run artifact), checked against FP32; None
        when FP16 is not wanted or `source` is not the FP32 model."""
        if "fp16" not in self.config.precisions or onnx_label(source) != FP32:
            return None
        import onnx

        from quantpipe.engines.fp16 import check_fp16, to_fp16
        from quantpipe.export.onnx_file import load_onnx

        out = ctx.output(fp16_file(source))
        onnx.save(to_fp16(load_onnx(source), source=source), str(out))
        checks[FP32] = check_fp16(source, out, _check_batches(source, self.data), ctx.threads)
        return out

    def _build(
        self,
        ctx: StageContext,
        backend: Backend,
        source: Path,
        precision: str,
        model_file: Path,
        model: str | None = None,
    ) -> BuiltEngine:
        """`model`: the engine's model label, when not the source's (`qat`, `mp`)."""
        model = model or onnx_label(source)
        rel = engine_file(model, backend.name, precision, backend.engine_suffix)
        out = ctx.output(rel)
        cache = ctx.run.path / ENGINES_DIR / "cache"
        profile, workspace = self.config.profile, self.config.workspace_mib
        job = BuildJob(model_file, out, precision, profile, workspace, cache)  # type: ignore[arg-type]
        start = time.perf_counter()
        info = backend.build(job)
        seconds = time.perf_counter() - start
        meta = _metadata(rel, out, backend, model, precision, model_file, job, info, seconds)
        ctx.output(str(meta_path(Path(rel)))).write_text(_json(meta.to_json()))
        return BuiltEngine(rel, backend.name, model, precision, meta.bytes, seconds)


def _metadata(
    rel: str,
    out: Path,
    backend: Backend,
    model: str,
    precision: str,
    model_file: Path,
    job: BuildJob,
    info: Any,
    seconds: float,
) -> EngineMeta:
    from quantpipe.export.onnx_file import load_onnx

    inputs, outputs = onnx_io(load_onnx(model_file, load_external_data=False))
    return EngineMeta(
        engine=Path(rel).name,
        sha256=sha256_file(out),
        bytes=out.stat().st_size,
        backend=backend.name,
        runtime=info.runtime,
        runtime_version=info.runtime_version,
        precision=precision,
        model=model,
        source=model_file.name,
        source_sha256=sha256_file(model_file),
        inputs=inputs,
        outputs=outputs,
        profile=job.profile,
        cpu=cpu_info(),
        gpu=gpu_info() if info.runtime == "tensorrt" else None,
        build_options=info.options,
        build_seconds=round(seconds, 3),
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        quantpipe=__version__,
    )


def _json(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data, indent=2) + "\n"


def _tuned_int8(run: RunDir, backend: Backend) -> dict[str, Path]:
    """The INT8 models of the FP32 model that qat and mixed wrote for this backend's
    build (portable Q/DQ or ONNX Runtime CPU), by engine model label."""
    fp32 = run.artifact(FP32_ONNX)
    files = {
        "qat": run.artifact(qat_file(fp32, backend.int8_build)),
        "mp": run.artifact(mp_file(fp32, backend.int8_build)),
    }
    return {label: path for label, path in files.items() if path.is_file()}


def _float_models(run: RunDir) -> list[Path]:
    return [p for p in (run.artifact(FP32_ONNX), run.artifact(BTC_ONNX)) if p.is_file()]


def _check_batches(source: Path, data: DataRef | None) -> list[Any]:
    """Samples for the FP16 check: the val split of the data, else seeded random inputs."""
    import numpy as np

    from quantpipe.data.selection import select
    from quantpipe.export.metadata import require_contract

    pre = require_contract(source).preprocessing
    if data is None:
        rng = np.random.default_rng(0)
        shape = (32, pre.channels, *pre.size)
        return [rng.standard_normal(shape, dtype=np.float32) for _ in range(2)]
    selection = select(data.open(), "val", pre, data.seed, FP16_CHECK_SAMPLES)
    return [x for x, _ in selection.batches(64)]
