"""Depthwise models for 28×28 Fashion-MNIST that `train` fits in minutes on two cores:
MobileNetV2 ×0.5 (inverted residuals, ReLU6) and ShuffleNetV2 ×0.5 (channel split and
shuffle), built from the CIFAR zoo's own blocks. They are the hard cases for per-channel
INT8 and for mixed precision: depthwise filters have 9 weights per channel, and ReLU6
clips at 6.

Both drop one downsampling step of the ImageNet designs (28×28 inputs would be 1×1 after
five stride-2 steps): the feature map goes 28 → 14 (stem) → 7 → 4 → 2. A stride-1 stem
measured 4× slower to train for no accuracy within the budget.
"""

from __future__ import annotations

from quantpipe.models.cifar_zoo.mobilenetv2 import BLOCKS, ZooMobileNetV2
from quantpipe.models.cifar_zoo.shufflenetv2 import STAGE_CHANNELS, ZooShuffleNetV2

# The zoo's (expansion, channels, repeats, first stride) table with the strides for 28×28
# inputs after a stride-2 stem: 14 → 7 → 4 → 2.
_MBV2_STRIDES = (1, 2, 1, 2, 1, 2, 1)
_MBV2_BLOCKS = tuple((t, c, n, s) for (t, c, n, _), s in zip(BLOCKS, _MBV2_STRIDES, strict=True))


def fmnist_mobilenetv2(num_classes: int = 10) -> ZooMobileNetV2:
    """MobileNetV2 ×0.5 for 1×28×28 inputs; the last 1×1 conv keeps its 1,280 channels."""
    return ZooMobileNetV2(0.5, num_classes, in_channels=1, stem_stride=2, blocks=_MBV2_BLOCKS)


def fmnist_shufflenetv2(num_classes: int = 10) -> ZooShuffleNetV2:
    """ShuffleNetV2 ×0.5 (stages of 48/96/192 channels, 4/8/4 units, 1,024-channel conv5)
    for 1×28×28 inputs: a stride-2 stem, no max-pool."""
    return ZooShuffleNetV2(STAGE_CHANNELS["x0_5"], num_classes, in_channels=1, stem_stride=2)
