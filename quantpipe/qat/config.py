"""How QAT fine-tunes (QatTraining) and what one epoch recorded (EpochRecord): plain
data, importable without torch (the stage results and run configs use them).

Defaults: SGD (momentum 0.9) reduced on a plateau of the val accuracy, as in the thesis the
stage reproduces, but at learning rate 0.001 rather than its 0.01 (1e-4 for segmentation,
as there): on fmnist-cnn, fine-tuned from a PTQ that lost 6.05 points, 0.01 reached 90.06 %
val after 2 epochs and 0.001 90.78 % (FP32 91.84 %).
"""

from __future__ import annotations

from dataclasses import dataclass

from quantpipe.errors import QuantpipeError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("plateau", "cosine", "constant")
KEEP = ("best", "last")


@dataclass(frozen=True)
class QatTraining:
    """How to fine-tune. lr None: 0.001 for classifiers, 1e-4 for segmentation."""

    epochs: int = 5
    lr: float | None = None
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "plateau"
    batch_size: int = 128
    train_count: int | None = None
    learn_ranges: bool = True
    # best: the weights of the epoch best on val, the starting point (PTQ) counted as epoch 0;
    # from a PTQ that already matches FP32, an epoch of fine-tuning can only lose (fmnist-cnn,
    # percentile: val 91.84 → 91.64, test 91.43 → 91.04 after one epoch at lr 0.001).
    keep: str = "best"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise QuantpipeError(
                f"--epochs and --batch-size must be at least 1, got {self.epochs}, "
                f"{self.batch_size}"
            )
        if self.lr is not None and not 0 < self.lr < 1:
            raise QuantpipeError(f"--lr must be in (0, 1), got {self.lr}")
        if self.optimizer not in OPTIMIZERS or self.schedule not in SCHEDULES:
            raise QuantpipeError(
                f"--optimizer {self.optimizer!r} / --schedule {self.schedule!r}: use one of "
                f"{', '.join(OPTIMIZERS)} / {', '.join(SCHEDULES)}"
            )
        if self.keep not in KEEP:
            raise QuantpipeError(f"--keep {self.keep!r}: use one of {', '.join(KEEP)}")

    def learning_rate(self, task: str) -> float:
        return self.lr if self.lr is not None else (1e-4 if task == "segmentation" else 1e-3)


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    loss: float
    val: float  # headline metric on val, fake-quantized
    lr: float
    seconds: float
