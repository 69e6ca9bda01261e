"""How the btc stage measures: through ONNX Runtime, not PyTorch eager.

Every accuracy BTC reports (FP32, candidates, the 8-bit baselines, the chosen model) and
the FP32 targets of re-tuning come from the model exported to ONNX and run by ONNX
Runtime. Why: on ResNet-56 ONNX Runtime runs 430 images/s against PyTorch eager's 243
(1.8×; AMD EPYC, 2 threads, batch 256), and it is the arithmetic that the shipped
`model.btc.onnx` runs. What the result is compared with is measured on demand and cached
(btc_references.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from quantpipe.data.selection import Selection
from quantpipe.engines.onnxruntime_runner import OnnxRuntimeRunner
from quantpipe.engines.ort_session import OrtConfig
from quantpipe.evaluate.evaluate import EvalSetup, evaluate
from quantpipe.models.spec import ModelSpec

if TYPE_CHECKING:
    import onnx
    from torch import nn

_BATCH = 256


class OrtScorer:
    """Exports PyTorch models of one spec and runs them in ONNX Runtime."""

    def __init__(self, spec: ModelSpec, threads: int) -> None:
        self.spec = spec
        # No spinning: re-tuning runs PyTorch on the same cores between the sessions' runs.
        self.ort = OrtConfig(threads=threads, spinning=False)

    def export(self, net: nn.Module) -> onnx.ModelProto:
        from quantpipe.export.onnx_export import ExportOptions, export_onnx

        return export_onnx(net, self.spec, ExportOptions())

    def accuracy(self, model: nn.Module | onnx.ModelProto, data: Selection) -> float:
        """top-1, mIoU, or agreement with the selection's reference, as `eval` reports it."""
        import onnx

        proto = model if isinstance(model, onnx.ModelProto) else self.export(model)
        setup = EvalSetup(self.spec.task, self.spec.num_classes, progress=False)
        with OnnxRuntimeRunner(proto, self.ort) as runner:
            return evaluate(runner, data, setup).value

    def logits(self, model: onnx.ModelProto, inputs: np.ndarray) -> np.ndarray:
        """The model's first output for `inputs`, in batches."""
        with OnnxRuntimeRunner(model, self.ort) as runner:
            name = runner.input_names[0]
            out = [
                next(iter(runner.infer({name: inputs[i : i + _BATCH]}).values()))
                for i in range(0, len(inputs), _BATCH)
            ]
        return np.concatenate(out)
