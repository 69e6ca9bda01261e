"""`export`: PyTorch model → `model.fp32.onnx`, with a parity check on real data."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx

from quantpipe.data.registry import Dataset
from quantpipe.data.selection import Selection, select
from quantpipe.data.sources import array_source
from quantpipe.engines.onnxruntime_runner import OnnxRuntimeRunner, OrtConfig
from quantpipe.engines.torch_runner import TorchRunner
from quantpipe.errors import QuantpipeError
from quantpipe.export.onnx_export import ExportOptions, export_onnx, graph_summary
from quantpipe.export.parity import MIN_TOP1_AGREEMENT, Parity, check_parity
from quantpipe.models.registry import build_model
from quantpipe.models.spec import ModelSpec
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageContext, StageOutcome, run_stage
from quantpipe.stages.common import (
    FP32_ONNX,
    DataRef,
    ModelRef,
    model_params,
    resolve_weights,
    stage_inputs,
)

SYNTHETIC_SAMPLES = 64
# Without data, parity is checked on random inputs, where arg-max ties make agreement
# meaningless; the logits themselves must then match to this relative tolerance.
SYNTHETIC_RTOL = 1e-4


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 17
    parity_split: str = "val"
    parity_count: int = 1000
    threads: int = 0

    def __post_init__(self) -> None:
        ExportOptions(self.opset)  # validates the opset
        if self.parity_count < 1:
            raise QuantpipeError(f"--parity-count must be at least 1, got {self.parity_count}")


def run_export(
    run: RunDir, model: ModelRef, data: DataRef | None, cfg: ExportConfig, force: bool
) -> StageOutcome:
    spec = model.spec()
    weights = resolve_weights(run, spec, model.weights)
    params = {
        **model_params(model, spec),
        **asdict(cfg),
        "data": None if data is None else data.spec,
        "seed": None if data is None else data.seed,
    }
    params.pop("threads")

    def body(ctx: StageContext) -> dict[str, Any]:
        net = build_model(spec, weights)
        proto = export_onnx(net, spec, ExportOptions(cfg.opset))
        tmp = ctx.output(FP32_ONNX)
        onnx.save(proto, str(tmp))
        samples = _parity_samples(data, spec, cfg)
        with (
            TorchRunner(net) as ref,
            OnnxRuntimeRunner(tmp, OrtConfig(threads=cfg.threads)) as cand,
        ):
            parity = check_parity(ref, cand, samples)
        _enforce(parity, data is None, spec.name)
        return {"parity": parity.to_dict(), "graph": graph_summary(proto), "weights": weights}

    return run_stage(run, "export", stage_inputs(model, weights, data), params, body, force)


def _parity_samples(data: DataRef | None, spec: ModelSpec, cfg: ExportConfig) -> Selection:
    if data is not None:
        return select(
            data.open(), cfg.parity_split, spec.preprocessing, data.seed, cfg.parity_count
        )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((SYNTHETIC_SAMPLES, *spec.input_shape), dtype=np.float32)
    source = array_source(x, None, kind="tensor", max_value=1.0)
    return select(Dataset("synthetic", None, {"all": source}), "all", spec.preprocessing)


def _enforce(parity: Parity, synthetic: bool, name: str) -> None:
    if not synthetic and parity.top1_agreement < MIN_TOP1_AGREEMENT:
        raise QuantpipeError(
            f"export of {name} failed the parity check: top-1 agreement "
            f"{parity.top1_agreement:.2f} % < {MIN_TOP1_AGREEMENT} % on {parity.data} "
            f"(max |Δlogit| {parity.max_abs_diff:.3g}); the model likely has an op the ONNX "
            "exporter maps differently (report it with the model)"
        )
    tolerance = SYNTHETIC_RTOL * max(1.0, parity.reference_abs_max)
    if synthetic and parity.max_abs_diff > tolerance:
        raise QuantpipeError(
            f"export of {name} failed the parity check: max |Δlogit| {parity.max_abs_diff:.3g} "
            f"> {tolerance:.3g} on {parity.data}; pass --data to check on real samples"
        )
