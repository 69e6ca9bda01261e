"""`bench`: every engine of the run (and, with --ort-baselines, ONNX Runtime's own INT8 models;
on a CUDA host, the PyTorch model in FP32/FP16, eager and CUDA graphs) timed the way trtexec
times, at every batch size, with its accuracy measured through the same runner; written to
`bench/bench.json`.

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

from quantpipe.artifacts import BENCH_JSON, FP32_ONNX
from quantpipe.bench.entries import Entry, baseline_entry, engine_entry, torch_cuda_entries
from quantpipe.bench.timing import TimingPlan, merge, time_inference
from quantpipe.data.selection import Selection, select
from quantpipe.engines.backend import RunnerOptions
from quantpipe.engines.machine import cpu_info, gpu_info
from quantpipe.engines.metadata import check_batch, installed_runtime_version
from quantpipe.engines.registry import get_backend
from quantpipe.errors import QuantpipeError
from quantpipe.evaluate.evaluate import EvalSetup, evaluate
from quantpipe.export.metadata import ModelContract, require_contract
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageContext
from quantpipe.progress import track
from quantpipe.stages.bench_result import (
    BatchTiming,
    BenchResult,
    EngineBench,
    Machine,
    with_ratios,
)
from quantpipe.stages.common import DataRef, LabelSource, ModelRef
from quantpipe.stages.engines import EnginesResult

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


@dataclass(frozen=True)
class BenchStage:
    """`model`, when given and a CUDA GPU is here, adds the PyTorch model's GPU variants."""

    data: DataRef
    config: BenchConfig = field(default_factory=BenchConfig)
    labels: LabelSource = field(default_factory=LabelSource)
    model: ModelRef | None = None
    kind: ClassVar[str] = "bench"
    name: ClassVar[str] = kind
    result_type: ClassVar[type[BenchResult]] = BenchResult

    def inputs(self, run: RunDir) -> dict[str, Path]:
        files = {f"engine {p.name}": p for p in _engine_files(run)}
        files |= {f"metadata {p.name}": p.with_suffix(".json") for p in _engine_files(run)}
        if self.config.ort_baselines:
            files["fp32"] = run.artifact(FP32_ONNX)
        if self._torch_cuda() and self.model is not None:
            files |= self.model.inputs(self.model.resolve_weights(run))
        return {**files, **self.data.inputs(), **self.labels.inputs(run.path, self.data)}

    def params(self) -> dict[str, Any]:
        gpu = gpu_info()
        return {
            **vars(self.config),
            **self.data.params(),
            "reference": self.labels.given,
            "model": None if self.model is None else self.model.name,
            # Speed belongs to the machine: another host measures anew.
            "machine": cpu_info().describe() if gpu is None else gpu.describe(),
        }

    def run(self, ctx: StageContext) -> BenchResult:
        threads = ctx.threads or cpu_info().cores
        options = RunnerOptions(threads=threads, spinning=False)
        entries = [engine_entry(p, options) for p in _engine_files(ctx.run)]
        for entry in entries:  # refused before anything is timed
            for batch in self.config.batch_sizes:
                check_batch(Path(entry.name), entry.meta, batch)  # type: ignore[arg-type]
        contract = require_contract(_contract_source(ctx.run))
        dataset = self.data.open()
        test = select(dataset, self.config.split, contract.preprocessing, self.data.seed)
        test = self.labels.label(test.head(self.config.count or len(test)), ctx.run.path, threads)
        entries += self._extra_entries(ctx, dataset, contract, options)
        benches = self._measure(entries, test, contract, ctx)
        result = BenchResult(
            _machine(threads),
            self.config.plan(),
            list(self.config.batch_sizes),
            test.info(),
            with_ratios(benches),
            self.config.rounds,
        )
        ctx.output(BENCH_JSON).write_text(json.dumps(result.to_json(), indent=2) + "\n")
        return result

    def _extra_entries(
        self, ctx: StageContext, dataset: Any, contract: ModelContract, options: RunnerOptions
    ) -> list[Entry]:
        extra = []
        if self.config.ort_baselines:
            extra += self._baselines(ctx, dataset, contract, options)
        if self._torch_cuda() and self.model is not None:
            extra += torch_cuda_entries(self.model.build(ctx.run), options)
        return extra

    def _measure(
        self, entries: list[Entry], test: Selection, contract: ModelContract, ctx: StageContext
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

    def _time_batch(self, entries: list[Entry], test: Selection, batch: int) -> None:
        """Every entry at `batch`, in interleaved rounds."""
        x = _batch_of(test, batch)
        full, rounds = self.config.plan(), self.config.rounds
        for r in range(rounds):
            warmup = full.warmup_s if r == 0 else 0.0
            plan = TimingPlan(warmup, full.min_seconds / rounds, -(-full.min_iterations // rounds))
            for e in entries:
                infer = functools.partial(e.runner.infer, {e.runner.input_names[0]: x})
                e.timings.setdefault(batch, []).append(
                    time_inference(infer, plan, e.device_seconds())
                )

    def _baselines(
        self, ctx: StageContext, dataset: Any, contract: ModelContract, options: RunnerOptions
    ) -> list[Entry]:
        from quantpipe.bench.ort_baselines import baseline_configs, build_baseline

        fp32 = ctx.run.artifact(FP32_ONNX)
        if not fp32.is_file():
            raise QuantpipeError(
                f"--ort-baselines quantizes {fp32}, which does not exist: run `quantpipe export`"
            )
        calib = select(dataset, "calib", contract.preprocessing, self.data.seed, BASELINE_CALIB)
        entries = []
        for config in baseline_configs(cpu_info()):
            out = ctx.output(f"bench/baselines/{config.name}.onnx")
            build_baseline(fp32, out, config, calib)
            entries.append(baseline_entry(out, f"{config.name}.onnx", config.describe(), options))
        return entries

    def _torch_cuda(self) -> bool:
        return get_backend("torch-cuda").probe().available


def _engine_files(run: RunDir) -> list[Path]:
    """The engines the run's `engines` stage built, in its order."""
    record = run.manifest.stages.get("engines")
    if record is None:
        raise QuantpipeError(f"run {run.path} has no engines: run `quantpipe engines` first")
    built = EnginesResult.from_json(record.results).engines
    return [run.artifact(e.file) for e in built]


def _contract_source(run: RunDir) -> Path:
    """Where the preprocessing is recorded: the FP32 model, else the first engine."""
    fp32 = run.artifact(FP32_ONNX)
    return fp32 if fp32.is_file() else _engine_files(run)[0]


def _batch_of(test: Selection, batch: int) -> Any:
    """`batch` real samples of the split (repeated when the split is smaller)."""
    import numpy as np

    x, _ = next(test.batches(batch))
    return np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))


def _bench(entry: Entry, test: Selection, setup: EvalSetup) -> EngineBench:
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
        bytes=entry.bytes,
        weight_bits=entry.weight_bits,
        accuracy=score,
        batches=[BatchTiming.of(size, merge(t)) for size, t in sorted(entry.timings.items())],
    )


def _machine(threads: int) -> Machine:
    runtimes = {r: v for r in ("onnxruntime", "tensorrt") if (v := installed_runtime_version(r))}
    return Machine(cpu_info(), gpu_info(), threads, runtimes)
