"""`btc`: block transform coding of the Conv/Linear weights → `model.btc` (the packed
container) and `model.btc.onnx` (decoded weights, exported like the FP32 model)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import onnx
from torch import nn

from quantpipe.btc.clipsearch import DEFAULT_CLIP_GRID
from quantpipe.btc.container import write_container
from quantpipe.btc.encoded import HEADER_BITS_PER_BLOCK as HEADER_BITS
from quantpipe.btc.model import decode_model
from quantpipe.btc.plots import accuracy_vs_block_size, weight_histograms
from quantpipe.btc.policy import Policy, SigmaRule, TargetBits
from quantpipe.btc.report import btc_table
from quantpipe.btc.retune import RetuneConfig
from quantpipe.btc.uniform import per_tensor_minmax
from quantpipe.data.selection import select
from quantpipe.errors import QuantpipeError
from quantpipe.export.onnx_export import ExportOptions, export_onnx
from quantpipe.models.registry import build_model
from quantpipe.models.spec import ModelSpec
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageContext, StageOutcome, run_stage
from quantpipe.stages.btc_coder import Coded, Coder, baselines, choose
from quantpipe.stages.common import DataRef, ModelRef, model_params, resolve_weights, stage_inputs
from quantpipe.stages.model_accuracy import torch_accuracy

BTC_CONTAINER = "model.btc"
BTC_ONNX = "model.btc.onnx"
HISTOGRAM_PNG = "btc/weights_histogram.png"
BLOCK_SIZE_PNG = "btc/accuracy_vs_block_size.png"
REPORT_MD = "btc/report.md"
# Effective-bit budgets tried by --max-drop, smallest first (4-bit payload plus headers
# is the floor; all-8-bit with B = 64 is 8.52).
BUDGET_LADDER = (4.25, 4.5, 4.75, 5.0, 5.5, 6.0, 7.0, 8.0)


@dataclass(frozen=True)
class BtcConfig:
    """Modes: the paper's σ rule (default), `target_bits`, `max_drop`, or `search`.

    `retune_steps` None means: 300 for the budgeted modes (target bits, max drop), 0
    for the paper's modes, which stay exactly as published.
    """

    block_size: int = 64
    tau: float = 0.05
    low_bits: int = 4
    high_bits: int = 8
    target_bits: float | None = None
    max_drop: float | None = None
    search: bool = False
    max_rmse: float = 3e-3
    block_sizes: tuple[int, ...] = (32, 64, 128, 256)
    taus: tuple[float, ...] = (0.05,)
    calib_count: int = 4096
    eval_count: int | None = None
    retune_steps: int | None = None

    def __post_init__(self) -> None:
        if self.target_bits is not None and (self.search or self.max_drop is not None):
            raise QuantpipeError("--target-bits fixes the budget: drop --search/--max-drop")
        if self.max_drop is not None and self.max_drop < 0:
            raise QuantpipeError(f"--max-drop must be ≥ 0 points, got {self.max_drop}")
        if self.calib_count < 1:
            raise QuantpipeError(f"--calib-count must be ≥ 1, got {self.calib_count}")
        self.policies()  # each policy validates its own values
        RetuneConfig(steps=self.retune())

    @property
    def mode(self) -> str:
        if self.search:
            return "paper-search"
        if self.target_bits is not None:
            return "target-bits"
        return "max-drop" if self.max_drop is not None else "sigma-rule"

    def retune(self) -> int:
        if self.retune_steps is not None:
            return self.retune_steps
        return 300 if self.mode in ("target-bits", "max-drop") else 0

    def policies(self) -> list[Policy]:
        """The candidate policies of this mode, fewest bits first where that is known."""
        lo, hi = self.low_bits, self.high_bits
        if self.search:
            return [SigmaRule(t, b, lo, hi) for b in self.block_sizes for t in self.taus]
        if self.target_bits is not None:
            # Every block size whose header floor admits the budget; the least
            # Fisher-weighted error wins (no accuracy is measured for this choice).
            floor_ok = [b for b in self.block_sizes if self.target_bits >= lo + HEADER_BITS / b]
            return [TargetBits(self.target_bits, b, lo, hi, DEFAULT_CLIP_GRID) for b in floor_ok]
        if self.max_drop is not None:
            floor = lo + HEADER_BITS / self.block_size
            return [
                TargetBits(x, self.block_size, lo, hi, DEFAULT_CLIP_GRID)
                for x in BUDGET_LADDER
                if x >= floor
            ]
        return [SigmaRule(self.tau, self.block_size, lo, hi)]


def run_btc(
    run: RunDir, model: ModelRef, data: DataRef, cfg: BtcConfig, force: bool, progress: bool = True
) -> StageOutcome:
    spec = model.spec()
    weights = resolve_weights(run, spec, model.weights)
    params = {
        **model_params(model, spec),
        **asdict(cfg),
        "mode": cfg.mode,
        "data": data.spec,
        "seed": data.seed,
    }

    def body(ctx: StageContext) -> dict[str, Any]:
        net = build_model(spec, weights)
        dataset = data.open()
        val = select(dataset, "val", spec.preprocessing, data.seed, cfg.eval_count)
        test = select(dataset, "test", spec.preprocessing, data.seed, cfg.eval_count)
        calib = select(dataset, "calib", spec.preprocessing, data.seed, cfg.calib_count)
        coder = Coder(net, spec, calib, RetuneConfig(steps=cfg.retune(), seed=data.seed), progress)
        fp32 = {"val": torch_accuracy(net, val, spec), "test": torch_accuracy(net, test, spec)}
        chosen, candidates = choose(coder, cfg.policies(), cfg, fp32["val"], val)
        accounting = write_container(
            ctx.output(BTC_CONTAINER),
            chosen.encoding.encoded,
            coder.uncoded(chosen.model),
            {"model": spec.name, "policy": chosen.encoding.summary.policy},
        )
        onnx_tmp = ctx.output(BTC_ONNX)
        onnx.save(_export_decoded(chosen.model, spec), str(onnx_tmp))
        # The decoded ONNX has the FP32 graph and float32 weights: its size is the FP32
        # ONNX size that the container is compared with.
        size = {"btc_bytes": accounting.file_bytes, "onnx_fp32_bytes": onnx_tmp.stat().st_size}
        results = {
            "mode": cfg.mode,
            "retune_steps": cfg.retune(),
            "summary": chosen.encoding.summary.to_dict(),
            "accuracy": {
                "fp32": fp32,
                "btc_test": torch_accuracy(chosen.model, test, spec),
                "data_test": test.provenance(),
                "data_val": val.provenance(),
            },
            "baselines": baselines(coder, test),
            "candidates": [
                c.row(fp32["val"]) | {"test_accuracy": torch_accuracy(c.model, test, spec)}
                for c in candidates
            ],
            "container": asdict(accounting),
            "size": {**size, "ratio": size["onnx_fp32_bytes"] / size["btc_bytes"]},
        }
        write_figures(ctx, coder, chosen, results)
        return results

    return run_stage(run, "btc", stage_inputs(model, weights, data), params, body, force)


def write_figures(ctx: StageContext, coder: Coder, chosen: Coded, results: dict[str, Any]) -> None:
    """The paper's Fig. 1 (largest layer) and, after a search, Fig. 6; plus the text table."""
    layer = max(coder.names, key=lambda k: coder.state[k].size)
    decoded = decode_model({layer: chosen.encoding.encoded[layer]})[layer]
    uniform = per_tensor_minmax(coder.state[layer]).reconstruction
    weight_histograms(coder.state[layer], decoded, uniform, layer, ctx.output(HISTOGRAM_PNG))
    if results["candidates"]:
        accuracy_vs_block_size(results["candidates"], results["accuracy"]["fp32"]["test"],
                               ctx.output(BLOCK_SIZE_PNG))  # fmt: skip
    ctx.output(REPORT_MD).write_text(btc_table(results, coder.spec.name) + "\n")


def _export_decoded(net: nn.Module, spec: ModelSpec) -> onnx.ModelProto:
    proto = export_onnx(net, spec, ExportOptions())
    prop = proto.metadata_props.add()
    prop.key, prop.value = "quantpipe.compression", "btc"
    return proto
