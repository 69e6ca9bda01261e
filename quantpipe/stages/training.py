"""The training loop for the small built-in models (AdamW + one-cycle, seeded), and its config.

Classifiers minimise cross-entropy; segmentation models a class-weighted cross-entropy over
pixels (median-frequency balancing, void pixels 255 ignored), so that the background that
covers half of every image does not drown the rare classes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from quantpipe.errors import QuantpipeError
from quantpipe.evaluate.metrics import IGNORE_INDEX
from quantpipe.progress import track

if TYPE_CHECKING:
    import torch
    from torch import nn

# Used where neither the user nor the model's recipe (ModelSpec.train_defaults) says.
GENERIC_RECIPE: dict[str, Any] = {
    "epochs": 5,
    "batch_size": 256,
    "lr": 6e-3,
    "weight_decay": 1e-4,
    "channels_last": False,
}


@dataclass(frozen=True)
class TrainConfig:
    """How to train; a field left None takes the model's recipe, then GENERIC_RECIPE."""

    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    # Channels-last batches train depthwise and small convs about 1.3x faster on the CPU,
    # but change float rounding: on for the models whose recipe says so, so that older
    # models keep their published weights bit for bit.
    channels_last: bool | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise QuantpipeError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.lr is not None and not 0 < self.lr < 1:
            raise QuantpipeError(f"--lr must be in (0, 1), got {self.lr}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise QuantpipeError(f"--weight-decay must be ≥ 0, got {self.weight_decay}")

    def resolved(self, recipe: Mapping[str, Any]) -> TrainConfig:
        """Every field set: this config's, else the model's recipe's, else the generic one."""
        merged = {**GENERIC_RECIPE, **recipe}
        return replace(
            self,
            **{f.name: merged[f.name] for f in fields(self) if getattr(self, f.name) is None},
        )

    def to_dict(self) -> dict[str, Any]:
        # Unset or off, channels_last is left out: the records of runs made before it
        # existed stay up to date.
        return {k: v for k, v in asdict(self).items() if k != "channels_last" or v}


def fit(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    seed: int,
    progress: bool,
    segmentation_classes: int | None = None,
) -> tuple[float, float]:
    """Train `model` in place on (x, y); returns the last epoch's mean loss and the seconds.

    `cfg` must be resolved; `segmentation_classes` switches to the weighted pixel loss.
    """
    import torch
    import torch.nn.functional as F

    assert cfg.epochs and cfg.batch_size and cfg.lr is not None and cfg.weight_decay is not None
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    channels_last = bool(cfg.channels_last) and xt.ndim == 4
    if channels_last:
        model.to(memory_format=torch.channels_last)
    weight = None if segmentation_classes is None else class_weights(y, segmentation_classes)
    steps_per_epoch = max(1, len(xt) // cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, cfg.lr, total_steps=cfg.epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(seed)
    start, loss_mean = time.perf_counter(), float("nan")
    model.train()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(xt), generator=generator)
        losses = []
        for i in track(
            range(steps_per_epoch), f"train epoch {epoch + 1}/{cfg.epochs}", progress, unit="step"
        ):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            xb = xt[idx].contiguous(memory_format=torch.channels_last) if channels_last else xt[idx]
            target = yt[idx].long()
            loss = F.cross_entropy(model(xb), target, weight=weight, ignore_index=IGNORE_INDEX)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        loss_mean = float(np.mean(losses))
    model.eval()
    if channels_last:  # saved weights and later stages use the default layout
        model.to(memory_format=torch.contiguous_format)
    return loss_mean, time.perf_counter() - start


def class_weights(masks: np.ndarray, classes: int) -> torch.Tensor:
    """Median-frequency balancing: w_c = median(freq) / freq_c over the labelled pixels;
    classes absent from the masks get weight 0 (they cannot be learnt anyway)."""
    import torch

    counts = np.bincount(masks[masks != IGNORE_INDEX].ravel(), minlength=classes)[:classes]
    freq = counts / max(counts.sum(), 1)
    present = freq > 0
    weights = np.zeros(classes, dtype=np.float32)
    weights[present] = np.median(freq[present]) / freq[present]
    return torch.from_numpy(weights)
