"""End to end on a torch-exported residual block (Conv-BN-ReLU-Conv-BN + skip, GAP, Linear)."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from quantpipe.calibration import (  # noqa: E402
    CollectConfig,
    MseConfig,
    PercentileConfig,
    collect_statistics,
    compute_all,
)
from quantpipe.quantize import compare_models, plan_qdq, quantize_qdq  # noqa: E402


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):  # type: ignore[no-untyped-def]
        a = torch.relu(self.bn1(self.conv1(x)))
        b = torch.relu(self.bn2(self.conv2(a)) + a)
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(b, 1), 1))


def _export() -> onnx.ModelProto:
    torch.manual_seed(0)
    block = _Block().eval()
    with torch.no_grad():
        for bn in (block.bn1, block.bn2):
            bn.running_mean.normal_(0, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.2)
    buffer = io.BytesIO()
    torch.onnx.export(
        block,
        torch.randn(2, 3, 16, 16),
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
    )
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_exported_block_quantizes_end_to_end() -> None:
    model = _export()
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["BatchNormalization"] == 0 and ops["Conv"] == 2  # folded by the exporter
    plan = plan_qdq(model)
    assert plan.float_nodes == []
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.normal(size=(4, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    stats = collect_statistics(model, feeds, plan.calibration_tensors, CollectConfig(threads=1))
    assert set(stats.stats) == set(plan.calibration_tensors) and len(stats.stats) == 5
    tables = compute_all(stats, [PercentileConfig(99.99), MseConfig()])
    for amax in tables.values():
        qdq = quantize_qdq(model, amax).model
        onnx.checker.check_model(qdq, full_check=True)
        q_ops = Counter(n.op_type for n in qdq.graph.node)
        assert (q_ops["QuantizeLinear"], q_ops["DequantizeLinear"]) == (7, 10)
        result = compare_models(model, qdq, feeds[:2], threads=1)
        assert result.outputs[0].cosine > 0.99
        assert len(result.layers) >= 6  # every float tensor of the FP32 graph has a row
    session = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": feeds[0]["x"][:1]})[0].shape == (1, 5)  # dynamic batch kept
