"""Which models the zoo runs, on which data, and how much of it (full or quick)."""

from __future__ import annotations

from dataclasses import dataclass

from quantpipe.errors import QuantpipeError

# Every built-in model that `train` fits, with the data set it is trained and scored on.
BUILTIN: dict[str, str] = {
    "fmnist-cnn": "fashion-mnist",
    "fmnist-mobilenetv2": "fashion-mnist",
    "fmnist-shufflenetv2": "fashion-mnist",
    "fmnist-seg-fcn": "fmnist-seg",
    "digits-mlp": "digits",
    "tabular-mlp-breast-cancer": "breast-cancer",
    "tabular-mlp-wine": "wine",
}


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo: a registry name, its data (`NAME[:PATH]`) and, for a
    checkpoint the user brings, its weights file (None: trained by the zoo)."""

    model: str
    data: str
    weights: str | None = None

    @property
    def run_name(self) -> str:
        return self.model


@dataclass(frozen=True)
class ZooCounts:
    """Sample counts and training length; None means the stage's own default (all)."""

    epochs: int | None = None
    eval_count: int | None = None
    calib_count: int = 1024
    btc_calib_count: int = 4096
    retune_steps: int | None = None

    @staticmethod
    def quick() -> ZooCounts:
        """Small counts for CI: the path through every stage, not the published figures."""
        return ZooCounts(eval_count=400, calib_count=128, btc_calib_count=256, retune_steps=15)


def builtin_entries(names: tuple[str, ...] | None) -> list[ZooEntry]:
    """The built-in models named (all when None), in the table's order."""
    wanted = tuple(BUILTIN) if names is None else names
    unknown = [n for n in wanted if n not in BUILTIN]
    if unknown:
        raise QuantpipeError(
            f"--models {','.join(unknown)} is not a built-in trained model; choose from "
            f"{', '.join(BUILTIN)} (a checkpoint goes in --checkpoint MODEL FILE DATA)"
        )
    return [ZooEntry(n, BUILTIN[n]) for n in wanted]


def checkpoint_entry(model: str, weights: str, data: str) -> ZooEntry:
    """A user's checkpoint of a registry model, with the data to score it on."""
    from quantpipe.models.checkpoint import check_weights_argument
    from quantpipe.models.registry import get_model_spec

    get_model_spec(model)  # an unknown name is refused here, with close matches
    check_weights_argument(weights)
    return ZooEntry(model, data, weights)
