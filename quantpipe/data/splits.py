"""Deterministic, named splits: later stages never select on the data they report.

- A data set with an official train pool: `val` is a stratified hold-out of it
  (10 %, at most 5,000), `train` the rest, `calib` draws from `train`; `test` and
  `all` are the official test pool. With `train`, `val` and `test` pools, `val` is
  the official one; with only `train` and `val` (Cityscapes: its test labels are not
  public), the official `val` pool is the test pool and `val` is held out of `train`.
- A single pool (e.g. the CIFAR-10 JPEG test set, digits, an .npz): a seeded
  stratified permutation gives `test` 40 %, `val` 20 %, `train` 40 %; `calib` draws
  from `train`; `all` is every sample.

`val`, `test` and `calib` are disjoint. Every split is returned in a seeded,
class-interleaved order, so taking its first N samples (a calibration count, a
quick evaluation) stays class-balanced: the JPEG tar is sorted by class, and a
contiguous slice would be one class.
"""

from __future__ import annotations

import numpy as np

from quantpipe.data.sources import Labels, Source
from quantpipe.errors import DataError

SPLITS = ("train", "calib", "val", "test", "all")
_POOL_TEST, _POOL_VAL = 0.4, 0.2
_HOLDOUT_FRACTION, _HOLDOUT_MAX = 0.1, 5000


def split_indices(pools: dict[str, Source], split: str, seed: int) -> tuple[str, np.ndarray]:
    """Return (pool name, sample indices in that pool) for a named split."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    if "train" in pools and ({"test", "val"} & set(pools)):
        return _official_split(pools, split, seed)
    (pool_name, source), *rest = pools.items()
    if rest:
        raise DataError(f"cannot split pools {sorted(pools)}: expected train + test, or one pool")
    return pool_name, _single_pool_split(source, split, seed)


def _official_split(pools: dict[str, Source], split: str, seed: int) -> tuple[str, np.ndarray]:
    test_pool = "test" if "test" in pools else "val"
    if split in ("test", "all"):
        return test_pool, stratified_order(pools[test_pool].labels, len(pools[test_pool]), seed)
    if split == "val" and "val" in pools and test_pool != "val":
        return "val", stratified_order(pools["val"].labels, len(pools["val"]), seed)
    order = stratified_order(pools["train"].labels, len(pools["train"]), seed)
    # A `val` pool serving as the test pool (Cityscapes) leaves `val` to the hold-out.
    own_val = "val" in pools and test_pool != "val"
    n_val = 0 if own_val else min(_HOLDOUT_MAX, int(len(order) * _HOLDOUT_FRACTION))
    parts = {"val": order[:n_val], "train": order[n_val:], "calib": order[n_val:]}
    return "train", parts[split]


def _single_pool_split(source: Source, split: str, seed: int) -> np.ndarray:
    if split == "all":
        return np.arange(len(source))
    order = stratified_order(source.labels, len(source), seed)
    n_test = round(len(order) * _POOL_TEST)
    n_val = round(len(order) * _POOL_VAL)
    parts = {
        "test": order[:n_test],
        "val": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
        "calib": order[n_test + n_val :],
    }
    return parts[split]


def stratified_order(labels: Labels, count: int, seed: int) -> np.ndarray:
    """A seeded permutation in which every prefix holds the classes in proportion.

    Each sample of a class with n members, at random rank r, gets the key (r + u) / n
    (u uniform in [0, 1)); sorting by key interleaves the classes evenly. Without
    class labels (none, or segmentation masks) it is a plain seeded permutation.
    """
    rng = np.random.default_rng(seed)
    if labels is None or labels.ndim != 1:
        return rng.permutation(count)
    labels = np.asarray(labels)  # class indices are always held in memory
    keys = np.empty(count, dtype=np.float64)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        ranks = rng.permutation(len(members))
        keys[members] = (ranks + rng.random(len(members))) / len(members)
    return np.argsort(keys, kind="stable")
