"""FP16 ONNX models (for TensorRT 11 and ONNX Runtime), and how far they stray from FP32.

TensorRT 11 builds strongly typed networks only: it has no FP16 builder flag, and a layer
runs in FP16 where the ONNX model's tensors are FP16. So an FP16 engine is built from an
FP16 ONNX model, made here by onnxconverter-common's maintained converter; ONNX Runtime
runs the same file. The converter keeps the graph inputs and outputs in FP32, so callers
feed and read the same arrays as with the FP32 model, and keeps the ops the FP16 arithmetic
of which was measured to fail (`fp32_ops()`) in FP32.

`check_fp16` compares the two models on the same inputs. ONNX Runtime's CPU provider has
FP16 kernels for few ops on x86: it runs the others in FP32 between casts and drops the
casts it can, so on a CPU the check measures mostly the rounding of the weights to FP16;
on a CUDA host, device="cuda" measures FP16 kernels.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from quantpipe.engines.base import first_output
from quantpipe.engines.onnxruntime_runner import OnnxRuntimeRunner
from quantpipe.engines.ort_session import OrtConfig
from quantpipe.errors import QuantpipeError

if TYPE_CHECKING:
    import onnx

PRECISION_KEY = "quantpipe.precision"
# The largest finite FP16 value. The converter clamps initializers at 1e4 by default, which
# would change weights that FP16 holds exactly; clamp only what FP16 cannot hold.
FP16_MAX = 65504.0

# Kept in FP32 on top of the converter's DEFAULT_OP_BLOCK_LIST. Each was measured with
# ONNX's reference evaluator (per-op FP16 arithmetic, the sums of reductions in FP32) on the
# op placed between two FP16 ops, as max|FP16 - FP32| / max|FP32| with the op in FP16
# against the op kept in FP32 (rounding an output to FP16 alone gives about 3e-4):
EXTRA_FP32_OPS = (
    # Softmax then Log (TensorRT's ONNX parser imports it so too): probabilities below
    # FP16's smallest 6e-8 become 0, their log -inf; logits N(0, 3) over 1000 classes gave
    # 144 -inf of 8000 values, against 4.4e-4 in FP32.
    "LogSoftmax",
    # Its variance overflows FP16 once |x - mean| passes 256, though its output is O(1):
    # x ~ N(100, 30) over 384 channels gave 0.95 in FP16, 6.1e-4 in FP32. Opset >= 17
    # exports nn.LayerNorm as this one op.
    "LayerNormalization",
    # A mean taken as an FP16 sum over n then / n overflows when the sum passes 65504 though
    # the mean fits: ReLU(N(0, 60)) over 56×56 (mean 26) gave inf, 3.1e-4 in FP32.
    "ReduceMean",
    # With ReduceMean, keeps a decomposed LayerNorm's variance, ReduceMean(Pow(x - mean, 2))
    # as older opsets export it, in FP32 (adjacent FP32 ops lose their casts): x ~ N(0, 100)
    # gave 0.98 with either op in FP16 and 1.2e-3 with both in FP32.
    "Pow",
)
# Measured and left in FP16, FP32 gaining nothing: Softmax (2.6e-3 against 2.5e-3: the error
# is the rounding of its FP16 input logits), GlobalAveragePool (3.1e-4 both, ReLU(N(0, 60))
# over 56×56), ReduceSum, Exp (their outputs overflow in FP32 too and go back to FP16 either
# way), BatchNormalization (1.2e-3 against 5.7e-4, both a few FP16 steps; export folds it
# into Conv), Resize (6.2e-4 both; in the converter's default list anyway).


@dataclass(frozen=True)
class Fp16Check:
    """FP16 against FP32 on the same inputs.

    Attributes:
        samples: inputs compared (batch items).
        max_abs_diff: max |fp32 - fp16| over every output value.
        max_rel_diff: max_abs_diff / max |fp32|.
        top1_agreement: percent of arg-max (axis 1) positions that agree: per sample for
            (N, classes) outputs, per pixel for (N, C, H, W) ones.
    """

    samples: int
    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: float


def to_fp16(model: onnx.ModelProto, *, source: str | Path | None = None) -> onnx.ModelProto:
    """An FP16 copy of an FP32 model: FP32 graph inputs and outputs, `fp32_ops()` in FP32.

    Args:
        model: the FP32 model; it is not modified.
        source: its file, named in errors (default: its quantpipe.model metadata or graph name).

    Returns:
        The checked FP16 model, with the metadata of `model` and quantpipe.precision = fp16.

    Raises:
        QuantpipeError: `model` is Q/DQ, already FP16 or holds no FP32 tensor.
    """
    import onnx

    _refuse_unconvertible(model, _describe(model, source))
    converted = _convert(_guard_outputs(model))
    del converted.metadata_props[:]
    converted.metadata_props.extend(model.metadata_props)
    _set_metadata(converted, PRECISION_KEY, "fp16")
    onnx.checker.check_model(converted, full_check=True)
    return converted


def fp32_ops() -> list[str]:
    """Every op type `to_fp16` keeps in FP32: the converter's defaults and EXTRA_FP32_OPS."""
    from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST

    return [*DEFAULT_OP_BLOCK_LIST, *EXTRA_FP32_OPS]


