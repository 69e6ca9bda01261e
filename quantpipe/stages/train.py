"""`train`: fit a built-in small model on its data set; writes `model.pt` (a state dict)."""

from __future__ import annotations

import io
from typing import Any

import torch

from quantpipe.data.selection import select
from quantpipe.engines.torch_runner import TorchRunner
from quantpipe.errors import QuantpipeError
from quantpipe.evaluate.evaluate import EvalSetup, evaluate
from quantpipe.pipeline.rundir import RunDir
from quantpipe.pipeline.stage import StageContext, StageOutcome, run_stage
from quantpipe.stages.common import TRAINED_WEIGHTS, DataRef, ModelRef, model_params, stage_inputs
from quantpipe.stages.training import TrainConfig, fit


def run_train(
    run: RunDir,
    model: ModelRef,
    data: DataRef,
    cfg: TrainConfig,
    force: bool,
    progress: bool = True,
) -> StageOutcome:
    spec = model.spec()
    if spec.task != "classification":
        raise QuantpipeError(f"train supports classifiers only; {spec.name} is a {spec.task} model")
    params = {**model_params(model, spec), **cfg.to_dict(), "data": data.spec, "seed": data.seed}

    def body(ctx: StageContext) -> dict[str, Any]:
        dataset = data.open()
        train = select(dataset, "train", spec.preprocessing, data.seed)
        x, y = train.arrays()
        if y is None:
            raise QuantpipeError(f"data {data.spec} has no labels to train on")
        torch.manual_seed(data.seed)  # the initial weights are part of the result
        net = spec.build()
        stats = fit(net, x, y, cfg, data.seed, progress)
        val = select(dataset, "val", spec.preprocessing, data.seed)
        with TorchRunner(net) as runner:
            val_result = evaluate(
                runner, val, EvalSetup(spec.task, spec.num_classes, progress=progress)
            )
        # Saved through a buffer: torch.save names the archive after the (temporary, random)
        # file name, which would make identical weights hash differently run to run.
        buffer = io.BytesIO()
        torch.save(net.state_dict(), buffer)
        ctx.output(TRAINED_WEIGHTS).write_bytes(buffer.getvalue())
        return {**stats, "train_samples": len(train), "val": val_result}

    return run_stage(run, "train", stage_inputs(model, None, data), params, body, force)
