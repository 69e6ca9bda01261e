"""CIFAR ResNet-20/32/44/56 in the zoo's layout (torchvision-style, "option B" shortcut).

These differ from `quantpipe.models.cifar_resnet` (akamaster's layout) in two ways that
change the checkpoint keys: a stage that changes resolution or width projects its
shortcut with a 1×1 conv + BatchNorm (`layerK.0.downsample.{0,1}`), which adds 2,752
parameters to every depth, and the classifier is called `fc`, not `linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_STAGE_PLANES = (16, 32, 64)


class BasicBlock(nn.Module):
    """Two 3×3 conv+BN layers around a ReLU, added to a (possibly projected) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # The zoo only creates this module where shapes change, so an identity shortcut
        # must leave no key behind (`None`, not an empty module).
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ZooCifarResNet(nn.Module):
    """3×3 stem at stride 1 (32×32 stays 32×32), three stages 16/32/64, GAP, `fc`."""

    def __init__(self, blocks_per_stage: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, _STAGE_PLANES[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STAGE_PLANES[0])
        in_planes = _STAGE_PLANES[0]
        stages = []
        for i, planes in enumerate(_STAGE_PLANES):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(in_planes, planes, stride)]
            blocks += [BasicBlock(planes, planes, 1) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def zoo_resnet(depth: int, num_classes: int) -> ZooCifarResNet:
    """ResNet-`depth` (depth = 6n + 2) with `num_classes` outputs."""
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (n ≥ 1), got {depth}")
    return ZooCifarResNet((depth - 2) // 6, num_classes)
