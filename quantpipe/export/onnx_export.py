"""PyTorch → ONNX: opset ≥ 17, dynamic batch, BatchNorm folded, simplified, checked.

The TorchScript exporter (`dynamo=False`) is used: it gives a real opset 17, exports
in 0.8 s where dynamo takes 4 s (resnet18), folds eval-mode BatchNorm into Conv, and
is the path ModelOpt's quantized models need too (its dynamo export fails on the
quantizers).
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from typing import Any

import onnx
import onnxslim
import torch
from torch import nn

from quantpipe.export.metadata import set_metadata
from quantpipe.export.options import ExportOptions
from quantpipe.models.spec import ModelSpec

INPUT_NAME = "input"
OUTPUT_NAME = "output"


def export_onnx(model: nn.Module, spec: ModelSpec, options: ExportOptions) -> onnx.ModelProto:
    """Export `model` (eval mode) and return the simplified, checked ONNX model."""
    model.eval()
    example = torch.zeros(2, *spec.input_shape)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            model,
            (example,),
            buffer,  # type: ignore[arg-type]  # a BytesIO works; the stub says path only
            dynamo=False,
            opset_version=options.opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            do_constant_folding=True,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    if options.simplify:
        proto = onnxslim.slim(proto)
    set_metadata(proto, spec)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def graph_summary(proto: onnx.ModelProto) -> dict[str, Any]:
    ops = Counter(n.op_type for n in proto.graph.node)
    return {
        "opset": max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "nodes": len(proto.graph.node),
        "ops": dict(sorted(ops.items())),
        "batchnorm_nodes": ops.get("BatchNormalization", 0),
    }
