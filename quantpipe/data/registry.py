"""The data set registry: `NAME[:PATH]` → a Dataset with named pools.

A bare path is accepted too and its kind inferred (.npz, .tar, CIFAR-10 or CIFAR-100
pickle directory, Cityscapes tree, image folder).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantpipe.data import fashion_mnist
from quantpipe.data.cifar100 import is_cifar100_pickle_dir, load_cifar100_pickle
from quantpipe.data.cifar_pickle import is_cifar_pickle_dir, load_cifar_pickle
from quantpipe.data.cityscapes import load_cityscapes
from quantpipe.data.digits import load_digits_pools
from quantpipe.data.fmnist_seg import load_fmnist_seg
from quantpipe.data.image_folder import load_image_folder
from quantpipe.data.npz import load_npz
from quantpipe.data.sources import Source
from quantpipe.data.tabular import TABULAR_SETS, load_tabular
from quantpipe.errors import DataError


@dataclass(frozen=True)
class DatasetKind:
    name: str
    description: str
    load: Callable[[Path | None], dict[str, Source]]
    default_path: Path | None = None
    needs_path: bool = True
    # False where samples may come without labels (then stages score agreement with FP32).
    always_labelled: bool = True


def _needs(path: Path | None, kind: str) -> Path:
    if path is None:
        raise DataError(f"data set {kind} needs a path: pass --data {kind}:PATH")
    if not path.exists():
        raise DataError(f"data path not found: {path} (from --data {kind}:{path})")
    return path


def _load_cifar10(path: Path | None) -> dict[str, Source]:
    path = _needs(path, "cifar10")
    return load_cifar_pickle(path) if is_cifar_pickle_dir(path) else load_image_folder(path)


def _load_cifar100(path: Path | None) -> dict[str, Source]:
    path = _needs(path, "cifar100")
    return load_cifar100_pickle(path) if is_cifar100_pickle_dir(path) else load_image_folder(path)


def _load_fmnist(path: Path | None) -> dict[str, Source]:
    return fashion_mnist.load_fashion_mnist(path or fashion_mnist.DEFAULT_PATH)


def _load_fmnist_seg(path: Path | None) -> dict[str, Source]:
    return load_fmnist_seg(path or fashion_mnist.DEFAULT_PATH)


def _tabular_kind(name: str) -> DatasetKind:
    spec = TABULAR_SETS[name]
    return DatasetKind(
        name,
        f"scikit-learn's {name} table: {spec.features} features, {spec.classes} classes",
        lambda _p: load_tabular(name),
        needs_path=False,
    )


DATASETS: dict[str, DatasetKind] = {
    k.name: k
    for k in (
        DatasetKind(
            "cifar10",
            "CIFAR-10: pickle batches dir, image-folder tree, or .tar of one",
            _load_cifar10,
        ),
        DatasetKind(
            "cifar100",
            "CIFAR-100, fine labels: cifar-100-python dir, image-folder tree, or .tar",
            _load_cifar100,
        ),
        DatasetKind(
            "fashion-mnist",
            "Fashion-MNIST idx(.gz) files (train 60k + test 10k)",
            _load_fmnist,
            fashion_mnist.DEFAULT_PATH,
            needs_path=False,
        ),
        DatasetKind(
            "fmnist-seg",
            "segmentation: 56×56 mosaics of 4 Fashion-MNIST garments (15k + 2.5k)",
            _load_fmnist_seg,
            fashion_mnist.DEFAULT_PATH,
            needs_path=False,
        ),
        DatasetKind(
            "cityscapes",
            "Cityscapes gtFine, 19 classes, at 512×1024: dir with leftImg8bit/, gtFine/",
            lambda p: load_cityscapes(_needs(p, "cityscapes")),
        ),
        *(_tabular_kind(name) for name in TABULAR_SETS),
        DatasetKind(
            "digits",
            "scikit-learn's bundled 8×8 digits (1,797 samples)",
            lambda _p: load_digits_pools(),
            needs_path=False,
        ),
        DatasetKind(
            "imagefolder",
            "any [pool/]class/image tree, or a .tar of one",
            lambda p: load_image_folder(_needs(p, "imagefolder")),
        ),
        DatasetKind(
            "npz",
            ".npz with x (images or model tensors) and optional y",
            lambda p: load_npz(_needs(p, "npz")),
            always_labelled=False,
        ),
    )
}


@dataclass(frozen=True)
class Dataset:
    """A loaded data set: its kind, where it came from, and its pools."""

    kind: str
    path: str | None
    pools: dict[str, Source]

    def provenance(self) -> dict[str, Any]:
        return {"dataset": self.kind, "path": self.path}


def open_dataset(spec: str) -> Dataset:
    """Open `NAME[:PATH]` or a bare path."""
    kind, path = parse_data_spec(spec)
    pools = DATASETS[kind].load(path)
    if not pools or all(len(s) == 0 for s in pools.values()):
        raise DataError(f"data set {spec!r} holds no samples")
    return Dataset(kind, None if path is None else str(path), pools)


def parse_data_spec(spec: str) -> tuple[str, Path | None]:
    name, sep, rest = spec.partition(":")
    if name in DATASETS:
        return name, (Path(rest) if sep and rest else DATASETS[name].default_path)
    path = Path(spec)
    if path.exists():
        return _infer_kind(path), path
    if sep or "/" in spec or "." in spec:
        raise DataError(f"data path not found: {spec} (check --data)")
    close = difflib.get_close_matches(name, list(DATASETS), n=2, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "run `quantpipe datasets`"
    raise DataError(f"unknown data set {name!r}: {hint}")


def _infer_kind(path: Path) -> str:
    if path.suffix == ".npz":
        return "npz"
    if is_cifar_pickle_dir(path):
        return "cifar10"
    if is_cifar100_pickle_dir(path):
        return "cifar100"
    if (path / "leftImg8bit").is_dir() and (path / "gtFine").is_dir():
        return "cityscapes"
    return "imagefolder"
