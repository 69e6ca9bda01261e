"""FP16 models (`to_fp16`) and their check against FP32 (`check_fp16`), in real ONNX Runtime.

The bound on max_rel_diff: FP16 keeps an 11-bit significand, so rounding a value moves it
by at most u/2 of itself, u = 2^-11 ≈ 4.9e-4. ONNX Runtime's CPU provider runs most FP16
ops through FP32 kernels, so what moves the outputs here is the rounding of the weights
(and of the few tensors it stores in FP16): errors of at most u/2 per weight, of random
sign, that partly cancel in each layer's sums. Measured: 0.9e-4 to 5.0e-4 of the largest
output on the small models, 3.5e-4 on resnet18. MAX_REL = 4u = 2e-3 leaves room for a few
more layers of such error and still fails on a real loss (a weight left wrong, an overflow).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from onnxconverter_common.float16 import convert_float_to_float16
from torch import nn

from quantpipe.engines.fp16 import EXTRA_FP32_OPS, PRECISION_KEY, check_fp16, to_fp16
from quantpipe.errors import QuantpipeError
from quantpipe.export.metadata import read_metadata
from quantpipe.export.onnx_export import ExportOptions, export_onnx
from quantpipe.models.registry import MODELS
from quantpipe.models.spec import ModelSpec, Preprocessing, Task
from quantpipe.quantize import QDQConfig, plan_qdq, quantize_qdq

MAX_REL = 4 * 2.0**-11
Models = dict[str, tuple[onnx.ModelProto, onnx.ModelProto]]


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def _softmax_head() -> nn.Module:
    return nn.Sequential(_cnn(), nn.Softmax(dim=1))


def _segmenter() -> nn.Module:
    """(N, 5, H, W) class scores, ending in a Resize (which the converter keeps in FP32)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 5, 1),
        nn.Upsample(scale_factor=2, mode="bilinear"),
    )


class _Tokens(nn.Module):
    """Patches → LayerNorm → mean over tokens → LogSoftmax: three ops kept in FP32, the
    last of them making the graph output."""

    def __init__(self) -> None:
        super().__init__()
        self.patch, self.norm, self.fc = nn.Conv2d(3, 32, 4, 4), nn.LayerNorm(32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(self.patch(x).flatten(2).transpose(1, 2))
        return torch.log_softmax(self.fc(tokens.mean(dim=1)), dim=1)


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "cnn": _cnn,
    "softmax": _softmax_head,
    "seg": _segmenter,
    "tokens": _Tokens,
}


