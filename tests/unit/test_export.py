from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from quantpipe.errors import QuantpipeError
from quantpipe.export.metadata import read_metadata
from quantpipe.export.onnx_export import ExportOptions, export_onnx
from quantpipe.models.registry import MODELS


@pytest.fixture(scope="module")
def fmnist_onnx() -> tuple[torch.nn.Module, onnx.ModelProto]:
    torch.manual_seed(0)
    net = MODELS["fmnist-cnn"].build().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding is really tested
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net, export_onnx(net, MODELS["fmnist-cnn"], ExportOptions())


def test_export_folds_batchnorm_and_keeps_residual_add(fmnist_onnx) -> None:
    _, proto = fmnist_onnx
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["BatchNormalization"] == 0
    assert ops["Conv"] == 6 and ops["Add"] == 2 and ops["Gemm"] == 1
    assert proto.opset_import[0].version == 17


def test_export_has_dynamic_batch_and_metadata(fmnist_onnx) -> None:
    net, proto = fmnist_onnx
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    meta = read_metadata(proto)
    assert (
        meta["quantpipe.model"] == "fmnist-cnn"
        and '"mean": [0.286]' in meta["quantpipe.preprocessing"]
    )
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = np.random.default_rng(batch).standard_normal((batch, 1, 28, 28), dtype=np.float32)
        out = sess.run(None, {"input": x})[0]
        np.testing.assert_allclose(out, net(torch.from_numpy(x)).detach().numpy(), atol=1e-4)


def test_unsupported_opset_is_refused() -> None:
    with pytest.raises(QuantpipeError, match="--opset 13"):
        ExportOptions(opset=13)
