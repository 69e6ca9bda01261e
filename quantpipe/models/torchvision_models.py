"""torchvision classifiers and segmentation models, always randomly initialised.

`weights=None` and `weights_backbone=None` are passed explicitly: torchvision's
segmentation builders otherwise fetch an ImageNet backbone from the hub, and quantpipe
never downloads anything at run time. Trained weights come from `--weights FILE`.

torchvision is imported by the builders, not here: importing it pulls in torch._dynamo,
3.5 s of every stage's start on 2 cores (measured in a cProfile of `btc`), and the
registry imports this module for every model, torchvision's or not.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

CLASSIFIERS = ("resnet18", "resnet50", "mobilenet_v2", "shufflenet_v2_x1_0")


class SegmentationOutput(nn.Module):
    """torchvision segmentation models return {'out': ...}; ONNX and runners want a tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def classifier_builder(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from torchvision import models as tvm

        return tvm.get_model(name, weights=None)

    return build


def fcn_resnet50() -> nn.Module:
    from torchvision import models as tvm

    return SegmentationOutput(
        tvm.segmentation.fcn_resnet50(weights=None, weights_backbone=None, aux_loss=False)
    )


def lraspp_mobilenet_v3_large() -> nn.Module:
    from torchvision import models as tvm

    return SegmentationOutput(
        tvm.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None)
    )


def fcn_resnet18(num_classes: int = 19) -> nn.Module:
    """FCN head on a ResNet-18 backbone (the thesis seed's Cityscapes-style model, 19 classes)."""
    from torchvision import models as tvm
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.fcn import FCN, FCNHead

    backbone = IntermediateLayerGetter(tvm.resnet18(weights=None), return_layers={"layer4": "out"})
    return SegmentationOutput(FCN(backbone, FCNHead(512, num_classes)))
