"""BTC figures in the layout of the paper: weight histograms before/after coding (Fig. 1)
and accuracy versus block size (Fig. 6)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import matplotlib

matplotlib.use("Agg")  # files only; never a window

import matplotlib.pyplot as plt
import numpy as np


class Point(Protocol):
    """One coding of a search: its τ, block size, test accuracy and effective bits."""

    @property
    def tau(self) -> float | None: ...
    @property
    def block_size(self) -> int: ...
    @property
    def test_accuracy(self) -> float: ...
    @property
    def b_eff(self) -> float: ...


def weight_histograms(
    original: np.ndarray, btc: np.ndarray, uniform: np.ndarray, layer: str, path: Path
) -> None:
    """Histogram of one layer's weights: FP32, BTC-decoded and 8-bit uniform (paper Fig. 1)."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), sharex=True, sharey=True)
    bins = np.linspace(float(original.min()), float(original.max()), 121)
    for ax, values, title in zip(
        axes,
        (original, btc, uniform),
        ("FP32", "BTC (decoded)", "8-bit uniform per tensor"),
        strict=True,
    ):
        ax.hist(values.ravel(), bins=bins, color="#3465a4")
        ax.set_title(title)
        ax.set_xlabel("weight value")
    axes[0].set_ylabel(f"count ({layer})")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def accuracy_vs_block_size(candidates: Sequence[Point], fp32: float, path: Path) -> None:
    """Test accuracy and effective bits per block size (paper Fig. 6); one line per τ
    (candidates of a budget ladder, which have none, form one line)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for tau in sorted({c.tau for c in candidates}, key=lambda t: -1.0 if t is None else t):
        rows = sorted((c for c in candidates if c.tau == tau), key=lambda c: c.block_size)
        ax.plot(
            [c.block_size for c in rows],
            [c.test_accuracy for c in rows],
            "o-",
            label="BTC" if tau is None else f"BTC τ={tau:g}",
        )
        for c in rows:
            ax.annotate(
                f"{c.b_eff:.2f} b",
                (c.block_size, c.test_accuracy),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=8,
            )
    ax.axhline(fp32, color="gray", linestyle="--", label="FP32")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("block size B")
    ax.set_ylabel("top-1 % (test split)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
