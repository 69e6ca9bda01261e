"""Streaming accuracy metrics: top-k, mIoU (ignore index 255), agreement with a reference."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np

IGNORE_INDEX = 255
# A result's headline: top-1 for classifiers, mIoU for segmentation, arg-max agreement with
# a reference model for data without labels.
Metric = Literal["top1", "miou", "agreement"]


class TopK:
    """Top-1 and top-5 accuracy over (N, classes) logits and (N,) labels."""

    headline: ClassVar[Metric] = "top1"

    def __init__(self) -> None:
        self.count = 0
        self.top1 = 0
        self.top5 = 0

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        k = min(5, logits.shape[1])
        topk = (
            np.argpartition(-logits, k - 1, axis=1)[:, :k] if k > 1 else logits.argmax(1)[:, None]
        )
        self.top1 += int((logits.argmax(1) == labels).sum())
        self.top5 += int((topk == labels[:, None]).any(axis=1).sum())
        self.count += len(labels)

    def result(self) -> dict[str, float]:
        n = max(self.count, 1)
        return {"top1": 100.0 * self.top1 / n, "top5": 100.0 * self.top5 / n}


class MeanIoU:
    """mIoU from a confusion matrix; pixels labelled 255 are ignored."""

    headline: ClassVar[Metric] = "miou"

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        pred = logits.argmax(1).ravel()
        true = labels.ravel().astype(np.int64)  # masks may be uint8: index arithmetic overflows
        keep = (true != IGNORE_INDEX) & (true >= 0) & (true < self.num_classes)
        idx = true[keep] * self.num_classes + pred[keep]
        self.confusion += np.bincount(idx, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )

    def result(self) -> dict[str, float]:
        tp = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(0) + self.confusion.sum(1) - tp
        present = union > 0
        miou = float((tp[present] / union[present]).mean()) if present.any() else 0.0
        pixel_acc = float(tp.sum() / max(self.confusion.sum(), 1))
        return {"miou": 100.0 * miou, "pixel_accuracy": 100.0 * pixel_acc}


class Agreement:
    """How often the arg-max (per sample or per pixel) matches a reference model's, given
    as its logits or as its arg-max labels."""

    headline: ClassVar[Metric] = "agreement"

    def __init__(self) -> None:
        self.count = 0
        self.same = 0

    def update(self, logits: np.ndarray, reference: np.ndarray) -> None:
        labels = reference.argmax(1) if reference.ndim == logits.ndim else reference
        same = logits.argmax(1) == labels
        self.same += int(same.sum())
        self.count += same.size

    def result(self) -> dict[str, float]:
        return {"agreement": 100.0 * self.same / max(self.count, 1)}