def _spec(name: str, build: Callable[[], nn.Module]) -> ModelSpec:
    task: Task = "segmentation" if name == "seg" else "classification"
    pre = Preprocessing(3, (32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return ModelSpec(name, build, pre, task, 5 if name == "seg" else 10, "optional", "test")


def _export(name: str) -> onnx.ModelProto:
    torch.manual_seed(0)
    net = BUILDERS[name]().eval()
    with torch.no_grad():  # non-trivial statistics, so the folded weights are not plain init
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return export_onnx(net, _spec(name, BUILDERS[name]), ExportOptions())


@pytest.fixture(scope="module")
def models() -> Models:
    exported = {name: _export(name) for name in BUILDERS}
    return {name: (fp32, to_fp16(fp32)) for name, fp32 in exported.items()}


def _inits(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _batches(n: int, batch: int, shape: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, *shape)).astype(np.float32) for _ in range(n)]


def _save(tmp_path: Path, fp32: onnx.ModelProto, fp16: onnx.ModelProto) -> tuple[Path, Path]:
    paths = tmp_path / "model.fp32.onnx", tmp_path / "model.fp16.onnx"
    onnx.save(fp32, str(paths[0]))
    onnx.save(fp16, str(paths[1]))
    return paths


@pytest.mark.parametrize("name", list(BUILDERS))
def test_weights_are_fp16_and_graph_io_fp32(models: Models, name: str) -> None:
    fp32, fp16 = models[name]
    assert "BatchNormalization" not in Counter(n.op_type for n in fp32.graph.node)  # folded
    inits = _inits(fp16)
    weights = [n.input[1] for n in fp16.graph.node if n.op_type in ("Conv", "Gemm")]
    assert weights and all(inits[w].data_type == TensorProto.FLOAT16 for w in weights)
    for value in (*fp16.graph.input, *fp16.graph.output):
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT, value.name
    onnx.checker.check_model(fp16, full_check=True)


def test_sensitive_ops_run_in_fp32_and_a_final_one_keeps_the_output_fp32(models: Models) -> None:
    _, fp16 = models["tokens"]
    producer = {o: n for n in fp16.graph.node for o in n.output}
    kept = [n for n in fp16.graph.node if n.op_type in EXTRA_FP32_OPS]
    assert sorted(n.op_type for n in kept) == ["LayerNormalization", "LogSoftmax", "ReduceMean"]
    for node in kept:  # fed by a cast to FP32 or by another op kept in FP32
        feeder = producer[node.input[0]]
        assert feeder.op_type in EXTRA_FP32_OPS or (
            feeder.op_type == "Cast" and feeder.attribute[0].i == TensorProto.FLOAT
        ), node.name
    inits = _inits(fp16)
    assert inits["norm.weight"].data_type == TensorProto.FLOAT  # its parameters stay FP32
    assert producer["output"].op_type == "Cast"
    assert fp16.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT


@pytest.mark.parametrize("name", list(BUILDERS))
def test_check_fp16_agrees_with_fp32(models: Models, tmp_path: Path, name: str) -> None:
    check = check_fp16(*_save(tmp_path, *models[name]), _batches(3, 8, (3, 32, 32)), threads=1)
    assert check.samples == 24
    assert check.top1_agreement >= 99.0  # per pixel for seg: 24 × 32 × 32 positions
    assert 0 < check.max_rel_diff <= MAX_REL  # > 0: the weights really were rounded
    assert check.max_abs_diff > 0


def test_fp32_ops_keep_fp16_arithmetic_accurate(models: Models) -> None:
    """In FP16 arithmetic (ONNX's reference evaluator computes each op in its tensors' type),
    LayerNorm over inputs of a few hundred overflows its variance unless kept in FP32."""
    fp32, fp16 = models["tokens"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        defaults = convert_float_to_float16(fp32, keep_io_types=True)
    x = 300 * _batches(1, 16, (3, 32, 32))[0]
    want = _reference(fp32, x)

    def rel_and_top1(model: onnx.ModelProto) -> tuple[float, float]:
        with np.errstate(all="ignore"):
            got = _reference(model, x)
        diff = np.nan_to_num(np.abs(got - want), nan=np.inf)
        return float(diff.max() / np.abs(want).max()), float(
            np.mean(got.argmax(1) == want.argmax(1))
        )

    rel, top1 = rel_and_top1(fp16)
    assert rel <= MAX_REL and top1 == 1.0  # measured 4.1e-4, 16 of 16
    rel, top1 = rel_and_top1(defaults)
    assert rel > 10 * MAX_REL and top1 < 0.9  # measured 0.077, 9 of 16


def _reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    outputs: Any = ReferenceEvaluator(model).run(None, {"input": x})
    return np.asarray(outputs[0], dtype=np.float64)


def test_metadata_is_kept_with_the_precision(models: Models) -> None:
    fp32, fp16 = models["cnn"]
    before, after = read_metadata(fp32), read_metadata(fp16)
    assert after == {**before, PRECISION_KEY: "fp16"}
    assert before["quantpipe.model"] == "cnn" and PRECISION_KEY not in before
    assert all(t.data_type == TensorProto.FLOAT for t in fp32.graph.initializer)  # untouched


def _qdq(fp32: onnx.ModelProto) -> onnx.ModelProto:
    amax = dict.fromkeys(plan_qdq(fp32).calibration_tensors, 4.0)
    return quantize_qdq(fp32, amax, QDQConfig()).model


def test_a_qdq_model_is_refused_by_name(models: Models) -> None:
    qdq = _qdq(models["cnn"][0])
    assert Counter(n.op_type for n in qdq.graph.node)["QuantizeLinear"] > 0
    with pytest.raises(QuantpipeError, match=r"runs/a/model\.int8\.qdq\.onnx is an INT8 Q/DQ"):
        to_fp16(qdq, source="runs/a/model.int8.qdq.onnx")
    with pytest.raises(QuantpipeError, match=r"model 'cnn' is an INT8 Q/DQ .*model\.fp32\.onnx"):
        to_fp16(qdq)


def test_an_fp16_model_is_refused(models: Models) -> None:
    with pytest.raises(QuantpipeError, match="model 'cnn' already holds FP16 tensors"):
        to_fp16(models["cnn"][1])


def test_a_model_without_float32_is_refused() -> None:
    value = helper.make_tensor_value_info("x", TensorProto.INT64, [4])
    out = helper.make_tensor_value_info("y", TensorProto.INT64, [4])
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "ints", [value], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(QuantpipeError, match="model 'ints' holds no float32 tensor"):
        to_fp16(model)


def test_check_fp16_needs_batches(models: Models, tmp_path: Path) -> None:
    with pytest.raises(QuantpipeError, match="no input batches"):
        check_fp16(*_save(tmp_path, *models["cnn"]), [])


def test_resnet18_fp16_agrees_with_fp32(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = MODELS["resnet18"]
    fp32 = export_onnx(spec.build().eval(), spec, ExportOptions())
    fp16 = to_fp16(fp32)
    inits = _inits(fp16)
    convs = [n.input[1] for n in fp16.graph.node if n.op_type == "Conv"]
    assert len(convs) == 20 and all(inits[w].data_type == TensorProto.FLOAT16 for w in convs)
    check = check_fp16(*_save(tmp_path, fp32, fp16), _batches(1, 4, (3, 224, 224)), threads=2)
    assert check.samples == 4 and check.top1_agreement == 100.0
    assert 0 < check.max_rel_diff <= MAX_REL  # measured 3.5e-4
