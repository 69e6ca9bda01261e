"""Depthwise models for 28×28 Fashion-MNIST that `train` fits in minutes on two cores:
MobileNetV2 ×0.5 (inverted residuals, ReLU6) and ShuffleNetV2 ×0.5 (channel split and
shuffle). They are the hard cases for per-channel INT8 and for mixed precision: depthwise
filters have 9 weights per channel, and ReLU6 clips at 6.

Both keep the ImageNet designs' blocks and widths but drop one downsampling step (28×28
inputs would be 1×1 after five stride-2 steps): the feature map goes 28 → 14 (stem) → 7 →
4 → 2. A stride-1 stem measured 4× slower to train for no accuracy within the budget.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn_act(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Channel counts rounded to a multiple of 8, never below 90 % of the request (as
    MobileNetV2 does, so that vector units stay full)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """1×1 expand (ReLU6) → 3×3 depthwise (ReLU6) → 1×1 linear projection, skip when shapes
    match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_act(cin, hidden, 1, 1))
        layers += [
            _conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


# (expansion t, channels c, repeats n, first stride s) of MobileNetV2, strides adapted to 28×28.
_MBV2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 1),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class FmnistMobileNetV2(nn.Module):
    """MobileNetV2 ×`width` for 1×28×28 inputs; the last 1×1 conv keeps its 1,280 channels
    below width 1 as the paper does."""

    def __init__(self, num_classes: int = 10, width: float = 0.5) -> None:
        super().__init__()
        cin = _make_divisible(32 * width)
        layers: list[nn.Module] = [_conv_bn_act(1, cin, 3, 2)]
        for t, c, n, s in _MBV2_STAGES:
            cout = _make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        self.last_channels = max(1280, _make_divisible(1280 * width))
        layers.append(_conv_bn_act(cin, self.last_channels, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(x)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's unit: stride 1 splits the channels in half and transforms one half;
    stride 2 transforms both copies of the input and doubles the channels."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch = cout // 2
        if stride == 2:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.Conv2d(cin, branch, 1, bias=False),
                nn.BatchNorm2d(branch),
                nn.ReLU(inplace=True),
            )
        source = cin if stride == 2 else branch
        self.branch2 = nn.Sequential(
            nn.Conv2d(source, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
            nn.Conv2d(branch, branch, 3, stride, 1, groups=branch, bias=False),
            nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            half = x.shape[1] // 2
            # Slicing, not chunk: it exports as Slice, which every runtime quantizes through.
            out = torch.cat((x[:, :half], self.branch2(x[:, half:])), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return channel_shuffle(out, 2)


class FmnistShuffleNetV2(nn.Module):
    """ShuffleNetV2 ×0.5 (stages of 48/96/192 channels, 4/8/4 units, 1,024-channel conv5)
    for 1×28×28 inputs: stem of 24 channels at stride 2, no max-pool."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(inplace=True)
        )
        stages: list[nn.Module] = []
        cin = 24
        for cout, repeats in ((48, 4), (96, 8), (192, 4)):
            units = [ShuffleUnit(cin, cout, 2)] + [
                ShuffleUnit(cout, cout, 1) for _ in range(repeats - 1)
            ]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.conv5 = nn.Sequential(
            nn.Conv2d(cin, 1024, 1, bias=False), nn.BatchNorm2d(1024), nn.ReLU(inplace=True)
        )
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.stages(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
