"""`btc`: block transform coding of the Conv/Linear weights → `model.btc` (the packed
container) and `model.btc.onnx` (decoded weights, exported like the FP32 model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from quantpipe.artifacts import (
    BTC_BLOCK_SIZE_PNG,
    BTC_CONTAINER,
    BTC_HISTOGRAM_PNG,
    BTC_ONNX,
    BTC_REPORT_MD,
)
from quantpipe.btc.container import ContainerAccounting
from quantpipe.btc.retune import RetuneConfig
from quantpipe.data.selection import select
from quantpipe.errors import QuantpipeError
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageContext
from quantpipe.stages.btc_modes import (
    BtcMode,
    SigmaRuleMode,
    mode_by_name,
    mode_from_flags,
    mode_params,
)
from quantpipe.stages.btc_references import References
from quantpipe.stages.btc_result import BtcAccuracy, BtcResult, BtcSize, Candidate, Fp32Scores
from quantpipe.stages.btc_scoring import OrtScorer
from quantpipe.stages.common import DataRef, LabelSource, ModelRef

if TYPE_CHECKING:
    import onnx
    from torch import nn

    from quantpipe.stages.btc_coder import Coded, Coder


COMMON_KEYS = ("calib_count", "eval_count", "retune_steps", "device", "baselines")


@dataclass(frozen=True)
class BtcConfig:
    """A mode (see btc_modes.py) and what every mode shares.

    `retune_steps` None means the mode's default: 300 for the budgeted modes (target bits,
    max drop), 0 for the paper's modes, which stay exactly as published. `device` is where
    the PyTorch parts (Fisher importance, re-tuning) run: auto takes a GPU when there is one.
    `baselines` None means the mode's default: measured for the paper's modes only.
    """

    mode: BtcMode = field(default_factory=SigmaRuleMode)
    calib_count: int = 4096
    eval_count: int | None = None
    retune_steps: int | None = None
    device: str = "auto"
    baselines: bool | None = None

    def __post_init__(self) -> None:
        from quantpipe.engines.torch_runner import check_device_name

        if self.calib_count < 1:
            raise QuantpipeError(f"--calib-count must be ≥ 1, got {self.calib_count}")
        check_device_name(self.device)
        if self.baselines not in (None, True, False):
            raise QuantpipeError(f"baselines must be true or false, got {self.baselines!r}")
        RetuneConfig(steps=self.retune())

    @staticmethod
    def from_flags(**values: Any) -> BtcConfig:
        """From the CLI flags or a run config's [btc] keys: `mode = NAME` with that mode's
        fields, or the flags that imply a mode (--target-bits, --max-drop, --search)."""
        common = {k: values.pop(k) for k in COMMON_KEYS if k in values}
        name = values.pop("mode", None)
        mode = mode_from_flags(**values) if name is None else mode_by_name(name, values)
        return BtcConfig(mode, **common)

    def retune(self) -> int:
        return self.mode.default_retune_steps if self.retune_steps is None else self.retune_steps

    def with_baselines(self) -> bool:
        return self.mode.default_baselines if self.baselines is None else self.baselines

    def params(self) -> dict[str, Any]:
        return {
            **mode_params(self.mode),
            "calib_count": self.calib_count,
            "eval_count": self.eval_count,
            "retune_steps": self.retune(),
            "device": self.device,
            "baselines": self.with_baselines(),
        }


@dataclass(frozen=True)
class BtcStage:
    model: ModelRef
    data: DataRef
    config: BtcConfig = field(default_factory=BtcConfig)
    labels: LabelSource = field(default_factory=LabelSource)
    kind: ClassVar[str] = "btc"
    name: ClassVar[str] = kind  # one record per run
    result_type: ClassVar[type[BtcResult]] = BtcResult

    def inputs(self, run: RunDir) -> dict[str, Path]:
        weights = self.model.resolve_weights(run)
        return {
            **self.model.inputs(weights),
            **self.data.inputs(),
            **self.labels.inputs(run.path, self.data),
        }

    def params(self) -> dict[str, Any]:
        return {
            **self.model.params(),
            **self.config.params(),
            **self.data.params(),
            "reference": self.labels.given,
        }

    def run(self, ctx: StageContext) -> BtcResult:
        from quantpipe.engines.onnxruntime_runner import OnnxRuntimeRunner
        from quantpipe.engines.torch_runner import set_torch_threads, torch_device
        from quantpipe.stages.btc_coder import Coder

        set_torch_threads(ctx.threads)
        spec, cfg, seed = self.model.spec, self.config, self.data.seed
        device = torch_device(cfg.device)
        net = self.model.build(ctx.run)
        scorer = OrtScorer(spec, ctx.threads)
        fp32_onnx = scorer.export(net)
        dataset = self.data.open()
        # Without labels, accuracy is agreement with the FP32 model: the run's ONNX (or
        # --reference), else this very model before coding.
        fallback = (
            lambda: OnnxRuntimeRunner(fp32_onnx, scorer.ort),
            f"the predictions of the FP32 {spec.name}",
        )
        val, test = self.labels.val_test(
            dataset, spec.preprocessing, self.data, cfg.eval_count, ctx, fallback
        )
        calib = select(dataset, "calib", spec.preprocessing, seed, cfg.calib_count)
        retune = RetuneConfig(steps=cfg.retune(), seed=seed, device=device)
        coder = Coder(net, fp32_onnx, calib, retune, scorer, ctx.progress)
        refs = References(ctx.run.path, coder, val, test)
        chosen, candidates = cfg.mode.choose(coder, refs.fp32_val, val)
        decoded = _export_decoded(scorer, chosen.model)
        container, size = self._write_artifacts(ctx, coder, chosen, decoded)
        btc_test = scorer.accuracy(decoded, test)  # the chosen candidate's too (search modes)
        fp32 = Fp32Scores(refs.fp32_test(), refs.measured_val())
        result = BtcResult(
            mode=cfg.mode.name,
            retune_steps=cfg.retune(),
            summary=chosen.encoding.summary,
            accuracy=BtcAccuracy(
                fp32, btc_test, test.info(), None if fp32.val is None else val.info()
            ),
            baselines=refs.baselines() if cfg.with_baselines() else {},
            candidates=[
                Candidate(
                    **c.row(refs.fp32_val()),
                    test_accuracy=btc_test if c is chosen else scorer.accuracy(c.model, test),
                )
                for c in candidates
            ],
            container=container,
            size=size,
            truth=test.truth,
            retune_steps_run=chosen.retune_steps,
            device=device,
        )
        write_figures(ctx, coder, chosen, result)
        return result

    def _write_artifacts(
        self, ctx: StageContext, coder: Coder, chosen: Coded, decoded: onnx.ModelProto
    ) -> tuple[ContainerAccounting, BtcSize]:
        import onnx

        from quantpipe.btc.container import write_container

        accounting = write_container(
            ctx.output(BTC_CONTAINER),
            chosen.encoding.encoded,
            coder.uncoded(chosen.model),
            {"model": self.model.spec.name, "policy": chosen.encoding.summary.policy},
        )
        onnx_tmp = ctx.output(BTC_ONNX)
        onnx.save(decoded, str(onnx_tmp))
        # The decoded ONNX has the FP32 graph and float32 weights: its size is the FP32
        # ONNX size that the container is compared with.
        fp32_bytes = onnx_tmp.stat().st_size
        ratio = fp32_bytes / accounting.file_bytes
        return accounting, BtcSize(accounting.file_bytes, fp32_bytes, ratio)


def write_figures(ctx: StageContext, coder: Coder, chosen: Coded, result: BtcResult) -> None:
    """The paper's Fig. 1 (largest layer) and, after a search, Fig. 6; plus the text table."""
    from quantpipe.btc.model import decode_model
    from quantpipe.btc.plots import accuracy_vs_block_size, weight_histograms
    from quantpipe.btc.uniform import per_tensor_minmax

    layer = max(coder.names, key=lambda k: coder.state[k].size)
    decoded = decode_model({layer: chosen.encoding.encoded[layer]})[layer]
    uniform = per_tensor_minmax(coder.state[layer]).reconstruction
    weight_histograms(coder.state[layer], decoded, uniform, layer, ctx.output(BTC_HISTOGRAM_PNG))
    if result.candidates:
        fp32_test = result.accuracy.fp32.test
        accuracy_vs_block_size(result.candidates, fp32_test, ctx.output(BTC_BLOCK_SIZE_PNG))
    ctx.output(BTC_REPORT_MD).write_text(result.table(coder.spec.name) + "\n")


def _export_decoded(scorer: OrtScorer, net: nn.Module) -> onnx.ModelProto:
    """The decoded model as `model.btc.onnx` ships it (and as its accuracy is measured)."""
    proto = scorer.export(net)
    prop = proto.metadata_props.add()
    prop.key, prop.value = "quantpipe.compression", "btc"
    return proto
