"""`bench`: every engine of the run (and, with --ort-baselines, ONNX Runtime's own INT8 models)
timed the way trtexec times, at every batch size its profile admits, with its accuracy
measured through the same runner; written to `bench/bench.json`.

Engines take turns: for each batch size every runner is loaded, then `rounds` rounds give
each engine a slice of the timed duration in turn, so that drift of a shared machine hits
all engines alike and the ratios within one batch size are fair. ONNX Runtime's idle
threads do not spin between turns (spinning slowed the next session by up to 2.6× here).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from quantpipe.artifacts import BENCH_JSON, FP32, FP32_ONNX
from quantpipe.bench.timing import TimingPlan, merge, time_inference
from quantpipe.data.selection import Selection, select
from quantpipe.engines.backend import RunnerOptions
from quantpipe.engines.machine import cpu_info, gpu_info
from quantpipe.engines.metadata import EngineMeta, check_batch, load_engine
from quantpipe.engines.registry import get_backend
from quantpipe.errors import QuantpipeError
from quantpipe.evaluate.evaluate import EvalSetup, evaluate
from quantpipe.export.metadata import require_contract
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageContext
from quantpipe.progress import track
from quantpipe.stages.bench_result import BatchTiming, BenchResult, EngineBench, Machine
from quantpipe.stages.common import DataRef, LabelSource
from quantpipe.stages.engines import EnginesResult

WEIGHT_BITS = {"fp32": 32, "fp16": 16, "int8": 8}
ACCURACY_BATCH = 256
BASELINE_CALIB = 256


@dataclass(frozen=True)
class BenchConfig:
    batch_sizes: tuple[int, ...] = (1, 8, 32, 128)
    warmup_s: float = 0.2
    min_seconds: float = 3.0
    min_iterations: int = 10
    rounds: int = 3
    split: str = "test"
    count: int | None = None
    ort_baselines: bool = False

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise QuantpipeError(f"--batch-sizes must be positive, got {self.batch_sizes}")
        if self.rounds < 1:
            raise QuantpipeError(f"--rounds must be at least 1, got {self.rounds}")
        self.plan()

    def plan(self) -> TimingPlan:
        return TimingPlan(self.warmup_s, self.min_seconds, self.min_iterations)


@dataclass
class _Entry:
    """One model being timed: its file, how to describe it, and its runner."""

    path: Path
    name: str
    kind: str
    backend: str
    model: str
    precision: str
    description: str
    meta: EngineMeta | None = None
    runner: Any = None
    timings: dict[int, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchStage:
    data: DataRef
    config: BenchConfig = field(default_factory=BenchConfig)
    labels: LabelSource = field(default_factory=LabelSource)
    kind: ClassVar[str] = "bench"
    name: ClassVar[str] = kind
    result_type: ClassVar[type[BenchResult]] = BenchResult

    def inputs(self, run: RunDir) -> dict[str, Path]:
        files = {f"engine {p.name}": p for p in _engine_files(run)}
        files |= {f"metadata {p.name}": p.with_suffix(".json") for p in _engine_files(run)}
        if self.config.ort_baselines:
            files["fp32"] = run.artifact(FP32_ONNX)
        return {**files, **self.data.inputs(), **self.labels.inputs(run, self.data)}

    def params(self) -> dict[str, Any]:
        gpu = gpu_info()
        return {
            **{k: v for k, v in vars(self.config).items()},
            **self.data.params(),
            "reference": self.labels.given,
            # Speed belongs to the machine: another host measures anew.
            "machine": cpu_info().describe() if gpu is None else gpu.describe(),
        }

    def run(self, ctx: StageContext) -> BenchResult:
        threads = ctx.threads or cpu_info().cores
        entries = [_engine_entry(p) for p in _engine_files(ctx.run)]
        for entry in entries:  # refused before anything is timed
            for batch in self.config.batch_sizes:
                check_batch(entry.path, entry.meta, batch)  # type: ignore[arg-type]
        source = ctx.run.artifact(FP32_ONNX)
        contract = require_contract(source if source.is_file() else entries[0].path)
        dataset = self.data.open()
        test = select(dataset, self.config.split, contract.preprocessing, self.data.seed)
        test = self.labels.label(test.head(self.config.count or len(test)), ctx.run, threads)
        if self.config.ort_baselines:
            entries += self._baselines(ctx, dataset, contract.preprocessing)
        options = RunnerOptions(threads=threads, spinning=False)
        for entry in entries:
            entry.runner = get_backend(entry.backend).runner(entry.path, options)
        benches = self._measure(entries, test, contract, ctx)
        result = BenchResult(
            _machine(threads), self.config.plan(), list(self.config.batch_sizes), test.info(),
            _with_ratios(benches),
        )  # fmt: skip
        ctx.output(BENCH_JSON).write_text(json.dumps(result.to_json(), indent=2) + "\n")
        return result

    def _measure(
        self, entries: list[_Entry], test: Selection, contract: Any, ctx: StageContext
    ) -> list[EngineBench]:
        for entry in entries:
            entry.runner.activate()
        try:
            for batch in track(self.config.batch_sizes, "bench", ctx.progress, unit="batch size"):
                self._time_batch(entries, test, batch)
            setup = EvalSetup(contract.task, contract.num_classes, progress=False)
            return [_bench(e, test, setup) for e in entries]
        finally:
            for entry in entries:
                entry.runner.deactivate()

    def _time_batch(self, entries: list[_Entry], test: Selection, batch: int) -> None:
        """Every engine at `batch`, in interleaved rounds."""
        x = _batch_of(test, batch)
        full = self.config.plan()
        rounds = self.config.rounds
        for r in range(rounds):
            plan = TimingPlan(
                full.warmup_s if r == 0 else 0.0,
                full.min_seconds / rounds,
                -(-full.min_iterations // rounds),
            )
            for e in entries:
                feed = {e.runner.input_names[0]: x}
                timing = time_inference(functools.partial(e.runner.infer, feed), plan)
                e.timings.setdefault(batch, []).append(timing)

    def _baselines(self, ctx: StageContext, dataset: Any, pre: Any) -> list[_Entry]:
        from quantpipe.bench.ort_baselines import baseline_configs, build_baseline

        fp32 = ctx.run.artifact(FP32_ONNX)
        if not fp32.is_file():
            raise QuantpipeError(
                f"--ort-baselines quantizes {fp32}, which does not exist: run `quantpipe export`"
            )
        calib = select(dataset, "calib", pre, self.data.seed, BASELINE_CALIB)
        entries = []
        for config in baseline_configs(cpu_info()):
            out = ctx.output(f"bench/baselines/{config.name}.onnx")
            build_baseline(fp32, out, config, calib)
            backend = "onnxruntime-cpu"
            name = f"{config.name}.onnx"
            entries.append(_Entry(out, name, "baseline", backend, FP32, "int8", config.describe()))
        return entries


def _engine_files(run: RunDir) -> list[Path]:
    """The engines the run's `engines` stage built, in its order."""
    record = run.manifest.stages.get("engines")
    if record is None:
        raise QuantpipeError(f"run {run.path} has no engines: run `quantpipe engines` first")
    built = EnginesResult.from_json(record.results).engines
    return [run.artifact(e.file) for e in built]


