"""The chosen allocation, optionally fine-tuned (QAT with its bit widths), exported as
`model.mp.qdq.onnx` with its ONNX Runtime CPU build and its packed weights, and checked:
the export against the fake-quantized graph, the packed file against the export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from quantpipe.artifacts import mp_file, mp_packed_file
from quantpipe.engines.ort_session import OrtConfig
from quantpipe.errors import CorruptArtifactError
from quantpipe.evaluate.evaluate import SplitScores
from quantpipe.mixed.packed_onnx import pack_qdq_weights, restore
from quantpipe.pipeline.stage import StageContext
from quantpipe.qat.config import EpochRecord
from quantpipe.qat.distributed import World
from quantpipe.qat.graph_module import OnnxGraphModule, QuantSpec
from quantpipe.qat.train import Trainer, TrainState
from quantpipe.quantize import QDQConfig
from quantpipe.quantize.bits import BitWidths
from quantpipe.stages.from_ptq import top1_agreement, write_weights
from quantpipe.stages.mixed_result import PackedSizes
from quantpipe.stages.mixed_session import MixedConfig, Session
from quantpipe.stages.ptq_result import OrtCpuBuild
from quantpipe.stages.ptq_scoring import Quantizer, accuracy, ort_cpu_build


@dataclass(frozen=True)
class Exported:
    epochs: list[EpochRecord]
    mp: SplitScores
    ort_cpu: OrtCpuBuild
    agreement: float
    packed: PackedSizes


def fine_tune(
    s: Session, bits: BitWidths, config: MixedConfig, threads: int, progress: bool
) -> tuple[OnnxGraphModule, list[EpochRecord]]:
    """The fake-quantized module at `bits`, fine-tuned when `config.qat` asks (one process;
    no checkpoints: a mixed run is short enough to rerun)."""
    learn = config.qat is not None and config.qat.learn_ranges
    module = OnnxGraphModule(s.model, QuantSpec(s.plan, s.amax, bits, learn_ranges=learn))
    if config.qat is None:
        return module, []
    trainer = Trainer(module, config.qat, s.contract.task, s.contract.num_classes, World())
    train = s.train_split(config.qat.train_count, threads)
    state = trainer.fit(train, s.val, TrainState(), lambda *_: None, progress)
    return module, state.history


def export(
    s: Session,
    module: OnnxGraphModule,
    bits: BitWidths,
    epochs: list[EpochRecord],
    onnx_path: Path,
    ctx: StageContext,
    tmp: Path,
) -> Exported:
    """Write the Q/DQ model, its CPU build and its packed weights; measure them."""
    trained = tmp / "trained.fp32.onnx"
    write_weights(s.model, module.float_weights(), trained)
    quantizer = Quantizer(trained, QDQConfig(exclude=s.exclude))
    # The (maybe fine-tuned) ranges where the module has them; the calibrated ones for the
    # tensors only the CPU build quantizes.
    ranges = {**s.amax, **module.activation_ranges()}
    quantized = quantizer.quantize(ranges, s.ptq.calibrator, bits)
    out = ctx.output(mp_file(onnx_path))
    quantized.save(out)
    ort_out = ctx.output(mp_file(onnx_path, "ort"))
    ort_cpu = ort_cpu_build(
        quantizer, quantized, ort_out, out, s.test, s.contract, ctx.threads, ctx.run.path
    )
    exact = OrtConfig(threads=ctx.threads, qdq_fusions=False)
    scores = SplitScores(*(accuracy(out, sel, s.contract, exact) for sel in (s.val, s.test)))
    agreement = top1_agreement(module, out, s.test, exact)
    packed = _pack(
        quantized.model, bits, ctx.output(mp_packed_file(onnx_path)), out, mp_file(onnx_path)
    )
    return Exported(epochs, scores, ort_cpu, agreement, packed)


def _pack(
    model: onnx.ModelProto, bits: BitWidths, path: Path, onnx_out: Path, name: str
) -> PackedSizes:
    meta = {"model": name, "activation_bits": bits.activations}
    acc = pack_qdq_weights(model, bits, path, meta)
    # The file must give back the model it was made from, initializer for initializer.
    restored = restore(model, path)
    if restored.SerializeToString() != model.SerializeToString():
        raise CorruptArtifactError(f"the packed weights do not decode to the weights of {name}")
    return PackedSizes(
        file_bytes=acc.file_bytes,
        theoretical_bytes=acc.theoretical_bytes,
        code_bytes=acc.payload_bytes,
        scale_bytes=acc.scale_bytes,
        raw_bytes=acc.raw_bytes,
        onnx_bytes=onnx_out.stat().st_size,
    )
