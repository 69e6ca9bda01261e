"""Registry entries of the chenyaofo/pytorch-cifar-models zoo: 19 models × CIFAR-10/100.

Names are `chenyaofo-<dataset>-<zoo model name>` (e.g. `chenyaofo-cifar10-resnet20`):
the prefix keeps them apart from `cifar10-resnet20`, akamaster's differently keyed
ResNet, and the rest is the zoo's own hub name, so a user can match a downloaded
`cifar10_resnet20-4118986f.pt` to its entry by eye.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from quantpipe.models.cifar_zoo.mobilenetv2 import zoo_mobilenetv2
from quantpipe.models.cifar_zoo.repvgg import CONFIGS as REPVGG_CONFIGS
from quantpipe.models.cifar_zoo.repvgg import reparameterize, zoo_repvgg
from quantpipe.models.cifar_zoo.resnet import zoo_resnet
from quantpipe.models.cifar_zoo.shufflenetv2 import STAGE_CHANNELS, zoo_shufflenetv2
from quantpipe.models.cifar_zoo.vgg import CONFIGS as VGG_CONFIGS
from quantpipe.models.cifar_zoo.vgg import zoo_vgg
from quantpipe.models.spec import ModelSpec, Preprocessing

PREFIX = "chenyaofo-"
ZOO = "chenyaofo/pytorch-cifar-models"
REPVGG_DEPLOY_FORM = "RepVGG branches fused into one 3×3 conv per block"

# The zoo's training configs (its `logs` branch records them for every run): the data
# sets' own channel statistics, not ImageNet's.
CIFAR10_ZOO_PREPROCESSING = Preprocessing(
    channels=3, size=(32, 32), mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010)
)
CIFAR100_ZOO_PREPROCESSING = Preprocessing(
    channels=3, size=(32, 32), mean=(0.507, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2761)
)
_DATASETS: dict[str, tuple[int, Preprocessing, str]] = {
    "cifar10": (10, CIFAR10_ZOO_PREPROCESSING, "CIFAR-10"),
    "cifar100": (100, CIFAR100_ZOO_PREPROCESSING, "CIFAR-100"),
}

_Builder = Callable[[int], nn.Module]  # num_classes → train-time model


def _members() -> list[tuple[str, _Builder, str]]:
    """(zoo model name, builder, layout note) for every family member."""
    members: list[tuple[str, _Builder, str]] = []
    for depth in (20, 32, 44, 56):
        members.append(
            (
                f"resnet{depth}",
                partial(zoo_resnet, depth),
                "1×1-conv+BN downsample shortcuts, head `fc`",
            )
        )
    for width, tag in ((0.5, "x0_5"), (0.75, "x0_75"), (1.0, "x1_0"), (1.4, "x1_4")):
        members.append(
            (
                f"mobilenetv2_{tag}",
                partial(zoo_mobilenetv2, width),
                "torchvision keys, stem and 2nd stage at stride 1",
            )
        )
    for tag in STAGE_CHANNELS:
        members.append(
            (
                f"shufflenetv2_{tag}",
                partial(zoo_shufflenetv2, tag),
                "torchvision keys, stride-1 stem, no max-pool",
            )
        )
    for name in REPVGG_CONFIGS:
        members.append(
            (
                name,
                partial(zoo_repvgg, name),
                "train-time branches (rbr_dense/rbr_1x1/rbr_identity), stage0/1 at stride 1",
            )
        )
    for name in VGG_CONFIGS:
        members.append((name, partial(zoo_vgg, name), "512-512 classifier, no 7×7 pool"))
    return members


def zoo_specs() -> list[ModelSpec]:
    """One ModelSpec per zoo model and data set (38 entries); all need `--weights`."""
    specs = []
    for dataset, (classes, preprocessing, label) in _DATASETS.items():
        for member, builder, layout in _members():
            is_repvgg = member.startswith("repvgg")
            specs.append(
                ModelSpec(
                    name=f"{PREFIX}{dataset}-{member}",
                    build=partial(builder, classes),
                    preprocessing=preprocessing,
                    task="classification",
                    num_classes=classes,
                    weights="required",
                    description=f"{ZOO} {label} {member} (zoo layout: {layout})",
                    deploy=reparameterize if is_repvgg else None,
                    deploy_form=REPVGG_DEPLOY_FORM if is_repvgg else "",
                )
            )
    return specs
