"""The training loop for the small built-in models (AdamW + one-cycle, seeded), and its config."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from quantpipe.errors import QuantpipeError
from quantpipe.progress import track

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 256
    lr: float = 6e-3
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise QuantpipeError(
                    f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
                )
        if not 0 < self.lr < 1:
            raise QuantpipeError(f"--lr must be in (0, 1), got {self.lr}")
        if self.weight_decay < 0:
            raise QuantpipeError(f"--weight-decay must be ≥ 0, got {self.weight_decay}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit(
    model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, seed: int, progress: bool
) -> tuple[float, float]:
    """Train `model` in place on (x, y); returns the last epoch's mean loss and the seconds."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
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
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        loss_mean = float(np.mean(losses))
    model.eval()
    return loss_mean, time.perf_counter() - start
