"""VGG-11/13/16/19 with BatchNorm in the zoo's CIFAR layout.

Unlike torchvision's ImageNet VGG there is no adaptive 7×7 pool and the classifier is
512→512→512→classes (not 25088→4096→4096): five max-pools take 32×32 down to 1×1, so
the flattened features are exactly 512 wide.
"""

from __future__ import annotations

import torch
from torch import nn

# Conv widths per configuration; "M" is a 2×2 max-pool (each takes a Sequential index).
CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11_bn": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13_bn": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16_bn": (
        *(64, 64, "M", 128, 128, "M"),
        *(256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    ),
    "vgg19_bn": (
        *(64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"),
        *(512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
    ),
}
_FEATURES = 512


def _features(config: tuple[int | str, ...]) -> nn.Sequential:
    """conv (with bias) → BN → ReLU per width, max-pool per "M", flat in one Sequential."""
    layers: list[nn.Module] = []
    in_ch = 3
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        out_ch = int(item)
        layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(True)]
        in_ch = out_ch
    return nn.Sequential(*layers)


class ZooVGG(nn.Module):
    """`features` then `classifier` (Linear at indices 0, 3 and 6, dropout in between)."""

    def __init__(self, config: tuple[int | str, ...], num_classes: int) -> None:
        super().__init__()
        self.features = _features(config)
        self.classifier = nn.Sequential(
            nn.Linear(_FEATURES, _FEATURES),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(_FEATURES, _FEATURES),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(_FEATURES, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def zoo_vgg(name: str, num_classes: int) -> ZooVGG:
    """VGG `name` (a key of CONFIGS, e.g. "vgg16_bn") with `num_classes` outputs."""
    return ZooVGG(CONFIGS[name], num_classes)