def _engine_entry(path: Path) -> _Entry:
    meta = load_engine(path)
    what = (
        f"{meta.model} {meta.precision} on {meta.backend} ({meta.runtime} {meta.runtime_version})"
    )
    return _Entry(path, path.name, "engine", meta.backend, meta.model, meta.precision, what, meta)


def _batch_of(test: Selection, batch: int) -> Any:
    """`batch` real samples of the split (repeated when the split is smaller)."""
    import numpy as np

    x, _ = next(test.batches(batch))
    return np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))


def _bench(entry: _Entry, test: Selection, setup: EvalSetup) -> EngineBench:
    """The entry's timings, and its accuracy through the same (active) runner."""
    batch = min(ACCURACY_BATCH, entry.meta.profile.max) if entry.meta else ACCURACY_BATCH
    score = evaluate(entry.runner, test, dataclasses.replace(setup, batch_size=batch))
    return EngineBench(
        name=entry.name,
        kind=entry.kind,
        backend=entry.backend,
        model=entry.model,
        precision=entry.precision,
        description=entry.description,
        bytes=entry.path.stat().st_size,
        weight_bits=WEIGHT_BITS[entry.precision],
        accuracy=score,
        batches=[BatchTiming.of(size, merge(t)) for size, t in sorted(entry.timings.items())],
    )


def _with_ratios(benches: list[EngineBench]) -> list[EngineBench]:
    """Speed-up and compression against the FP32 engine of the run's FP32 model on the same
    backend: what every other engine (BTC-decoded, FP16, INT8, a baseline) replaces."""
    out = []
    for e in benches:
        ref = _fp32_engine(benches, e)
        if ref is None:
            out.append(e)
            continue
        batches = [t.against(r) if (r := ref.at(t.batch)) else t for t in e.batches]
        ratio = ref.bytes / e.bytes
        out.append(dataclasses.replace(e, batches=batches, compression_vs_fp32=ratio))
    return out


def _fp32_engine(benches: list[EngineBench], e: EngineBench) -> EngineBench | None:
    same = (b for b in benches if b.kind == "engine" and b.backend == e.backend)
    return next((b for b in same if b.model == FP32 and b.precision == "fp32"), None)


def _machine(threads: int) -> Machine:
    from quantpipe.engines.metadata import installed_runtime_version

    runtimes = {r: v for r in ("onnxruntime", "tensorrt") if (v := installed_runtime_version(r))}
    return Machine(cpu_info(), gpu_info(), threads, runtimes)
