"""`calibrate`: activation ranges of an ONNX model on the `calib` split, one table per
calibrator, cached in `calib/<key>.json` + `calib/<key>.trtcache`.

The key covers the model's sha256, the calibrator and its parameters, and the data's
provenance (source, split, count, seed, preprocessing): a table is reused only for the
same model and data, and the reuse is reported. Tables are written (atomically) as soon
as they are computed, so a later failure of `ptq` does not throw calibration away; the
`calibrate` stage records them as its outputs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from quantpipe.artifacts import CALIB_DIR, record_name
from quantpipe.calibration import (
    CALIBRATORS,
    CalibrationTable,
    CalibratorConfig,
    CollectConfig,
    cache_key,
    collect_statistics,
    compute_all,
    import_trt_cache,
    load_table,
    make_config,
    make_table,
    table_paths,
    write_table,
)
from quantpipe.calibration.collect import check_histogram_stride
from quantpipe.data.selection import DataInfo, Selection, select
from quantpipe.errors import DataError, QuantpipeError
from quantpipe.export.metadata import require_contract
from quantpipe.export.onnx_file import load_onnx
from quantpipe.pipeline.hashing import sha256_file
from quantpipe.pipeline.results import JsonResult
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageContext
from quantpipe.quantize import QDQConfig, plan_qdq
from quantpipe.quantize.ort_cpu_plan import plan_ort_cpu
from quantpipe.stages.common import DataRef

MIN_RECOMMENDED_SAMPLES = 32
# Which tensors a table holds: the portable plan's and the ONNX Runtime CPU build's.
CALIBRATED_TENSORS = "portable+ort-cpu"
CALIBRATOR_NAMES = tuple(CALIBRATORS)


@dataclass(frozen=True)
class CalibrateConfig:
    calibrators: tuple[str, ...] = CALIBRATOR_NAMES
    percentile: float = 99.99
    count: int = 1024
    batch_size: int = 32
    exclude: tuple[str, ...] = ()
    # Histograms bin every n-th row and column of spatial tensors (CollectConfig); 1: all.
    histogram_stride: int = 2

    def __post_init__(self) -> None:
        unknown = [c for c in self.calibrators if c not in CALIBRATORS]
        if unknown or not self.calibrators:
            raise QuantpipeError(f"unknown calibrator(s) {unknown}: use {', '.join(CALIBRATORS)}")
        if self.count < 1:
            raise QuantpipeError(f"--calib-count must be at least 1, got {self.count}")
        check_histogram_stride(self.histogram_stride, "--histogram-stride")
        self.configs()  # validates the percentile

    def configs(self) -> list[CalibratorConfig]:
        return [_config(name, self.percentile) for name in self.calibrators]


@dataclass
class CalibrationTables:
    tables: dict[str, CalibrationTable]
    reused: list[str] = field(default_factory=list)
    computed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TableNote:
    """One calibrator's table: its cache key, how many tensors, reused or computed."""

    key: str
    tensors: int
    reused: bool


@dataclass(frozen=True)
class CalibrateResult(JsonResult):
    tables: dict[str, TableNote]
    data: DataInfo

    def lines(self) -> list[str]:
        return [
            f"{name}: {'reused cached table' if t.reused else 'computed'} "
            f"{CALIB_DIR}/{t.key}.json (+ .trtcache), {t.tensors} tensors"
            for name, t in self.tables.items()
        ]


@dataclass(frozen=True)
class CalibrateStage:
    onnx: Path
    data: DataRef
    config: CalibrateConfig = field(default_factory=CalibrateConfig)
    kind: ClassVar[str] = "calibrate"
    result_type: ClassVar[type[CalibrateResult]] = CalibrateResult

    @property
    def name(self) -> str:
        return record_name(self.kind, self.onnx)

    def inputs(self, run: RunDir) -> dict[str, Path]:
        return {"onnx": self.onnx, **self.data.inputs()}

    def params(self) -> dict[str, Any]:
        return {**asdict(self.config), **self.data.params()}

    def run(self, ctx: StageContext) -> CalibrateResult:
        contract = require_contract(self.onnx)
        calib = select(
            self.data.open(), "calib", contract.preprocessing, self.data.seed, self.config.count
        )
        found = calibration_tables(ctx.run.path, self.onnx, calib, self.config, ctx)
        notes = {}
        for name, table in found.tables.items():
            for path in table_paths(CALIB_DIR, table.key):
                ctx.adopt(str(path))
            notes[name] = TableNote(table.key, len(table.amax), name in found.reused)
        return CalibrateResult(notes, calib.info())


