"""`mixed`: sensitivity-based mixed precision (the thesis's Algorithms 1 and 2), verified.

From the PTQ result of the run (its Q/DQ placement and kept activation ranges): measure
each Conv/Gemm layer's sensitivity on a calib batch, build the Pareto frontier of bit
allocations, take the thesis's least-cost point within the budget (or, with --max-drop, the
smallest within D points on val), measure it at equal sizes against S/P, uniform and random
allocations, deliver the best measured on val within the budget (--pick measured, the
default) or the thesis's point (--pick proxy), optionally fine-tune it (QAT at its widths),
and export `model.mp.qdq.onnx`, its ONNX Runtime CPU build and its weights packed
at their widths (`model.mp.qpmix`), with `mixed/report.md` and its plots.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from quantpipe.artifacts import (
    BTC,
    MIXED_PARETO_JSON,
    MIXED_PARETO_PNG,
    MIXED_SENSITIVITY_JSON,
    MIXED_SENSITIVITY_PNG,
    int8_file,
    mixed_path,
    onnx_file,
    qat_file,
    record_name,
)
from quantpipe.engines.ort_session import OrtConfig
from quantpipe.evaluate.evaluate import SplitScores
from quantpipe.mixed import sensitivity as sens
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageContext
from quantpipe.stages import mixed_export, mixed_select
from quantpipe.stages.common import DataRef, LabelSource
from quantpipe.stages.from_ptq import ptq_record
from quantpipe.stages.mixed_result import MixedResult, ReferencePoint
from quantpipe.stages.mixed_session import Evaluator, MixedConfig, Session, prepare
from quantpipe.stages.ptq_scoring import accuracy


@dataclass(frozen=True)
class MixedStage:
    onnx: Path
    data: DataRef
    config: MixedConfig = field(default_factory=MixedConfig)
    labels: LabelSource = field(default_factory=LabelSource)
    kind: ClassVar[str] = "mixed"
    result_type: ClassVar[type[MixedResult]] = MixedResult

    @property
    def name(self) -> str:
        return record_name(self.kind, self.onnx)

    def inputs(self, run: RunDir) -> dict[str, Path]:
        files = {"onnx": self.onnx, **self.data.inputs(), **self.labels.inputs(run.path, self.data)}
        record = ptq_record(run.manifest, run.path, self.onnx, "mixed")
        files |= {f"ptq {o.path}": run.artifact(o.path) for o in record.outputs}
        # The report sets the run's QAT and BTC models beside the mixed ones, when they exist.
        others = {"qat": qat_file(self.onnx), "btc": onnx_file(BTC)}
        files |= {k: run.artifact(f) for k, f in others.items() if run.artifact(f).is_file()}
        return files

    def params(self) -> dict[str, Any]:
        return {**asdict(self.config), **self.data.params(), "reference": self.labels.given}

    def run(self, ctx: StageContext) -> MixedResult:
        from quantpipe.mixed.report import write_report

        s = prepare(self.onnx, self.data, self.config, self.labels, ctx.run.path, ctx.threads)
        with ctx.scratch_dir() as tmp:
            result = self._run(s, ctx, Path(tmp))
        write_report(result, s, self.onnx, ctx)
        return result

    def _run(self, s: Session, ctx: StageContext, tmp: Path) -> MixedResult:
        cfg, precision = self.config, self.config.precision()
        limit = mixed_select.budget(s, cfg)  # a budget nothing fits fails before any work
        measured, seconds = mixed_select.measure(s, cfg, ctx.progress)
        self._write_sensitivity(measured, ctx)
        ranked = mixed_select.frontiers(s, measured, precision.widths)
        frontier = ranked[cfg.normalise].frontier
        self._write_pareto(ranked, ctx)
        evaluator = Evaluator(s, precision, tmp, ctx.threads)
        references = _references(s, ctx, self.onnx)
        fp32 = references[0].accuracy
        allocation, searched = mixed_select.choose(frontier, limit, cfg, fp32.val, evaluator)
        ranking = mixed_select.RANKINGS[cfg.normalise]
        proxy = evaluator.score(f"sensitivity {ranking} (proxy)", allocation.bits)
        comparisons = mixed_select.compare(s, ranked, allocation, cfg, evaluator)
        swept = mixed_select.sweep(frontier, cfg.sweep, evaluator)
        if cfg.max_drop is not None or cfg.pick == "proxy":
            chosen, picked_by = proxy, "max-drop" if cfg.max_drop is not None else "proxy"
        else:
            chosen, picked_by = mixed_select.pick_measured(proxy, comparisons, swept, limit), "val"
        bits = evaluator.bits(chosen.bits)
        module, epochs = mixed_export.fine_tune(s, bits, cfg, ctx.threads, ctx.progress)
        exported = mixed_export.export(s, module, bits, epochs, self.onnx, ctx, tmp)
        return MixedResult(
            input=str(self.onnx),
            precision=precision.name,
            widths=list(precision.widths),
            activation_bits=precision.activation_bits,
            ranking=ranking,
            picked_by=picked_by,
            calibrator=s.ptq.calibrator,
            budget_bytes=limit,
            max_drop=cfg.max_drop,
            fp32_weight_bytes=s.fp32_weight_bytes,
            layers=len(s.layers),
            frontier_points=len(frontier),
            seconds_sensitivity=seconds,
            fp32=fp32,
            references=references,
            chosen=chosen,
            proxy=proxy,
            searched=searched,
            sweep=swept,
            comparisons=comparisons,
            qat_epochs=exported.epochs,
            mp=exported.mp,
            ort_cpu=exported.ort_cpu,
            torch_onnx_agreement=exported.agreement,
            packed=exported.packed,
            data_test=s.test.info(),
            data_val=s.val.info(),
            truth=s.test.truth,
        )

    def _write_sensitivity(self, measured: list[sens.LayerSensitivity], ctx: StageContext) -> None:
        record = sens.to_json(measured, self.config.sensitivity)
        _write_json(ctx.output(mixed_path(self.onnx, MIXED_SENSITIVITY_JSON)), record)
        title = f"Layer sensitivity (thesis Alg. 1), {self.onnx.name}"
        sens.plot_sensitivity(
            measured, ctx.output(mixed_path(self.onnx, MIXED_SENSITIVITY_PNG)), title
        )

    def _write_pareto(self, ranked: dict[bool, mixed_select.Ranked], ctx: StageContext) -> None:
        from quantpipe.mixed.report import plot_pareto

        frontiers = {r.ranking: r.frontier for r in ranked.values()}
        record = {k: [asdict(a) for a in v] for k, v in frontiers.items()}
        _write_json(ctx.output(mixed_path(self.onnx, MIXED_PARETO_JSON)), record)
        plot_pareto(frontiers, ctx.output(mixed_path(self.onnx, MIXED_PARETO_PNG)))


def _write_json(path: Path, record: Any) -> None:
    path.write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")


def _references(s: Session, ctx: StageContext, onnx: Path) -> list[ReferencePoint]:
    """FP32, and the run's BTC, INT8 PTQ and QAT models where they exist, measured on the
    stage's own val and test splits."""
    exact = OrtConfig(threads=ctx.threads, qdq_fusions=False)
    params = sum(layer.params for layer in s.layers)
    candidates = [
        ("FP32", onnx, 32.0),
        ("BTC", ctx.run.artifact(onnx_file(BTC)), _btc_bits(ctx)),
        (f"INT8 PTQ ({s.ptq.calibrator})", ctx.run.artifact(int8_file(onnx)), 8.0),
        ("INT8 QAT", ctx.run.artifact(qat_file(onnx)), 8.0),
    ]
    points = []
    for name, path, bits in candidates:
        if bits is None or not path.is_file():
            continue
        scores = SplitScores(*(accuracy(path, sel, s.contract, exact) for sel in (s.val, s.test)))
        points.append(ReferencePoint(name, path.name, bits, params * bits / 8, scores))
    return points


def _btc_bits(ctx: StageContext) -> float | None:
    from quantpipe.stages.btc_result import BtcResult

    record = ctx.run.manifest.stages.get("btc")
    return None if record is None else BtcResult.from_json(record.results).summary.b_eff
