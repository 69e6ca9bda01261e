"""`ptq`: INT8 post-training quantization → an explicitly quantized (Q/DQ) ONNX model.

Every requested calibrator's table is computed from one statistics pass (or read from
the cache); `--calibrator auto` quantizes with each, keeps the one whose outputs on the
`val` split are closest to the input model's (KL divergence) unless another is more than
noise more accurate on `val` (ptq_scoring.choose), and reports all of them on the
disjoint `test` split. `--max-drop D` then keeps the fewest, most sensitive layers in
float until the val drop is within D (ptq_accuracy.py).

Two artifacts: the portable INT8 Q/DQ model (what TensorRT builds from; ONNX Runtime runs
it too, partly in float) and its ONNX Runtime CPU build (same scales, UINT8 after Relus,
see quantpipe.quantize.ort_cpu), which is what a CPU host should serve.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from quantpipe.artifacts import int8_file, record_name
from quantpipe.calibration import CALIBRATORS, CalibrationTable
from quantpipe.data.selection import Selection, select
from quantpipe.errors import QuantpipeError
from quantpipe.evaluate.evaluate import SplitScores
from quantpipe.export.metadata import ModelContract, require_contract
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageContext
from quantpipe.quantize import QDQConfig
from quantpipe.stages.calibrate import CalibrateConfig, calibration_tables, imported_table
from quantpipe.stages.common import DataRef, LabelSource
from quantpipe.stages.ptq_result import CalibrationNote, ImportedCalibration, PtqResult


@dataclass(frozen=True)
class PtqConfig:
    calibrator: str = "auto"
    percentile: float = 99.99
    count: int = 1024
    exclude: tuple[str, ...] = ()
    calib_cache: str | None = None
    eval_count: int | None = None
    max_drop: float | None = None  # keep the fewest layers float to stay within (ptq_accuracy)
    histogram_stride: int = 2  # see CalibrateConfig

    def __post_init__(self) -> None:
        if self.calibrator != "auto" and self.calibrator not in CALIBRATORS:
            raise QuantpipeError(
                f"unknown --calibrator {self.calibrator!r}: use auto or {', '.join(CALIBRATORS)}"
            )
        if self.max_drop is not None and not (0 <= self.max_drop < 100):
            raise QuantpipeError(
                f"--max-drop {self.max_drop!r}: give the largest accepted val accuracy drop in "
                "points, at least 0 and below 100 (e.g. 0.5)"
            )
        self.calibrate_config()

    def calibrate_config(self) -> CalibrateConfig:
        names = tuple(CALIBRATORS) if self.calibrator == "auto" else (self.calibrator,)
        return CalibrateConfig(
            names,
            self.percentile,
            self.count,
            exclude=self.exclude,
            histogram_stride=self.histogram_stride,
        )

    def qdq_config(self) -> QDQConfig:
        return QDQConfig(exclude=self.exclude)


@dataclass(frozen=True)
class PtqStage:
    onnx: Path
    data: DataRef
    config: PtqConfig = field(default_factory=PtqConfig)
    labels: LabelSource = field(default_factory=LabelSource)
    kind: ClassVar[str] = "ptq"
    result_type: ClassVar[type[PtqResult]] = PtqResult

    @property
    def name(self) -> str:
        return record_name(self.kind, self.onnx)

    def inputs(self, run: RunDir) -> dict[str, Path]:
        inputs = {
            **self.data.inputs(),
            **self.labels.inputs(run.path, self.data),
            "onnx": self.onnx,
        }
        if self.config.calib_cache:
            inputs["calib_cache"] = Path(self.config.calib_cache)
        return inputs

    def params(self) -> dict[str, Any]:
        return {**asdict(self.config), **self.data.params(), "reference": self.labels.given}

    def run(self, ctx: StageContext) -> PtqResult:
        from quantpipe.stages import ptq_scoring as scoring

        contract, cfg = require_contract(self.onnx), self.config
        dataset = self.data.open()
        pre = contract.preprocessing
        val, test = self.labels.val_test(dataset, pre, self.data, cfg.eval_count, ctx)
        calib = select(dataset, "calib", pre, self.data.seed, cfg.count)
        tables, calib_note = self._tables(ctx, calib)
        quantizer = scoring.Quantizer(self.onnx, cfg.qdq_config())
        fp32 = self._input_scores(val, test, contract, ctx)
        control = None
        with ctx.scratch_dir() as tmp:
            splits = (val, test)
            scored = scoring.score_all(quantizer, tables, Path(tmp), splits, contract, ctx.threads)
            best = scoring.choose(scored, len(val), contract.task)
            if cfg.max_drop is not None:
                from quantpipe.stages import ptq_accuracy

                control = ptq_accuracy.control(
                    quantizer, tables[best], cfg.max_drop, fp32.val, val, contract,
                    ctx.threads, Path(tmp),
                )  # fmt: skip
                quantizer, control = ptq_accuracy.deliver(
                    quantizer, tables[best], control, fp32.test, test, contract, ctx.threads
                )
            result = quantizer.quantize(tables[best].amax, tables[best].calibrator)
        out = ctx.output(int8_file(self.onnx))
        result.save(out)
        ort_out = ctx.output(int8_file(self.onnx, "ort"))
        ort_cpu = scoring.ort_cpu_build(
            quantizer, result, ort_out, out, test, contract, ctx.threads, ctx.run.path
        )
        return PtqResult(
            input=str(self.onnx),
            calibrator=best,
            per_calibrator=scored,
            fp32=fp32,
            calibration=calib_note,
            float_nodes=result.float_nodes,
            qdq=scoring.structure(result.model),
            ort_cpu=ort_cpu,
            size={"int8_bytes": out.stat().st_size, "input_bytes": self.onnx.stat().st_size},
            data_val=val.info(),
            data_test=test.info(),
            truth=test.truth,
            input_form=contract.deploy_form,
            accuracy_control=control,
        )

    def _tables(
        self, ctx: StageContext, calib: Selection
    ) -> tuple[dict[str, CalibrationTable], CalibrationNote | ImportedCalibration]:
        cfg = self.config
        if cfg.calib_cache:
            table = imported_table(Path(cfg.calib_cache), self.onnx, cfg.calibrate_config())
            return {"imported": table}, ImportedCalibration(cfg.calib_cache)
        found = calibration_tables(ctx.run.path, self.onnx, calib, cfg.calibrate_config(), ctx)
        keys = {k: t.key for k, t in found.tables.items()}
        note = CalibrationNote(found.reused, found.computed, keys, calib.info())
        return found.tables, note

    def _input_scores(
        self, val: Selection, test: Selection, contract: ModelContract, ctx: StageContext
    ) -> SplitScores:
        from quantpipe.engines.ort_session import OrtConfig
        from quantpipe.stages.ptq_scoring import accuracy

        ort = OrtConfig(threads=ctx.threads)
        return SplitScores(*(accuracy(self.onnx, s, contract, ort) for s in (val, test)))
