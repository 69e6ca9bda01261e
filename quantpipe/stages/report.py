"""`report`: what a run measured, in one place: `report/report.md` (the run, model, machine
and data, then one table of every engine the bench timed: accuracy, shipped size, bits per
weight, compression, latency, throughput and speed-up; then the timing method and the
PTQ and BTC findings) and its figures `report/*.png`.

Everything comes from the run's records (bench.json, the btc and ptq records): the report
measures nothing, so it is quick and always agrees with what the stages printed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from quantpipe.artifacts import (
    BENCH_JSON,
    BTC,
    BTC_CONTAINER,
    BTC_ONNX,
    BTC_REPORT_MD,
    FP32_ONNX,
    MIXED_REPORT_MD,
    REPORT_ACCURACY_PNG,
    REPORT_BTC_LAYERS_PNG,
    REPORT_LATENCY_PNG,
    REPORT_MD,
    SERVE_BENCH_JSON,
    mixed_path,
)
from quantpipe.errors import QuantpipeError
from quantpipe.evaluate.evaluate import Score
from quantpipe.pipeline.manifest import StageRecord
from quantpipe.pipeline.results import JsonResult
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageContext
from quantpipe.report import tables
from quantpipe.report.tables import BatchFigures, Row
from quantpipe.stages.bench_result import BatchTiming, BenchResult, EngineBench
from quantpipe.stages.btc_result import BtcResult
from quantpipe.stages.mixed_result import MixedResult
from quantpipe.stages.ptq_result import PtqResult
from quantpipe.stages.qat import QatResult

# The figures, beside report.md (relative links in it stay valid when the run is moved).


@dataclass(frozen=True)
class ReportConfig:
    """batch_sizes: the batch sizes whose latency and speed-up the table shows (each must
    be one the bench timed); () shows the bench's smallest and largest."""

    batch_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        bad = [b for b in self.batch_sizes if isinstance(b, bool) or b < 1]
        if bad or len(set(self.batch_sizes)) != len(self.batch_sizes):
            raise QuantpipeError(
                f"--batch-sizes {','.join(map(str, self.batch_sizes))}: give distinct positive "
                "batch sizes the bench timed, or none for its smallest and largest"
            )

    def shown(self, timed: Sequence[int]) -> tuple[int, ...]:
        """The batch sizes to show, of those the bench `timed`."""
        if not self.batch_sizes:
            return tuple(sorted({min(timed), max(timed)}))
        missing = [b for b in self.batch_sizes if b not in timed]
        if missing:
            raise QuantpipeError(
                f"--batch-sizes {','.join(map(str, missing))}: the bench timed only "
                f"{','.join(map(str, timed))}; choose among those or rerun `quantpipe bench` "
                "with them"
            )
        return tuple(sorted(self.batch_sizes))


@dataclass(frozen=True)
class ReportResult(JsonResult):
    files: list[str]  # relative to the run directory, report.md first
    rows: int  # engines in the table

    def lines(self) -> list[str]:
        plots = ", ".join(f for f in self.files if f.endswith(".png"))
        return [f"{REPORT_MD}: {self.rows} engines compared; plots: {plots}"]


@dataclass(frozen=True)
class _Sources:
    """What the report is made of, read once from the run."""

    run: RunDir
    bench: BenchResult
    rows: list[Row]
    shown: tuple[int, ...]
    btc: BtcResult | None
    plots: list[str]


@dataclass(frozen=True)
class ReportStage:
    config: ReportConfig = field(default_factory=ReportConfig)
    kind: ClassVar[str] = "report"
    name: ClassVar[str] = kind
    result_type: ClassVar[type[ReportResult]] = ReportResult

    def inputs(self, run: RunDir) -> dict[str, Path]:
        if "bench" not in run.manifest.stages:
            raise QuantpipeError(
                f"run {run.path} has no bench record to report: run `quantpipe bench` first"
            )
        files = {"bench": run.artifact(BENCH_JSON)}
        # model.fp32.onnx names the model; the PTQ models stand for the ptq records' findings.
        for role, rel in (("model", FP32_ONNX), ("btc", BTC_CONTAINER)):
            if run.artifact(rel).is_file():
                files[role] = run.artifact(rel)
        for record in _records(run, "ptq"):
            files |= {f"{record.name} {o.path}": run.artifact(o.path) for o in record.outputs}
        if run.artifact(SERVE_BENCH_JSON).is_file():
            files["serving load test"] = run.artifact(SERVE_BENCH_JSON)
        return files

    def params(self) -> dict[str, Any]:
        return {"batch_sizes": list(self.config.batch_sizes)}

    def run(self, ctx: StageContext) -> ReportResult:
        run = ctx.run
        bench = BenchResult.from_json(json.loads(run.artifact(BENCH_JSON).read_text()))
        if not bench.engines:
            raise QuantpipeError(f"{run.artifact(BENCH_JSON)} times no engine: nothing to report")
        shown = self.config.shown(bench.batch_sizes)
        btc = _btc(run)
        rows = tables.ordered([_row(e, btc) for e in bench.engines])
        plots = _plots(ctx, rows, bench, btc)
        src = _Sources(run, bench, rows, shown, btc, plots)
        text = "\n".join(line for section in SECTIONS for line in section(src))
        ctx.output(REPORT_MD).write_text(text.rstrip() + "\n")
        return ReportResult([REPORT_MD, *plots], len(rows))


