"""The qat stage's working parts: the job, everything a training process needs (every rank
builds it), the training with checkpoints, and rank 0's export and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from quantpipe.artifacts import int8_file, qat_file
from quantpipe.data.selection import Selection, select
from quantpipe.engines.ort_session import OrtConfig
from quantpipe.engines.torch_runner import set_torch_threads
from quantpipe.evaluate.evaluate import SplitScores
from quantpipe.export.metadata import ModelContract, require_contract
from quantpipe.export.onnx_file import load_onnx
from quantpipe.pipeline.hashing import sha256_file, sha256_json
from quantpipe.pipeline.manifest import Manifest
from quantpipe.pipeline.stage import StageContext
from quantpipe.qat.config import QatTraining
from quantpipe.qat.distributed import World
from quantpipe.qat.graph_module import OnnxGraphModule, QuantSpec
from quantpipe.qat.train import Trainer, TrainState, load_checkpoint, save_checkpoint
from quantpipe.quantize import QDQConfig, plan_qdq
from quantpipe.stages.common import DataRef, LabelSource
from quantpipe.stages.from_ptq import (
    ptq_ranges,
    ptq_record,
    top1_agreement,
    training_split,
    write_weights,
)
from quantpipe.stages.ptq_result import OrtCpuBuild, PtqResult
from quantpipe.stages.ptq_scoring import Quantizer, accuracy, ort_cpu_build


@dataclass(frozen=True)
class QatJob:
    """What a training process needs to know, on every rank."""

    onnx: Path
    data: DataRef
    training: QatTraining
    eval_count: int | None
    labels: LabelSource
    resume: bool
    world: World
    checkpoint: Path
    identity: dict[str, Any]  # what a checkpoint must match, besides the model and ranges


@dataclass
class Session:
    model: Any  # the float ONNX model ptq quantized
    ptq: PtqResult
    exclude: tuple[str, ...]
    amax: dict[str, float]
    ranges_key: str
    module: OnnxGraphModule
    contract: ModelContract
    train: Selection
    val: Selection
    test: Selection


@dataclass(frozen=True)
class Exported:
    fp32: SplitScores
    ptq: SplitScores
    qat: SplitScores
    ort_cpu: OrtCpuBuild
    agreement: float


def prepare(job: QatJob, run_path: Path, threads: int) -> Session:
    """The model with fake quantization at ptq's points and ranges, and the data. Reads the
    manifest file: a rank other than 0 holds no lock on the run."""
    set_torch_threads(threads)
    record = ptq_record(Manifest.load(run_path), run_path, job.onnx, "qat")
    ptq, exclude = PtqResult.from_json(record.results), tuple(record.params.get("exclude", ()))
    amax, key = ptq_ranges(run_path, job.onnx, ptq)
    model = load_onnx(job.onnx)
    plan = plan_qdq(model, QDQConfig(exclude=exclude))
    spec = QuantSpec(plan, amax, learn_ranges=job.training.learn_ranges)
    module = OnnxGraphModule(model, spec)
    contract = require_contract(job.onnx)
    dataset, pre, seed = job.data.open(), contract.preprocessing, job.data.seed
    splits = (
        training_split(dataset, job.data, pre, job.training.train_count, "QAT"),
        select(dataset, "val", pre, seed, job.eval_count),
        select(dataset, "test", pre, seed, job.eval_count),
    )
    train, val, test = (job.labels.label(s, run_path, threads) for s in splits)
    return Session(model, ptq, exclude, amax, key, module, contract, train, val, test)


def train(job: QatJob, s: Session, progress: bool) -> tuple[int, TrainState, str]:
    """Fine-tune (resuming from the checkpoint when asked); (the epoch it started from, the
    final state, the device it trained on)."""
    task, classes = s.contract.task, s.contract.num_classes
    trainer = Trainer(s.module, job.training, task, classes, job.world)
    fingerprint = sha256_json(
        {"model": sha256_file(job.onnx), "ranges": s.ranges_key, **job.identity}
    )
    state = load_checkpoint(job.checkpoint, fingerprint, trainer) if job.resume else TrainState()
    start = state.epoch
    save = partial(save_checkpoint, job.checkpoint, fingerprint)
    return start, trainer.fit(s.train, s.val, state, save, progress), str(trainer.device)


def export(job: QatJob, s: Session, ctx: StageContext, tmp: Path) -> Exported:
    """Write the trained weights into the float model, quantize it as ptq did, and measure
    it beside FP32 and PTQ on the same splits."""
    float_path = tmp / "trained.fp32.onnx"
    write_weights(s.model, s.module.float_weights(), float_path)
    quantizer = Quantizer(float_path, QDQConfig(exclude=s.exclude))
    # The learned ranges where QAT has them; the calibrated ones for the tensors only the
    # CPU build quantizes.
    ranges = {**s.amax, **s.module.activation_ranges()}
    quantized = quantizer.quantize(ranges, s.ptq.calibrator)
    out = ctx.output(qat_file(job.onnx))
    quantized.save(out)
    ort_out = ctx.output(qat_file(job.onnx, "ort"))
    ort_cpu = ort_cpu_build(
        quantizer, quantized, ort_out, out, s.test, s.contract, ctx.threads, ctx.run.path
    )
    exact = OrtConfig(threads=ctx.threads, qdq_fusions=False)
    ptq_model = ctx.run.artifact(int8_file(job.onnx))

    def scores(path: Path) -> SplitScores:
        return SplitScores(*(accuracy(path, sel, s.contract, exact) for sel in (s.val, s.test)))

    agreement = top1_agreement(s.module, out, s.test, exact)
    return Exported(scores(job.onnx), scores(ptq_model), scores(out), ort_cpu, agreement)
