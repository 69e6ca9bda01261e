"""`quantpipe qat`, also under `torchrun --nproc_per_node=N -m quantpipe qat ...`.

Rank 0 takes the run directory's lock, decides whether the stage is up to date and tells
the other ranks; all ranks then train, each on its share of every batch, and rank 0 alone
exports, evaluates and records. Without torchrun this is the single-process stage.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from quantpipe.artifacts import FP32_ONNX
from quantpipe.cli.stage_commands import _data, _run, open_run, run_options
from quantpipe.qat.distributed import GO, STOP, World, agree, start, stop, world
from quantpipe.stages.common import LabelSource
from quantpipe.stages.qat import QatConfig, QatStage


def cmd_qat(args: argparse.Namespace) -> int:
    from quantpipe.qat.config import QatTraining

    training = QatTraining(
        args.epochs, args.lr, args.optimizer, args.momentum, args.weight_decay, args.schedule,
        args.batch_size, args.train_count, not args.fixed_ranges, args.keep,
    )  # fmt: skip
    cfg = QatConfig(training, args.eval_count)
    w = world()
    start(w)
    try:
        return _main(args, cfg, w) if w.is_main else _follow(args, cfg, w)
    finally:
        stop(w)


def _stage(args: argparse.Namespace, cfg: QatConfig, w: World, run_path: Path) -> QatStage:
    onnx = Path(args.onnx) if args.onnx else run_path / FP32_ONNX
    return QatStage(onnx, _data(args), cfg, LabelSource(args.reference), args.resume, w)


def _main(args: argparse.Namespace, cfg: QatConfig, w: World) -> int:
    from quantpipe.pipeline.stage import will_run

    with open_run(args, "run") as run:
        told = False
        try:
            stage = _stage(args, cfg, w, run.path)
            agree(w, GO if will_run(run, stage, run_options(args)) else STOP)
            told = True
            _run(run, stage, args)
        except BaseException:
            if not told:
                agree(w, STOP)  # the other ranks wait for word: release them
            raise
    return 0


def _follow(args: argparse.Namespace, cfg: QatConfig, w: World) -> int:
    """A rank other than 0: train alongside rank 0 when it says so, write nothing."""
    from quantpipe.stages import qat_session

    if agree(w) != GO:
        return 0
    run_path = Path(args.run_dir) if args.run_dir else Path(args.runs_dir) / (args.run or "run")
    job = _stage(args, cfg, w, run_path).job(run_path)
    qat_session.train(job, qat_session.prepare(job, run_path, args.threads), progress=False)
    return 0