def _config(name: str, percentile: float) -> CalibratorConfig:
    return make_config(name, percentile=percentile) if name == "percentile" else make_config(name)


def calibration_tables(
    run_dir: Path, onnx_path: Path, calib: Selection, cfg: CalibrateConfig, ctx: StageContext
) -> CalibrationTables:
    """Tables for every calibrator in `cfg`: from the cache where they match, else from
    one statistics pass over `calib` (shared by all missing calibrators)."""
    _warn_if_few(calib)
    model_sha = sha256_file(onnx_path)
    # The tensor set is part of the key: tables made before the CPU build's widened plan
    # lack its tensors, and are recomputed rather than reused.
    provenance = {**calib.provenance(), "tensors": CALIBRATED_TENSORS}
    if cfg.histogram_stride > 1:  # absent for every value binned, as before it existed
        provenance["histogram_stride"] = cfg.histogram_stride
    result = CalibrationTables({})
    missing = []
    for config in cfg.configs():
        key = cache_key(model_sha, config, provenance)
        if table_paths(run_dir / CALIB_DIR, key)[0].is_file():
            result.tables[config.name] = load_table(run_dir / CALIB_DIR, key, model_sha)
            result.reused.append(config.name)
        else:
            missing.append(config)
    if missing:
        amaxes = _collect(onnx_path, calib, missing, cfg, ctx)
        for config in missing:
            table = make_table(model_sha, config, provenance, amaxes[config])
            write_table(run_dir / CALIB_DIR, table)
            result.tables[config.name] = table
            result.computed.append(config.name)
    return result


def _collect(
    onnx_path: Path,
    calib: Selection,
    configs: list[CalibratorConfig],
    cfg: CalibrateConfig,
    ctx: StageContext,
) -> dict[CalibratorConfig, dict[str, float]]:
    model = load_onnx(onnx_path)
    tensors = plan_ort_cpu(model, QDQConfig(exclude=cfg.exclude)).calibration_tensors
    input_name = model.graph.input[0].name
    stats = collect_statistics(
        model,
        _feeds(calib, input_name, cfg.batch_size),
        tensors,
        CollectConfig(
            threads=ctx.threads, progress=ctx.progress, histogram_stride=cfg.histogram_stride
        ),
    )
    return {c: dict(a) for c, a in compute_all(stats, configs).items()}


def _feeds(calib: Selection, input_name: str, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    for x, _ in calib.batches(batch_size):
        yield {input_name: x}


def _warn_if_few(calib: Selection) -> None:
    if len(calib) < MIN_RECOMMENDED_SAMPLES:
        print(
            f"quantpipe: warning: only {len(calib)} calibration samples (fewer than "
            f"{MIN_RECOMMENDED_SAMPLES}); ranges will be noisy",
            file=sys.stderr,
        )


def imported_table(path: Path, onnx_path: Path, cfg: CalibrateConfig) -> CalibrationTable:
    """A TensorRT calibration cache from an earlier pipeline, checked against the model."""
    if not path.is_file():
        raise DataError(f"calibration cache not found: {path} (from --calib-cache)")
    amax = import_trt_cache(path)
    model, qdq_config = load_onnx(onnx_path), QDQConfig(exclude=cfg.exclude)
    tensors = plan_qdq(model, qdq_config).calibration_tensors
    missing = [t for t in tensors if t not in amax]
    if missing:
        raise QuantpipeError(
            f"calibration cache {path} has no range for {len(missing)} tensor(s) of {onnx_path} "
            f"(e.g. {', '.join(missing[:3])}): it was made for another model"
        )
    config = make_config("max")
    provenance: dict[str, Any] = {"imported_trt_cache": str(path), "sha256": sha256_file(path)}
    # Tensors only the CPU build quantizes are kept where the cache has them (else float).
    wanted = plan_ort_cpu(model, qdq_config)
    kept = {t: amax[t] for t in wanted.calibration_tensors if t in amax}
    return make_table(sha256_file(onnx_path), config, provenance, kept)
