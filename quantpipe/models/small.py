"""Small models the pipeline trains itself: a residual CNN for Fashion-MNIST and an MLP
for scikit-learn's digits. Both are deliberately tiny so that `make demo` trains in
minutes on two CPU cores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout)
    )


class ResidualBlock(nn.Module):
    """Two 3×3 conv-BN layers plus an identity skip: the residual Add matters for Q/DQ placement."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body1 = _conv_bn(channels, channels)
        self.body2 = _conv_bn(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body2(F.relu(self.body1(x))))


class FmnistCNN(nn.Module):
    """28×28×1 → 10 classes; about 50k parameters, ~2.5 M multiply-adds per image.

    The stem downsamples at once: full-resolution 3×3 layers cost 4× more on the CPU
    and bought no accuracy within the 3-minute training budget.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn(1, 24, stride=2)
        self.block1 = ResidualBlock(24)
        self.down = _conv_bn(24, 48, stride=2)
        self.block2 = ResidualBlock(48)
        self.head = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(F.relu(self.stem(x)))
        x = self.block2(F.relu(self.down(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class DigitsMLP(nn.Module):
    """8×8 digits (64 features) → 10 classes."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TabularMLP(nn.Module):
    """`features` standardised inputs (shaped F×1×1, see the tabular data kinds) → classes;
    the BTC paper's MLP case: three Linear layers with ReLU."""

    def __init__(self, features: int, num_classes: int, hidden: tuple[int, int] = (64, 32)) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(features, hidden[0]),
            nn.ReLU(),
            nn.Linear(hidden[0], hidden[1]),
            nn.ReLU(),
            nn.Linear(hidden[1], num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