def _records(run: RunDir, kind: str) -> list[StageRecord]:
    return [r for r in run.manifest.stages.values() if r.stage == kind]


def _btc(run: RunDir) -> BtcResult | None:
    record = run.manifest.stages.get(BTC)
    return None if record is None else BtcResult.from_json(record.results)


def _row(e: EngineBench, btc: BtcResult | None) -> Row:
    """One engine of the bench as the table shows it."""
    shipped, size, bits = _shipped(e, btc)
    # bench's ratio is against the FP32 engine's bytes (same backend): recover them, since
    # what BTC ships is not the engine file.
    ratio = None if e.compression_vs_fp32 is None else e.compression_vs_fp32 * e.bytes / size
    return Row(
        variant=tables.variant_of(e.kind, e.model, e.precision, e.name),
        backend=e.backend,
        kind=e.kind,
        accuracy=e.accuracy.short(),
        accuracy_pct=e.accuracy.value,
        shipped=shipped,
        shipped_bytes=size,
        bits=bits,
        ratio=ratio,
        batches={t.batch: _figures(t) for t in e.batches},
        note=_note(e),
    )


def _note(e: EngineBench) -> str:
    """What a reference or baseline is; nothing for the run's engines."""
    if e.kind == "pytorch":
        return f"{e.description}; size: its parameters in {e.precision.upper()} (not shipped)"
    return "" if e.kind == "engine" else e.description


def _shipped(e: EngineBench, btc: BtcResult | None) -> tuple[str, int, float]:
    """File, bytes and bits per weight of what is shipped: for the BTC-decoded FP32 engine
    the `model.btc` container (decoded at load time), else the engine file itself."""
    if btc is not None and e.kind == "engine" and e.model == BTC and e.precision == "fp32":
        return BTC_CONTAINER, btc.size.btc_bytes, btc.summary.b_eff
    return e.name, e.bytes, float(e.weight_bits)


def _figures(t: BatchTiming) -> BatchFigures:
    return BatchFigures(t.latency_ms.median, t.latency_ms.p99, t.samples_per_s, t.speedup_vs_fp32)


def _plots(
    ctx: StageContext, rows: list[Row], bench: BenchResult, btc: BtcResult | None
) -> list[str]:
    """Draw the figures; returns their paths relative to the run directory."""
    from quantpipe.report import plots

    score, d = bench.engines[0].accuracy, bench.data
    ylabel = f"{_metric(score)} % ({d.dataset} {d.split}, {score.samples:,} samples)"
    plots.accuracy_vs_size(rows, ylabel, ctx.output(REPORT_ACCURACY_PNG))
    plots.latency_vs_batch(rows, ctx.output(REPORT_LATENCY_PNG))
    if btc is None:
        return [REPORT_ACCURACY_PNG, REPORT_LATENCY_PNG]
    s = btc.summary
    plots.btc_layers(s.layers, s.b_eff, s.frac_high, ctx.output(REPORT_BTC_LAYERS_PNG))
    return [REPORT_ACCURACY_PNG, REPORT_LATENCY_PNG, REPORT_BTC_LAYERS_PNG]


def _metric(score: Score) -> str:
    """The metric's name as the scores print it: `top-1`, `mIoU`, `agreement`."""
    return score.short().rsplit(" ", 2)[0]


def _model_name(run: RunDir) -> str:
    from quantpipe.export.metadata import read_metadata
    from quantpipe.export.onnx_file import load_onnx

    for rel in (FP32_ONNX, BTC_ONNX):
        if run.artifact(rel).is_file():
            meta = read_metadata(load_onnx(run.artifact(rel), load_external_data=False))
            return meta.get("quantpipe.model", "unnamed model")
    return "unnamed model"


# Sections of report.md, in order: each takes the sources and returns its lines (none when
# the run has nothing for it).


def _heading(src: _Sources) -> list[str]:
    bench, record = src.bench, src.run.manifest.stages["bench"]
    score = bench.engines[0].accuracy
    truth = "" if score.truth == "labels" else f" (no labels: agreement with {score.truth})"
    return [
        f"# Report: run `{src.run.path.name}`, model {_model_name(src.run)}",
        "",
        f"- Machine: {bench.machine.describe()}",
        f"- Data: {score.data} (seed {bench.data.seed}){truth}",
        f"- Measured: {record.finished_at} by `quantpipe bench`",
        "",
    ]


