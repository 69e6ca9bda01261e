"""What the pipeline needs to know about a model besides its weights."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the spec is read by torch-free code (data, ONNX-only evaluation)
    from torch import nn

Task = Literal["classification", "segmentation"]
WeightsPolicy = Literal["required", "optional", "trained"]


@dataclass(frozen=True)
class Preprocessing:
    """How raw images become model inputs; recorded in the manifest and the ONNX metadata.

    Pixels are scaled to [0, 1], optionally resized (shorter side to `resize`, bilinear)
    and centre-cropped to `size`, then normalised with `mean` and `std` per channel.
    """

    channels: int
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Preprocessing:
        return Preprocessing(
            channels=int(d["channels"]),
            size=(int(d["size"][0]), int(d["size"][1])),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            resize=None if d.get("resize") is None else int(d["resize"]),
        )


@dataclass(frozen=True)
class ModelSpec:
    """A named, buildable model with its input contract.

    `build` makes a randomly initialised module; weights are loaded separately so
    that nothing is ever downloaded.
    """

    name: str
    build: Callable[[], nn.Module]
    preprocessing: Preprocessing
    task: Task
    num_classes: int
    weights: WeightsPolicy
    description: str
    # Train-time → deploy form (e.g. RepVGG's branches fused into one conv), applied after
    # the weights load and checked numerically; every stage then sees the deploy form.
    deploy: Callable[[nn.Module], nn.Module] | None = None
    deploy_form: str = ""  # what `deploy` does, for the metadata and reports
    # The `train` stage's recipe for models it trains (epochs, batch_size, lr, weight_decay),
    # as pairs so the spec stays hashable; the user's flags override it.
    train_defaults: tuple[tuple[str, Any], ...] = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, without the batch axis: (C, H, W)."""
        return (self.preprocessing.channels, *self.preprocessing.size)

    def describe_weights(self) -> str:
        return {
            "required": "--weights FILE (required)",
            "optional": "--weights FILE (optional; random init otherwise)",
            "trained": "trained by `quantpipe train` (or --weights FILE)",
        }[self.weights]


CIFAR_PREPROCESSING = Preprocessing(
    channels=3, size=(32, 32), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)
IMAGENET_PREPROCESSING = Preprocessing(
    channels=3, size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize=256
)
