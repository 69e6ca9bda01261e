"""A small FCN for 56×56 segmentation (the `fmnist-seg` task): the thesis's FCN-ResNet18
shape scaled down — a ResNet-style backbone (basic blocks, output stride 4), the FCN head
(3×3 conv, BN, ReLU, 1×1 classifier) and bilinear upsampling back to the input size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """ResNet's basic block; a 1×1 conv + BN projects the skip where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class SmallFCN(nn.Module):
    """1×56×56 → `num_classes`×56×56 logits; about 190k parameters."""

    def __init__(self, num_classes: int = 11) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
        )
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.layer3 = BasicBlock(32, 64, 2)
        self.layer4 = BasicBlock(64, 64, 1)
        self.head = nn.Sequential(
            nn.Conv2d(64, 32, 3, 1, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        # A constant scale (not the input's size) exports as one Resize with constant scales,
        # with no Shape arithmetic for the quantizer and QAT to walk through.
        return F.interpolate(self.head(features), scale_factor=4.0, mode="bilinear")
