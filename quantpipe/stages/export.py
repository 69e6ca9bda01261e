"""`export`: PyTorch model → `model.fp32.onnx`, with a parity check on real data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from quantpipe.artifacts import FP32_ONNX
from quantpipe.data.registry import Dataset
from quantpipe.data.selection import Selection, select
from quantpipe.data.sources import array_source
from quantpipe.errors import QuantpipeError
from quantpipe.export.options import MIN_OPSET, ExportOptions
from quantpipe.export.parity import MIN_TOP1_AGREEMENT, Parity
from quantpipe.pipeline.results import JsonResult
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageContext
from quantpipe.stages.common import DataRef, ModelRef

SYNTHETIC_SAMPLES = 64
# Without data, parity is checked on random inputs, where arg-max ties make agreement
# meaningless; the logits themselves must then match to this relative tolerance.
SYNTHETIC_RTOL = 1e-4


@dataclass(frozen=True)
class ExportConfig:
    opset: int = MIN_OPSET
    parity_split: str = "val"
    parity_count: int = 1000

    def __post_init__(self) -> None:
        ExportOptions(self.opset)  # validates the opset
        if self.parity_count < 1:
            raise QuantpipeError(f"--parity-count must be at least 1, got {self.parity_count}")


@dataclass(frozen=True)
class GraphSummary:
    opset: int
    nodes: int
    ops: dict[str, int]
    batchnorm_nodes: int


@dataclass(frozen=True)
class ExportResult(JsonResult):
    parity: Parity
    graph: GraphSummary
    weights: str | None
    deploy_form: str = ""  # set when the exported model is a deploy form (e.g. fused RepVGG)

    def lines(self) -> list[str]:
        p = self.parity
        form = [f"exported the deploy form: {self.deploy_form}"] if self.deploy_form else []
        return [
            *form,
            f"parity vs PyTorch: max |Δlogit| {p.max_abs_diff:.2e}, top-1 agreement "
            f"{p.top1_agreement:.2f} % on {p.data}",
        ]


@dataclass(frozen=True)
class ExportStage:
    model: ModelRef
    data: DataRef | None = None
    config: ExportConfig = field(default_factory=ExportConfig)
    kind: ClassVar[str] = "export"
    name: ClassVar[str] = kind  # one record per run
    result_type: ClassVar[type[ExportResult]] = ExportResult

    def inputs(self, run: RunDir) -> dict[str, Path]:
        weights = self.model.resolve_weights(run)
        return {**self.model.inputs(weights), **(self.data.inputs() if self.data else {})}

    def params(self) -> dict[str, Any]:
        data = self.data.params() if self.data else {"data": None, "seed": None}
        return {
            **self.model.params(),
            "opset": self.config.opset,
            "parity_split": self.config.parity_split,
            "parity_count": self.config.parity_count,
            **data,
        }

    def run(self, ctx: StageContext) -> ExportResult:
        import onnx

        from quantpipe.engines.onnxruntime_runner import OnnxRuntimeRunner
        from quantpipe.engines.ort_session import OrtConfig
        from quantpipe.engines.torch_runner import TorchRunner
        from quantpipe.export.onnx_export import export_onnx, graph_summary
        from quantpipe.export.parity import check_parity
        from quantpipe.models.registry import build_model

        weights = self.model.resolve_weights(ctx.run)
        net = build_model(self.model.spec, weights)
        proto = export_onnx(net, self.model.spec, ExportOptions(self.config.opset))
        tmp = ctx.output(FP32_ONNX)
        onnx.save(proto, str(tmp))
        samples = self._parity_samples()
        with (
            TorchRunner(net, threads=ctx.threads) as ref,
            OnnxRuntimeRunner(tmp, OrtConfig(threads=ctx.threads)) as cand,
        ):
            parity = check_parity(ref, cand, samples)
        _enforce(parity, self.data is None, self.model.spec.name)
        graph = GraphSummary(**graph_summary(proto))
        return ExportResult(parity, graph, weights, self.model.spec.deploy_form)

    def _parity_samples(self) -> Selection:
        spec, cfg = self.model.spec, self.config
        if self.data is not None:
            dataset = self.data.open()
            return select(
                dataset, cfg.parity_split, spec.preprocessing, self.data.seed, cfg.parity_count
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
