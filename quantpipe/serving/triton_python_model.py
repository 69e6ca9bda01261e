"""The `model.py` of a Python-backend model in a quantpipe Triton repository: it serves any
engine quantpipe has a runner for (ONNX Runtime, TensorRT, PyTorch on CUDA) from a stock
Triton server with the Python backend, in an environment where quantpipe is installed.

`quantpipe triton --python-backend` copies this file to `<model>_python/1/model.py`, with
the engine and its metadata JSON beside it. Triton hands `execute` every request its dynamic
batcher gathered; they run as one batch through the runner and are split back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend

from quantpipe.engines.backend import RunnerOptions
from quantpipe.engines.metadata import load_engine
from quantpipe.engines.registry import get_backend


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        here = Path(args["model_repository"]) / args["model_version"]
        (meta_file,) = here.glob("*.json")
        engine = next(p for p in here.iterdir() if p.stem == meta_file.stem and p != meta_file)
        self.meta = load_engine(engine)
        config = json.loads(args["model_config"])
        self.input = config["input"][0]["name"]
        self.outputs = [o["name"] for o in config["output"]]
        self.runner = get_backend(self.meta.backend).runner(engine, RunnerOptions())
        self.runner.activate()

    def execute(self, requests: list[Any]) -> list[Any]:
        batches = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        out = self.runner.infer({self.input: np.concatenate(batches)})
        values = list(out.values())
        outputs = [out.get(name, values[i]) for i, name in enumerate(self.outputs)]
        responses, start = [], 0
        for batch in batches:
            end = start + len(batch)
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(o[start:end]))
                for name, o in zip(self.outputs, outputs, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = end
        return responses

    def finalize(self) -> None:
        self.runner.deactivate()