def _convert(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxconverter_common.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        # It warns per tensor that it raises magnitudes under 1e-7 to 1e-7 (FP16's smallest is
        # 6e-8): a change below any FP16 step that matters, and one warning per layer. Those
        # over FP16_MAX, which FP16 cannot hold, become FP16_MAX.
        warnings.simplefilter("ignore", UserWarning)
        return convert_float_to_float16(
            model, max_finite_val=FP16_MAX, keep_io_types=True, op_block_list=fp32_ops()
        )


def _describe(model: onnx.ModelProto, source: str | Path | None) -> str:
    if source is not None:
        return str(source)
    meta = {p.key: p.value for p in model.metadata_props}
    return f"model {meta.get('quantpipe.model') or model.graph.name or '(unnamed)'!r}"


def _refuse_unconvertible(model: onnx.ModelProto, what: str) -> None:
    """FP16 is made from FP32 models only: converting an INT8 Q/DQ model would keep its
    integer weights and round its scales, and the converter warns that a second pass over
    an FP16 model may corrupt it."""
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    if qdq:
        raise QuantpipeError(
            f"{what} is an INT8 Q/DQ model ({qdq} QuantizeLinear/DequantizeLinear nodes): "
            "make FP16 from the FP32 model (model.fp32.onnx) instead"
        )
    if _has_float16(model):
        raise QuantpipeError(f"{what} already holds FP16 tensors: use it as it is")
    if not _has_float32(model):
        raise QuantpipeError(
            f"{what} holds no float32 tensor to convert: FP16 is made from FP32 models only"
        )


def _value_types(model: onnx.ModelProto) -> list[int]:
    graph = model.graph
    values = [*graph.input, *graph.output, *graph.value_info]
    return [v.type.tensor_type.elem_type for v in values] + [t.data_type for t in graph.initializer]


def _has_float32(model: onnx.ModelProto) -> bool:
    from onnx import TensorProto

    return TensorProto.FLOAT in _value_types(model)


def _has_float16(model: onnx.ModelProto) -> bool:
    from onnx import TensorProto

    meta = {p.key: p.value for p in model.metadata_props}
    return meta.get(PRECISION_KEY) == "fp16" or TensorProto.FLOAT16 in _value_types(model)


def _guard_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` where no op kept in FP32 makes a graph output: the converter then
    leaves that output FP16 despite keep_io_types, or fails ("The downstream node of the
    second cast node should be graph output", a final Resize). An Identity after the op,
    converted like any FP16 op, gives the converter the output cast it expects."""
    import onnx
    from onnx import helper

    guarded = onnx.ModelProto()
    guarded.CopyFrom(model)
    kept, outputs = set(fp32_ops()), {o.name for o in guarded.graph.output}
    for node in list(guarded.graph.node):
        if node.op_type not in kept:
            continue
        for i, name in enumerate(node.output):
            if name in outputs:
                node.output[i] = f"{name}_fp32"
                identity = helper.make_node("Identity", [node.output[i]], [name], f"{name}_fp16")
                guarded.graph.node.append(identity)
    return guarded


def _set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    props = {p.key: p for p in model.metadata_props}
    prop = props.get(key) or model.metadata_props.add()
    prop.key, prop.value = key, value


def check_fp16(
    fp32: Path,
    fp16: Path,
    batches: Iterable[np.ndarray],
    threads: int = 0,
    device: str = "cpu",
) -> Fp16Check:
    """Run both models in ONNX Runtime on each batch and compare their first outputs.

    Args:
        fp32, fp16: the ONNX files; one input each, the same output shapes.
        batches: model inputs, float32.
        threads: intra-op threads, 0 for ONNX Runtime's default.
        device: an OrtConfig device: cpu (where FP16 ops mostly run in FP32), cuda (FP16
            kernels).

    Raises:
        QuantpipeError: no batches, outputs of different shapes or without a class axis.
    """
    # Two sessions take turns on the same cores: idle spinning would slow the other one.
    config = OrtConfig(device, threads, spinning=False)
    tally = _Tally()
    with OnnxRuntimeRunner(fp32, config) as ref, OnnxRuntimeRunner(fp16, config) as half:
        for x in batches:
            tally.add(first_output(ref, x), first_output(half, x))
    if tally.samples == 0:
        raise QuantpipeError(f"no input batches to compare {fp16} with {fp32} on")
    return tally.result()


@dataclass
class _Tally:
    samples: int = 0
    max_abs_diff: float = 0.0
    max_abs_ref: float = 0.0
    agree: int = 0
    positions: int = 0

    def add(self, ref: np.ndarray, half: np.ndarray) -> None:
        if ref.shape != half.shape or ref.ndim < 2:
            raise QuantpipeError(
                f"FP32 output {ref.shape} and FP16 output {half.shape}: the check needs equal "
                "shapes with a class axis 1, (N, classes) or (N, C, H, W)"
            )
        ref64, half64 = ref.astype(np.float64), half.astype(np.float64)
        diff = np.abs(ref64 - half64)
        # An FP16 overflow (inf, or nan from inf - inf) must show as inf, not vanish in max().
        worst = float(np.where(np.isnan(diff), np.inf, diff).max())
        self.samples += ref.shape[0]
        self.max_abs_diff = max(self.max_abs_diff, worst)
        self.max_abs_ref = max(self.max_abs_ref, float(np.abs(ref64).max()))
        same = ref64.argmax(axis=1) == half64.argmax(axis=1)
        self.agree += int(same.sum())
        self.positions += same.size

    def result(self) -> Fp16Check:
        if self.max_abs_ref > 0:
            rel = self.max_abs_diff / self.max_abs_ref
        else:  # an all-zero FP32 output: any difference is infinitely relative
            rel = np.inf if self.max_abs_diff > 0 else 0.0
        return Fp16Check(self.samples, self.max_abs_diff, rel, 100.0 * self.agree / self.positions)
