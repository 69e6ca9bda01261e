"""The model registry: names → ModelSpec, plus user models given as `file.py:factory`."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from quantpipe.data.tabular_stats import TABULAR_STATS
from quantpipe.errors import ModelError
from quantpipe.models import torchvision_models as tv
from quantpipe.models.checkpoint import load_weights
from quantpipe.models.cifar_resnet import cifar_resnet
from quantpipe.models.cifar_zoo.specs import zoo_specs
from quantpipe.models.deploy import to_deploy_form
from quantpipe.models.fmnist_mobile import fmnist_mobilenetv2, fmnist_shufflenetv2
from quantpipe.models.layout_hint import layout_hint
from quantpipe.models.small import DigitsMLP, FmnistCNN, TabularMLP
from quantpipe.models.small_fcn import SmallFCN
from quantpipe.models.spec import (
    CIFAR_PREPROCESSING,
    IMAGENET_PREPROCESSING,
    ModelSpec,
    Preprocessing,
)
from quantpipe.models.user_model import is_user_model_ref, user_model_spec

RANDOM_INIT_SEED = 0
FMNIST_PREPROCESSING = Preprocessing(channels=1, size=(28, 28), mean=(0.2860,), std=(0.3530,))
# Mosaics of whole garments: the same pixel statistics as Fashion-MNIST itself.
FMNIST_SEG_PREPROCESSING = Preprocessing(channels=1, size=(56, 56), mean=(0.2860,), std=(0.3530,))
# sklearn's digits are 8×8 with values 0..16; scaled to [0, 1] by the loader.
DIGITS_PREPROCESSING = Preprocessing(channels=1, size=(8, 8), mean=(0.3,), std=(0.4,))


def _seg_preprocessing(h: int, w: int) -> Preprocessing:
    return Preprocessing(3, (h, w), IMAGENET_PREPROCESSING.mean, IMAGENET_PREPROCESSING.std)


def _builtin_specs() -> dict[str, ModelSpec]:
    specs = [
        *(
            ModelSpec(
                f"cifar10-resnet{d}",
                partial(cifar_resnet, d),
                CIFAR_PREPROCESSING,
                "classification",
                10,
                "required",
                f"CIFAR-10 ResNet-{d} (option-A shortcut)",
            )
            for d in (20, 32, 44, 56)
        ),
        *zoo_specs(),
        *(
            ModelSpec(
                name,
                tv.classifier_builder(name),
                IMAGENET_PREPROCESSING,
                "classification",
                1000,
                "optional",
                f"torchvision {name} (ImageNet classifier)",
            )
            for name in tv.CLASSIFIERS
        ),
        ModelSpec(
            "fcn_resnet50",
            tv.fcn_resnet50,
            _seg_preprocessing(520, 520),
            "segmentation",
            21,
            "optional",
            "torchvision FCN, ResNet-50 backbone, 21 classes",
        ),
        ModelSpec(
            "lraspp_mobilenet_v3_large",
            tv.lraspp_mobilenet_v3_large,
            _seg_preprocessing(520, 520),
            "segmentation",
            21,
            "optional",
            "torchvision LR-ASPP, MobileNetV3-Large backbone, 21 classes",
        ),
        ModelSpec(
            "fcn-resnet18-19",
            tv.fcn_resnet18,
            _seg_preprocessing(512, 1024),
            "segmentation",
            19,
            "optional",
            "FCN, ResNet-18 backbone, 19 classes",
        ),
        ModelSpec(
            "fmnist-cnn",
            FmnistCNN,
            FMNIST_PREPROCESSING,
            "classification",
            10,
            "trained",
            "small residual CNN for Fashion-MNIST",
        ),
        ModelSpec(
            "fmnist-mobilenetv2",
            fmnist_mobilenetv2,
            FMNIST_PREPROCESSING,
            "classification",
            10,
            "trained",
            "MobileNetV2 ×0.5 for Fashion-MNIST (depthwise, ReLU6)",
            # Measured: batch 256 for 5 epochs stopped at 89.80 % on test, batch 128 at 90.42.
            train_defaults=(("epochs", 6), ("batch_size", 128), ("channels_last", True)),
        ),
        ModelSpec(
            "fmnist-shufflenetv2",
            fmnist_shufflenetv2,
            FMNIST_PREPROCESSING,
            "classification",
            10,
            "trained",
            "ShuffleNetV2 ×0.5 for Fashion-MNIST (depthwise, channel shuffle)",
            train_defaults=(("epochs", 5), ("batch_size", 128), ("channels_last", True)),
        ),
        ModelSpec(
            "fmnist-seg-fcn",
            SmallFCN,
            FMNIST_SEG_PREPROCESSING,
            "segmentation",
            11,
            "trained",
            "small FCN (ResNet-style backbone) for the fmnist-seg mosaics, 56×56",
            train_defaults=(("epochs", 4), ("batch_size", 64), ("channels_last", True)),
        ),
        ModelSpec(
            "digits-mlp",
            DigitsMLP,
            DIGITS_PREPROCESSING,
            "classification",
            10,
            "trained",
            "MLP for scikit-learn's digits (8×8)",
            # 1,078 training images: batch 256 made 4 steps an epoch (72 % on test).
            train_defaults=(("epochs", 30), ("batch_size", 32)),
        ),
    ]
    specs += [_tabular_spec(name, classes) for name, classes in (("breast-cancer", 2), ("wine", 3))]
    return {s.name: s for s in specs}


def _tabular_spec(data: str, classes: int) -> ModelSpec:
    """A tabular MLP for one of the bundled tabular data sets: its features (F×1×1 inputs)
    standardised with the train pool's statistics, recorded as the model's preprocessing."""
    mean, std = TABULAR_STATS[data]
    return ModelSpec(
        f"tabular-mlp-{data}",
        partial(TabularMLP, len(mean), classes),
        Preprocessing(channels=len(mean), size=(1, 1), mean=mean, std=std),
        "classification",
        classes,
        "trained",
        f"MLP for scikit-learn's {data} table ({len(mean)} features, standardised)",
        # A few hundred rows: small batches, many epochs (a second on one core).
        train_defaults=(("epochs", 60), ("batch_size", 32), ("lr", 3e-3)),
    )


MODELS: dict[str, ModelSpec] = _builtin_specs()


def get_model_spec(name: str, input_shape: tuple[int, ...] | None = None) -> ModelSpec:
    """Resolve a registry name or `file.py:factory`; unknown names suggest close ones."""
    if is_user_model_ref(name):
        return user_model_spec(name, input_shape)
    if name in MODELS:
        return MODELS[name]
    close = difflib.get_close_matches(name, list(MODELS), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "run `quantpipe models` for the list"
    raise ModelError(f"unknown model {name!r}: {hint} (or pass path/to/file.py:factory)")


def build_model(spec: ModelSpec, weights: str | None) -> nn.Module:
    """Build `spec` in eval mode, loading `weights` when given; required weights are enforced."""
    if weights is None and spec.weights == "required":
        raise ModelError(f"model {spec.name} needs trained weights: pass --weights FILE")
    if weights is not None:
        model = spec.build()
        load_weights(
            model, weights, spec.name, partial(layout_hint, model_name=spec.name, specs=MODELS)
        )
        return to_deploy_form(model.eval(), spec)
    # Without weights every stage must see the same random model (export's ONNX and btc's
    # or eval's PyTorch model were different draws before): a fixed seed, with the global
    # random state left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return to_deploy_form(spec.build().eval(), spec)


@dataclass(frozen=True)
class ModelSummary:
    name: str
    input_shape: tuple[int, ...]
    parameters: int
    task: str
    weights: str
    description: str


def summarize(spec: ModelSpec) -> ModelSummary:
    # Built on the meta device: counting parameters of resnet50/FCN costs no memory or time.
    with torch.device("meta"):
        params = sum(p.numel() for p in spec.build().parameters())
    return ModelSummary(
        spec.name, spec.input_shape, params, spec.task, spec.describe_weights(), spec.description
    )
