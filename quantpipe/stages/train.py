"""`train`: fit a built-in small model on its data set; writes `model.pt` (a state dict)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from quantpipe.artifacts import TRAINED_WEIGHTS
from quantpipe.data.selection import select
from quantpipe.engines.torch_runner import TorchRunner, set_torch_threads
from quantpipe.errors import QuantpipeError
from quantpipe.evaluate.evaluate import EvalSetup, Score, evaluate
from quantpipe.pipeline.results import JsonResult
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageContext
from quantpipe.stages.common import DataRef, ModelRef
from quantpipe.stages.training import TrainConfig


@dataclass(frozen=True)
class TrainResult(JsonResult):
    final_epoch_loss: float
    train_seconds: float
    train_samples: int
    val: Score

    def lines(self) -> list[str]:
        return [f"validation: {self.val.headline()}"]


@dataclass(frozen=True)
class TrainStage:
    model: ModelRef
    data: DataRef
    config: TrainConfig = field(default_factory=TrainConfig)
    kind: ClassVar[str] = "train"
    name: ClassVar[str] = kind  # one record per run
    result_type: ClassVar[type[TrainResult]] = TrainResult

    @property
    def recipe(self) -> TrainConfig:
        """The config with the model's recipe filled in where the user left a value unset."""
        return self.config.resolved(dict(self.model.spec.train_defaults))

    def inputs(self, run: RunDir) -> dict[str, Path]:
        return {**self.model.inputs(None), **self.data.inputs()}

    def params(self) -> dict[str, Any]:
        return {**self.model.params(), **self.recipe.to_dict(), **self.data.params()}

    def run(self, ctx: StageContext) -> TrainResult:
        import torch

        from quantpipe.models.checkpoint import checkpoint_bytes
        from quantpipe.stages.training import fit

        spec, seed = self.model.spec, self.data.seed
        set_torch_threads(ctx.threads)
        dataset = self.data.open()
        train = select(dataset, "train", spec.preprocessing, seed)
        x, y = train.arrays()
        if y is None:
            raise QuantpipeError(f"data {self.data.spec} has no labels to train on")
        torch.manual_seed(seed)  # the initial weights are part of the result
        net = spec.build()
        classes = spec.num_classes if spec.task == "segmentation" else None
        loss, seconds = fit(net, x, y, self.recipe, seed, ctx.progress, classes)
        val = select(dataset, "val", spec.preprocessing, seed)
        with TorchRunner(net) as runner:
            setup = EvalSetup(spec.task, spec.num_classes, progress=ctx.progress)
            score = evaluate(runner, val, setup)
        ctx.output(TRAINED_WEIGHTS).write_bytes(checkpoint_bytes(net.state_dict()))
        return TrainResult(loss, seconds, len(train), score)
