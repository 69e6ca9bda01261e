"""Accuracy of any runner on a data selection, and the one place that decides which metric
is a result's headline."""

from __future__ import annotations

from dataclasses import dataclass

from quantpipe.data.selection import Selection
from quantpipe.engines.base import Runner, first_output
from quantpipe.errors import QuantpipeError
from quantpipe.evaluate.metrics import Agreement, MeanIoU, Metric, TopK
from quantpipe.pipeline.results import JsonResult
from quantpipe.progress import ProgressBar

_LABELS = {"top1": "top-1", "miou": "mIoU", "agreement": "agreement"}


@dataclass(frozen=True)
class EvalSetup:
    task: str
    num_classes: int
    batch_size: int | None = None  # None: the selection's default_batch_size
    progress: bool = True


@dataclass(frozen=True)
class Score(JsonResult):
    """What `evaluate` measured. `metric` names the headline field; the others that apply
    to the task are filled, the rest are None.

    Attributes:
        truth: what the predictions were scored against: "labels", or the reference model
            whose predictions stood in for labels (then `metric` is agreement).
    """

    metric: Metric
    samples: int
    data: str
    runner: str
    top1: float | None = None
    top5: float | None = None
    miou: float | None = None
    pixel_accuracy: float | None = None
    agreement: float | None = None
    truth: str = "labels"

    @property
    def value(self) -> float:
        """The headline metric, in percent."""
        value = getattr(self, self.metric)
        if value is None:
            raise ValueError(f"score without its headline metric {self.metric}")
        return float(value)

    @property
    def label(self) -> str:
        """The headline metric's name as reports print it: top-1, mIoU, agreement."""
        return _LABELS[self.metric]

    def short(self) -> str:
        """`top-1 91.16 %`: for tables whose caption names the data."""
        return f"{self.label} {self.value:.2f} %"

    def headline(self) -> str:
        """One line naming the metric, the data set and its size."""
        if self.metric == "top1":
            value = f"top-1 {self.value:.2f} %, top-5 {self.top5:.2f} %"
        elif self.metric == "miou":
            value = f"mIoU {self.value:.2f} %"
        else:
            value = f"agreement with {self.truth} {self.value:.2f} %"
        return f"{value} on {self.data}"


@dataclass(frozen=True)
class SplitScores:
    """A model's headline metric (%) on the val split (selection) and the test split (report)."""

    val: float
    test: float


def evaluate(runner: Runner, data: Selection, setup: EvalSetup) -> Score:
    """Run an active `runner` over `data`: top-1/top-5, mIoU, or, when the selection's
    labels are a reference model's predictions, arg-max agreement with them."""
    if not data.labelled:
        raise QuantpipeError(
            f"{data.dataset.kind} split {data.split} has no labels: give a reference model "
            "(--reference FP32.onnx) to measure agreement instead"
        )
    metric = _metric(setup, data)
    with ProgressBar(f"eval {runner.name}", len(data), setup.progress, "img") as bar:
        for x, y in data.batches(setup.batch_size):
            metric.update(first_output(runner, x), y)  # type: ignore[arg-type]
            bar.update(len(x))
    return Score(
        metric.headline,
        len(data),
        _describe(data),
        runner.name,
        truth=data.truth,
        **metric.result(),
    )


def _metric(setup: EvalSetup, data: Selection) -> TopK | MeanIoU | Agreement:
    if data.truth != "labels":
        return Agreement()
    return MeanIoU(setup.num_classes) if setup.task == "segmentation" else TopK()


def _describe(data: Selection) -> str:
    where = data.dataset.path or "built-in"
    return f"{data.dataset.kind} ({where}), split {data.split}, {len(data):,} samples"
