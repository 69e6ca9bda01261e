"""MobileNetV2 (width ×0.5/0.75/1.0/1.4) in the zoo's CIFAR layout.

The keys follow torchvision's MobileNetV2 (`features.N...`, `classifier.1`), but two
strides are 1 instead of 2 (the stem and the first 24-channel stage), so a 32×32 input
reaches the head at 4×4 instead of 1×1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (expansion t, output channels c, repeats n, first stride s); the ImageNet table with
# the second row's stride set to 1.
BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_STEM = 32
_HEAD = 1280
_ROUND_TO = 8


def round_channels(channels: float, multiple: int = _ROUND_TO) -> int:
    """Nearest multiple of `multiple` (at least `multiple`), never more than 10 % below.

    The width multiplier makes fractional channel counts; hardware-friendly multiples of 8
    are what the zoo's checkpoints were trained with.
    """
    rounded = max(multiple, int(channels + multiple / 2) // multiple * multiple)
    return rounded + multiple if rounded < 0.9 * channels else rounded


class ConvBNReLU6(nn.Sequential):
    """conv (no bias) → BN → ReLU6, as children 0, 1, 2 (the checkpoint's sub-keys)."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1×1 expand (skipped when t = 1) → 3×3 depthwise → linear 1×1 project, all in `conv`."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = round(in_ch * expansion)
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNReLU6(in_ch, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return x + out if self.residual else out


class ZooMobileNetV2(nn.Module):
    """`features` (stem, 17 inverted residuals, 1×1 head conv), GAP, `classifier`."""

    def __init__(
        self,
        width: float,
        num_classes: int,
        in_channels: int = 3,
        stem_stride: int = 1,
        blocks: tuple[tuple[int, int, int, int], ...] = BLOCKS,
    ) -> None:
        """The zoo's CIFAR model by default; `fmnist-mobilenetv2` changes the input
        channels, the stem's stride and the block strides for 28×28 inputs."""
        super().__init__()
        in_ch = round_channels(_STEM * width)
        head = round_channels(_HEAD * max(1.0, width))  # the head never gets narrower
        layers: list[nn.Module] = [ConvBNReLU6(in_channels, in_ch, stride=stem_stride)]
        for expansion, channels, repeats, first_stride in blocks:
            out_ch = round_channels(channels * width)
            for i in range(repeats):
                layers.append(
                    InvertedResidual(in_ch, out_ch, first_stride if i == 0 else 1, expansion)
                )
                in_ch = out_ch
        layers.append(ConvBNReLU6(in_ch, head, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(head, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(out, 1))


def zoo_mobilenetv2(width: float, num_classes: int) -> ZooMobileNetV2:
    """MobileNetV2 with width multiplier `width` and `num_classes` outputs."""
    return ZooMobileNetV2(width, num_classes)
