"""`qat`: quantization-aware fine-tuning from the PTQ result of the same run.

The float model `ptq` quantized runs as a torch module (quantpipe/qat/graph_module.py) with
fake quantization at exactly the Q/DQ points and ranges of `ptq`'s kept calibration, is
fine-tuned with straight-through gradients on the `train` split, and its trained weights go
back into the same ONNX graph, which `quantize_qdq` turns into `model.qat.qdq.onnx`: the
same graph shape as `model.int8.qdq.onnx`, plus its ONNX Runtime CPU build. Under torchrun
every process trains on its share of each batch; rank 0 alone writes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from quantpipe.artifacts import (
    INT8_BUILDS,
    QAT_DIR,
    onnx_label,
    qat_file,
    qat_label,
    record_name,
)
from quantpipe.data.selection import DataInfo
from quantpipe.evaluate.evaluate import SplitScores
from quantpipe.pipeline.results import JsonResult
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageContext
from quantpipe.qat.config import EpochRecord, QatTraining
from quantpipe.qat.distributed import World
from quantpipe.stages.common import DataRef, LabelSource
from quantpipe.stages.from_ptq import ptq_record
from quantpipe.stages.ptq_result import OrtCpuBuild

if TYPE_CHECKING:
    from quantpipe.stages.qat_session import QatJob


@dataclass(frozen=True)
class QatConfig:
    training: QatTraining = field(default_factory=QatTraining)
    eval_count: int | None = None

    @staticmethod
    def from_flags(eval_count: int | None = None, **training: Any) -> QatConfig:
        """From a run config's [qat] keys: QatTraining's fields and `eval_count`."""
        return QatConfig(QatTraining(**training), eval_count)


@dataclass(frozen=True)
class QatResult(JsonResult):
    input: str
    calibrator: str
    epochs: list[EpochRecord]
    resumed_from_epoch: int
    processes: int
    fp32: SplitScores
    ptq: SplitScores
    qat: SplitScores
    ort_cpu: OrtCpuBuild
    torch_onnx_agreement: float  # top-1 agreement, fake-quant module vs exported ONNX, test
    train_samples: int
    kept_epoch: int  # the epoch whose weights were exported; 0: ptq's starting point
    data_test: DataInfo
    truth: str = "labels"
    device: str = "cpu"  # where it trained (per process: cuda:LOCAL_RANK under torchrun)

    def artifact_bits(self) -> dict[str, str]:
        """Weight bits of the QAT artifacts, by label (for the run summary)."""
        source = onnx_label(Path(self.input))
        return {qat_label(source, build): "8 (QAT)" for build in INT8_BUILDS}

    def lines(self) -> list[str]:
        last = self.epochs[-1] if self.epochs else None
        n = len(self.epochs)
        trained = f"{n} epoch{'s' * (n != 1)}" + (f", last loss {last.loss:.4f}" if last else "")
        kept = (
            f"kept epoch {self.kept_epoch}"
            if self.kept_epoch
            else "no epoch beat ptq's starting point on val, which is kept"
        )
        d = self.data_test
        return [
            f"QAT ({trained}, {kept}, {self.processes} process(es) on {self.device}): "
            f"test {self.qat.test:.2f} % vs PTQ {self.ptq.test:.2f} % vs FP32 "
            f"{self.fp32.test:.2f} % ({d.count:,} samples of {d.dataset} {d.split}); "
            f"ONNX Runtime CPU build {self.ort_cpu.test:.2f} %",
            f"the exported Q/DQ model agrees with the fake-quantized training graph on "
            f"{self.torch_onnx_agreement:.2f} % of test (top-1)",
        ]


@dataclass(frozen=True)
class QatStage:
    onnx: Path
    data: DataRef
    config: QatConfig = field(default_factory=QatConfig)
    labels: LabelSource = field(default_factory=LabelSource)
    resume: bool = False
    world: World = field(default_factory=World)
    kind: ClassVar[str] = "qat"
    result_type: ClassVar[type[QatResult]] = QatResult

    @property
    def name(self) -> str:
        return record_name(self.kind, self.onnx)

    def inputs(self, run: RunDir) -> dict[str, Path]:
        files = {"onnx": self.onnx, **self.data.inputs(), **self.labels.inputs(run.path, self.data)}
        record = ptq_record(run.manifest, run.path, self.onnx, "qat")
        return files | {f"ptq {o.path}": run.artifact(o.path) for o in record.outputs}

    def params(self) -> dict[str, Any]:
        return {**asdict(self.config), **self.data.params(), "reference": self.labels.given}

    def job(self, run_path: Path) -> QatJob:
        from quantpipe.stages import qat_session

        checkpoint = run_path / QAT_DIR / f"{self.name}.checkpoint.pt"
        identity = {**self.params(), "out": qat_file(self.onnx)}
        return qat_session.QatJob(
            self.onnx, self.data, self.config.training, self.config.eval_count, self.labels,
            self.resume, self.world, checkpoint, identity,
        )  # fmt: skip

    def run(self, ctx: StageContext) -> QatResult:
        from quantpipe.stages import qat_session

        job = self.job(ctx.run.path)
        session = qat_session.prepare(job, ctx.run.path, ctx.threads)
        start, trained, device = qat_session.train(job, session, ctx.progress)
        with ctx.scratch_dir() as tmp:
            exported = qat_session.export(job, session, ctx, Path(tmp))
        return QatResult(
            input=str(self.onnx),
            calibrator=session.ptq.calibrator,
            epochs=trained.history,
            resumed_from_epoch=start,
            processes=self.world.size,
            device=device,
            fp32=exported.fp32,
            ptq=exported.ptq,
            qat=exported.qat,
            ort_cpu=exported.ort_cpu,
            torch_onnx_agreement=exported.agreement,
            train_samples=len(session.train),
            kept_epoch=trained.best_epoch,
            data_test=session.test.info(),
            truth=session.test.truth,
        )
