"""How the btc stage measures: through ONNX Runtime, not PyTorch eager.

Every accuracy BTC reports (FP32, candidates, the 8-bit baselines, the chosen model) and
the FP32 targets of re-tuning come from the model exported to ONNX and run by ONNX
Runtime. Why: on ResNet-56 ONNX Runtime runs 430 images/s against PyTorch eager's 243
(1.8×; AMD EPYC, 2 threads, batch 256), and it is the arithmetic that the shipped
`model.btc.onnx` runs. The FP32 accuracies and the baselines depend only on the weights and
the splits, so they are cached in the run directory (`btc/reference-cache.json`) and a
second `btc` on the same model skips them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quantpipe.data.selection import Selection
from quantpipe.engines.onnxruntime_runner import OnnxRuntimeRunner
from quantpipe.engines.ort_session import OrtConfig
from quantpipe.evaluate.evaluate import EvalSetup, SplitScores, evaluate
from quantpipe.models.spec import ModelSpec
from quantpipe.stages.btc_result import Baseline

if TYPE_CHECKING:
    import onnx
    from torch import nn

REFERENCE_CACHE = "btc/reference-cache.json"
_CACHE_FORMAT = 1
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


def reference_key(fp32: onnx.ModelProto, *splits: Selection) -> str:
    """What the FP32 scores and baselines depend on: the exported FP32 model (weights and
    graph) and the samples and labels of each split."""
    digest = hashlib.sha256(fp32.SerializeToString())
    for s in splits:
        digest.update(json.dumps(s.provenance(), sort_keys=True, default=str).encode())
        if s.truth != "labels" and s.labels is not None:  # a reference model's predictions
            digest.update(np.ascontiguousarray(s.labels).tobytes())
    return digest.hexdigest()


class ReferenceCache:
    """FP32 scores and baselines by `reference_key`, in one JSON file of the run. A missing,
    damaged or foreign file is an empty cache (the values are measured again), never an
    error; it is written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, key: str) -> tuple[SplitScores, dict[str, Baseline]] | None:
        entry: Any = self._read().get(key)
        try:
            fp32 = SplitScores(float(entry["fp32"]["val"]), float(entry["fp32"]["test"]))
            baselines = {k: Baseline(**v) for k, v in entry["baselines"].items()}
        except (TypeError, KeyError, ValueError):
            return None
        return fp32, baselines

    def put(self, key: str, fp32: SplitScores, baselines: dict[str, Baseline]) -> None:
        from quantpipe.pipeline.atomic import atomic_write_json

        entries = self._read()
        entries[key] = {
            "fp32": {"val": fp32.val, "test": fp32.test},
            "baselines": {k: asdict(b) for k, b in baselines.items()},
        }
        atomic_write_json(self.path, {"format": _CACHE_FORMAT, "entries": entries})

    def _read(self) -> dict[str, Any]:
        try:
            payload = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(payload, dict) or payload.get("format") != _CACHE_FORMAT:
            return {}
        entries = payload.get("entries")
        return entries if isinstance(entries, dict) else {}