def _comparison(src: _Sources) -> list[str]:
    largest = max(src.shown)
    score = src.bench.engines[0].accuracy
    return [
        "## Engines compared",
        "",
        tables.comparison_table(src.rows, src.shown, largest),
        "",
        tables.comparison_caption(_metric(score), score.data),
        "",
        *tables.note_lines(src.rows),
        "",
    ]


def _method(src: _Sources) -> list[str]:
    timed_on_device = any(t.device_ms for e in src.bench.engines for t in e.batches)
    device = f"- GPU compute alone (CUDA events) is in {BENCH_JSON} as `device_ms`."
    return [
        "## How it was timed",
        "",
        *tables.timing_method(src.bench.plan, src.bench.rounds),
        *([device] if timed_on_device else []),
        "",
    ]


def _ptq(src: _Sources) -> list[str]:
    """Per PTQ record (of the FP32 model, of the BTC model): the calibrators compared."""
    return [line for record in _records(src.run, "ptq") for line in _ptq_record(record)]


def _ptq_record(record: StageRecord) -> list[str]:
    r = PtqResult.from_json(record.results)
    source, d = Path(r.input).name, r.data_test
    why = "lowest KL divergence on val" if record.params.get("calibrator") == "auto" else "chosen"
    scores = {name: (s.val, s.val_kl, s.test) for name, s in r.per_calibrator.items()}
    return [
        f"## INT8 PTQ of `{source}` (record `{record.name}`)",
        "",
        f"Calibrator kept: **{r.calibrator}** ({why}); {source} itself: test {r.fp32.test:.2f} %.",
        "",
        tables.calibrator_table(scores, r.fp32.test, source),
        "",
        f"Accuracy (%) on {d.dataset} val and test splits; test = {d.count:,} samples.",
        "",
    ]


def _btc_section(src: _Sources) -> list[str]:
    if src.btc is None:
        return []
    return [
        "## BTC",
        "",
        *src.btc.lines(),
        "",
        f"Per-layer 8-bit block shares: see the figures below; the full BTC report is "
        f"[{BTC_REPORT_MD}](../{BTC_REPORT_MD}).",
        "",
    ]


def _qat(src: _Sources) -> list[str]:
    """Per QAT record: fine-tuned against PTQ and FP32 on the same splits."""
    lines = []
    for record in _records(src.run, "qat"):
        r = QatResult.from_json(record.results)
        lines += [f"## QAT of `{Path(r.input).name}` (record `{record.name}`)", "", *r.lines(), ""]
    return lines


def _mixed(src: _Sources) -> list[str]:
    """Per mixed record: its headline and a link to its own report (tables and figures)."""
    lines = []
    for record in _records(src.run, "mixed"):
        r = MixedResult.from_json(record.results)
        report = mixed_path(Path(r.input), MIXED_REPORT_MD)
        lines += [
            f"## Mixed precision of `{Path(r.input).name}` (record `{record.name}`)",
            "",
            *r.lines(),
            "",
            f"Sensitivity, Pareto frontier, the same-size comparison and the thesis's tables: "
            f"[{report}](../{report}).",
            "",
        ]
    return lines


def _serving(src: _Sources) -> list[str]:
    """The load test of `make bench-serve`, when it ran on this run: Triton under 1..N
    concurrent clients against the runner called in-process."""
    path = src.run.artifact(SERVE_BENCH_JSON)
    if not path.is_file():
        return []
    load = json.loads(path.read_text())
    lines = [
        "## Serving (Triton, load test)",
        "",
        f"{load['server']}; {load['batch']} image(s) per request, {load['seconds_per_level']:g} s "
        f"per level, loopback; CPU: {load['cpu']} ({SERVE_BENCH_JSON}).",
        "",
        "| model | clients | requests/s | images/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in load["engines"]:
        for x in [*e["levels"], {"clients": "in-process", **e["in_process"], "errors": 0}]:
            lines.append(
                f"| {e['model']} | {x['clients']} | {x['requests_per_s']:.1f} | "
                f"{x['images_per_s']:.1f} | {x['p50_ms']:.2f} | {x['p95_ms']:.2f} | "
                f"{x['p99_ms']:.2f} | {x['errors']} |"
            )
    lines += ["", "In-process: the same runner called from one thread on the same batches.", ""]
    return lines


def _figures_section(src: _Sources) -> list[str]:
    """The figures, linked relative to report.md (they sit beside it)."""
    return ["## Figures", "", *tables.figure_links([Path(p).name for p in src.plots])]


SECTIONS: tuple[Callable[[_Sources], list[str]], ...] = (
    _heading, _comparison, _method, _ptq, _btc_section, _qat, _mixed, _serving,
    _figures_section,
)  # fmt: skip
