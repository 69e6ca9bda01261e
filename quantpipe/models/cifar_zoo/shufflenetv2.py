"""ShuffleNetV2 (×0.5/1.0/1.5/2.0) in the zoo's CIFAR layout.

torchvision's key names (`conv1`, `stage2..4`, `conv5`, `fc`), with the stem at stride 1
and without the stem's max-pool, so a 32×32 input meets the first stage at full size.
"""

from __future__ import annotations

import torch
from torch import nn

_REPEATS = (4, 8, 4)
# stem, stage2, stage3, stage4, conv5 output channels per width
STAGE_CHANNELS: dict[str, tuple[int, int, int, int, int]] = {
    "x0_5": (24, 48, 96, 192, 1024),
    "x1_0": (24, 116, 232, 464, 1024),
    "x1_5": (24, 176, 352, 704, 1024),
    "x2_0": (24, 244, 488, 976, 2048),
}


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of `groups` groups; written batch-size agnostic for ONNX."""
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False)


def _pointwise(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, bias=False)


class ShuffleUnit(nn.Module):
    """Stride 1: half the channels pass through, half go through `branch2`.

    Stride 2: both branches see the whole input and each gives half the outputs. The
    Sequential indices (ReLUs included) are the checkpoint's sub-keys.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        half = out_ch // 2
        if stride == 1 and in_ch != out_ch:
            raise ValueError(f"a stride-1 unit needs in == out channels, got {in_ch}→{out_ch}")
        self.stride = stride
        # The zoo keeps an empty Sequential here; `None` gives the same (absent) keys.
        self.branch1: nn.Sequential | None = None
        if stride > 1:
            self.branch1 = nn.Sequential(
                _depthwise(in_ch, stride),
                nn.BatchNorm2d(in_ch),
                _pointwise(in_ch, half),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True),
            )
        self.branch2 = nn.Sequential(
            _pointwise(in_ch if stride > 1 else half, half),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            _depthwise(half, stride),
            nn.BatchNorm2d(half),
            _pointwise(half, half),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch1 is None:
            kept, transformed = x.chunk(2, dim=1)
            out = torch.cat((kept, self.branch2(transformed)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class ZooShuffleNetV2(nn.Module):
    """Stem (3×3, stride 1), three stages each opening with a stride-2 unit, conv5, GAP, fc."""

    def __init__(
        self,
        channels: tuple[int, int, int, int, int],
        num_classes: int,
        in_channels: int = 3,
        stem_stride: int = 1,
    ) -> None:
        """The zoo's CIFAR model by default; `fmnist-shufflenetv2` takes one input channel
        and a stride-2 stem for 28×28 inputs."""
        super().__init__()
        self.conv1 = _conv_bn_relu(in_channels, channels[0], 3, stem_stride)
        stages = []
        in_ch = channels[0]
        for repeats, out_ch in zip(_REPEATS, channels[1:4], strict=True):
            units = [ShuffleUnit(in_ch, out_ch, 2)]
            units += [ShuffleUnit(out_ch, out_ch, 1) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*units))
            in_ch = out_ch
        self.stage2, self.stage3, self.stage4 = stages
        self.conv5 = _conv_bn_relu(in_ch, channels[4], 1)
        self.fc = nn.Linear(channels[4], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stage4(self.stage3(self.stage2(self.conv1(x))))
        return self.fc(self.conv5(out).mean(dim=(2, 3)))


def zoo_shufflenetv2(width: str, num_classes: int) -> ZooShuffleNetV2:
    """ShuffleNetV2 of width `width` (a key of STAGE_CHANNELS, e.g. "x1_0")."""
    return ZooShuffleNetV2(STAGE_CHANNELS[width], num_classes)
