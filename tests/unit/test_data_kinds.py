"""The data kinds beyond the classic image sets: CIFAR-100, fmnist-seg, Cityscapes, tabular."""

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from quantpipe.data import cityscapes, fashion_mnist, fmnist_seg, tabular
from quantpipe.data.lazy_masks import LazyMasks
from quantpipe.data.registry import DATASETS, Dataset, open_dataset, parse_data_spec
from quantpipe.data.selection import select
from quantpipe.data.sources import array_source
from quantpipe.data.splits import split_indices
from quantpipe.data.tabular_stats import TABULAR_STATS
from quantpipe.errors import DataError
from quantpipe.models.spec import Preprocessing

RGB32 = Preprocessing(3, (32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


# --- CIFAR-100 ---------------------------------------------------------------------------


def _cifar100_tree(root: Path, counts: dict[str, int]) -> dict[str, tuple[np.ndarray, list[int]]]:
    root.mkdir()
    rng = np.random.default_rng(0)
    names = [f"class{i:02d}".encode() for i in range(100)]
    with open(root / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": names, b"coarse_label_names": [b"x"] * 20}, f)
    written = {}
    for pool, n in counts.items():
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 100, n).tolist()
        with open(root / pool, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": labels, b"coarse_labels": [0] * n}, f)
        written[pool] = (data, labels)
    return written


def test_cifar100_pickles_give_both_pools_fine_labels_and_meta_names(tmp_path: Path) -> None:
    written = _cifar100_tree(tmp_path / "cifar-100-python", {"train": 5, "test": 3})
    for spec in (f"cifar100:{tmp_path / 'cifar-100-python'}", str(tmp_path / "cifar-100-python")):
        ds = open_dataset(spec)
        assert ds.kind == "cifar100" and set(ds.pools) == {"train", "test"}
        for pool, (data, labels) in written.items():
            src = ds.pools[pool]
            assert len(src) == len(labels) and src.labels.tolist() == labels
            assert src.class_names[:2] == ("class00", "class01") and len(src.class_names) == 100
            image = src.read(np.array([1]))[0]  # rows of red, then green, then blue
            assert image.shape == (32, 32, 3) and image.dtype == np.uint8
            assert image[0, 1, 0] == data[1, 1] and image[0, 1, 2] == data[1, 2048 + 1]


def test_cifar100_also_reads_an_image_folder_tree(tmp_path: Path) -> None:
    for cls in ("apple", "bee"):
        (tmp_path / "tree" / "test" / cls).mkdir(parents=True)
        Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "tree" / "test" / cls / "0.png")
    ds = open_dataset(f"cifar100:{tmp_path / 'tree'}")
    assert ds.pools["test"].class_names == ("apple", "bee")


def test_cifar100_refuses_code_and_bad_labels(tmp_path: Path) -> None:
    _cifar100_tree(tmp_path / "c", {"test": 2})
    with open(tmp_path / "c" / "test", "wb") as f:
        pickle.dump({b"data": Path("x"), b"fine_labels": [0]}, f)  # names a class: refused
    with pytest.raises(DataError, match="refusing to load pathlib"):
        open_dataset(f"cifar100:{tmp_path / 'c'}")
    with open(tmp_path / "c" / "test", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [100]}, f)
    with pytest.raises(DataError, match=r"fine labels outside 0\.\.99"):
        open_dataset(f"cifar100:{tmp_path / 'c'}")
    with open(tmp_path / "c" / "test", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match="no fine_labels keys"):
        open_dataset(f"cifar100:{tmp_path / 'c'}")


# --- fmnist-seg --------------------------------------------------------------------------


def test_mosaics_place_four_garments_and_label_pixels_by_value() -> None:
    values = np.array([0, 5, 8, 47, 48, 200, 255, 30], dtype=np.uint8)
    images = np.repeat(values, 28 * 28).reshape(8, 28, 28)  # garment i: constant values[i]
    labels = np.arange(8)
    canvases, masks = fmnist_seg.build_mosaics(images, labels)
    assert canvases.shape == masks.shape == (2, 56, 56) and masks.dtype == np.uint8
    order = np.random.default_rng(fmnist_seg.MOSAIC_SEED).permutation(8)
    for m in range(2):
        for q, (r, c) in enumerate(((0, 0), (0, 28), (28, 0), (28, 28))):
            garment = order[4 * m + q]
            quadrant = np.s_[m, r : r + 28, c : c + 28]
            assert (canvases[quadrant] == values[garment]).all()
            v = values[garment]
            want = 0 if v < 8 else (garment + 1 if v >= 48 else 255)
            assert (masks[quadrant] == want).all(), (v, want)


@pytest.mark.skipif(
    not fashion_mnist.DEFAULT_PATH.is_dir(), reason="Fashion-MNIST (dataset-fashion-mnist) absent"
)
def test_fmnist_seg_pools_use_each_garment_once_and_test_images_only() -> None:
    ds = open_dataset("fmnist-seg")
    assert {p: len(s) for p, s in ds.pools.items()} == {"train": 15000, "test": 2500}
    test = ds.pools["test"]
    assert test.class_names == ("background", *fashion_mnist.CLASSES)
    assert test.labels.shape == (2500, 56, 56) and test.labels.dtype == np.uint8
    garments = fashion_mnist.read_fashion_mnist(fashion_mnist.DEFAULT_PATH, "x")["test"][0]
    canvases = test.read(np.arange(2500))
    quadrants = canvases.reshape(2500, 2, 28, 2, 28).transpose(0, 1, 3, 2, 4).reshape(-1, 28, 28)
    assert {q.tobytes() for q in quadrants} == {g.tobytes() for g in garments}
    # The task does not depend on --seed: only the split order does.
    x0, y0 = select(ds, "test", Preprocessing(1, (56, 56), (0.3,), (0.3,)), seed=0).arrays()
    assert x0.shape == (2500, 1, 56, 56) and y0.shape == (2500, 56, 56)
    np.testing.assert_array_equal(np.sort(y0, axis=None), np.sort(test.labels, axis=None))


def test_fmnist_seg_without_the_files_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope; install .*dataset-fashion-mnist.*fmnist-seg:PATH"):
        open_dataset(f"fmnist-seg:{tmp_path / 'nope'}")


# --- Cityscapes --------------------------------------------------------------------------

_FRAMES = {"train": {"aachen": 5, "bochum": 5}, "val": {"frankfurt": 2}}  # 10 train: 1 held out


def _cityscapes_tree(root: Path, size: tuple[int, int] = (64, 128)) -> dict[str, np.ndarray]:
    """The official layout with random images and label IDs; returns the label IDs by image."""
    rng = np.random.default_rng(0)
    ids = {}
    for pool, cities in _FRAMES.items():
        for city, n in cities.items():
            for k in range(n):
                stem = f"{city}_{k:06d}_000019"
                images, labels = (root / top / pool / city for top in ("leftImg8bit", "gtFine"))
                images.mkdir(parents=True, exist_ok=True)
                labels.mkdir(parents=True, exist_ok=True)
                image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(image).save(images / f"{stem}_leftImg8bit.png")
                label_ids = rng.integers(0, 34, size, dtype=np.uint8)
                Image.fromarray(label_ids).save(labels / f"{stem}_gtFine_labelIds.png")
                ids[f"{pool}/{stem}"] = label_ids
    return ids


def _train_ids(label_ids: np.ndarray) -> np.ndarray:
    return np.asarray(cityscapes.TRAIN_IDS, dtype=np.uint8)[label_ids]


def test_cityscapes_train_ids_follow_the_official_table() -> None:
    table = cityscapes.TRAIN_IDS
    assert (table[7], table[8], table[26], table[33]) == (0, 1, 13, 18)
    assert sum(t != 255 for t in table) == 19 and table[0] == table[34] == 255
    assert cityscapes.CLASSES[13] == "car" and len(cityscapes.CLASSES) == 19


def test_cityscapes_small_images_keep_their_size_and_map_label_ids(tmp_path: Path) -> None:
    ids = _cityscapes_tree(tmp_path / "cs")
    for spec in (f"cityscapes:{tmp_path / 'cs'}", str(tmp_path / "cs")):
        ds = open_dataset(spec)
        assert ds.kind == "cityscapes"
        assert {p: len(s) for p, s in ds.pools.items()} == {"train": 10, "val": 2}
    train = ds.pools["train"]
    assert train.class_names == cityscapes.CLASSES
    assert (
        train.labels.ndim == 3 and train.labels.shape == (10, 64, 128) and len(train.labels) == 10
    )
    masks = train.labels[np.array([6, 0])]  # sorted by city: bochum frame 1, aachen frame 0
    assert masks.dtype == np.uint8 and masks.shape == (2, 64, 128)
    np.testing.assert_array_equal(masks[0], _train_ids(ids["train/bochum_000001_000019"]))
    np.testing.assert_array_equal(masks[1], _train_ids(ids["train/aachen_000000_000019"]))
    assert train.read(np.array([0, 1])).shape == (2, 64, 128, 3)


def test_cityscapes_shrinks_larger_images_bilinear_and_masks_nearest(tmp_path: Path) -> None:
    ids = _cityscapes_tree(tmp_path / "cs")
    val = cityscapes.load_cityscapes(tmp_path / "cs", size=(32, 64))["val"]
    assert val.read(np.array([0])).shape == (1, 32, 64, 3)
    mask = val.labels[np.array([1])][0]
    full = Image.fromarray(ids["val/frankfurt_000001_000019"])
    want = np.asarray(full.resize((64, 32), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(mask, _train_ids(want))


def test_cityscapes_val_is_the_test_pool_and_val_is_held_out_of_train(tmp_path: Path) -> None:
    _cityscapes_tree(tmp_path / "cs")
    ds = open_dataset(f"cityscapes:{tmp_path / 'cs'}")
    pre = Preprocessing(3, (64, 128), (0.5,) * 3, (0.25,) * 3)
    test = select(ds, "test", pre)
    assert test.pool == "val" and len(test) == 2 and test.labelled
    x, y = next(test.batches(1))
    assert x.shape == (1, 3, 64, 128) and y.shape == (1, 64, 128) and y.dtype == np.uint8
    val, train = select(ds, "val", pre), select(ds, "train", pre)
    assert val.pool == train.pool == "train" and len(val) == 1
    assert sorted([*val.indices, *train.indices]) == list(range(10))


def test_cityscapes_missing_label_file_names_image_and_label(tmp_path: Path) -> None:
    _cityscapes_tree(tmp_path / "cs")
    label = tmp_path / "cs/gtFine/train/bochum/bochum_000000_000019_gtFine_labelIds.png"
    label.unlink()
    expected = r"bochum_000000_000019_leftImg8bit\.png has no label file .*/gtFine/train/bochum/"
    with pytest.raises(DataError, match=expected + label.name.replace(".", r"\.")):
        open_dataset(f"cityscapes:{tmp_path / 'cs'}")
    with pytest.raises(DataError, match="no Cityscapes images under"):
        open_dataset(f"cityscapes:{tmp_path}")


def test_lazy_masks_name_a_mask_of_another_size() -> None:
    masks = LazyMasks(2, lambda i: np.zeros((4, 4 + i), np.uint8), lambda i: f"m{i}.png", (4, 4))
    assert masks[np.array([0, 0])].shape == (2, 4, 4)
    with pytest.raises(DataError, match=r"mask m1\.png is 5×4"):
        masks[np.array([1])]


# --- Splits with a val pool and no test pool ----------------------------------------------


def test_a_val_pool_without_test_pool_is_the_test_split() -> None:
    labels = np.repeat(np.arange(2), 50)
    pools = {
        "train": array_source(np.zeros((100, 1, 1), np.uint8), labels),
        "val": array_source(np.zeros((10, 1, 1), np.uint8), labels[:10]),
    }
    assert split_indices(pools, "test", 0)[0] == "val"
    (pool_val, val), (_, train) = split_indices(pools, "val", 0), split_indices(pools, "train", 0)
    assert pool_val == "train" and len(val) == 10 and len(train) == 90
    assert not set(val) & set(train)
    pools["test"] = pools["val"]  # with an official test pool, val is the official val pool
    assert split_indices(pools, "val", 0)[0] == "val"
    assert len(split_indices(pools, "train", 0)[1]) == 100


# --- Tabular ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "sizes"), [("breast-cancer", (427, 142)), ("wine", (133, 45))])
def test_tabular_pools_are_fixed_stratified_and_feed_standardised_inputs(
    name: str, sizes: tuple[int, int]
) -> None:
    spec = tabular.TABULAR_SETS[name]
    ds = open_dataset(name)
    train, test = ds.pools["train"], ds.pools["test"]
    assert (len(train), len(test)) == sizes and train.class_names == spec.class_names
    assert train.read(np.array([0])).shape == (1, 1, 1, spec.features) and train.max_value == 1.0
    share = np.bincount(test.labels) / np.bincount(np.concatenate([train.labels, test.labels]))
    np.testing.assert_allclose(share, 0.25, atol=0.01)
    mean, std = TABULAR_STATS[name]
    pre = Preprocessing(spec.features, (1, 1), mean, std)
    x, y = select(ds, "train", pre, seed=5).arrays()
    assert y is not None and len(y) == len(x)
    x_all = np.concatenate([x, select(ds, "val", pre, seed=5).arrays()[0]])
    assert x.shape[1:] == (spec.features, 1, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x_all.mean(axis=0).ravel(), 0.0, atol=1e-4)
    np.testing.assert_allclose(x_all.std(axis=0).ravel(), 1.0, atol=1e-4)
    for seed in (0, 7):  # the official test pool does not depend on --seed
        pool, idx = split_indices(ds.pools, "test", seed)
        assert pool == "test" and sorted(idx.tolist()) == list(range(sizes[1]))


def test_tabular_stats_module_matches_a_recomputation() -> None:
    generated: dict = {}
    exec(tabular.stats_module(), generated)  # what `python -m quantpipe.data.tabular` prints
    fresh = generated["TABULAR_STATS"]
    assert fresh.keys() == TABULAR_STATS.keys() == tabular.TABULAR_SETS.keys()
    for name, (mean, std) in TABULAR_STATS.items():
        assert len(mean) == len(std) == tabular.TABULAR_SETS[name].features
        assert fresh[name] == tabular.standardisation(name)
        np.testing.assert_allclose(mean, fresh[name][0], rtol=1e-6)
        np.testing.assert_allclose(std, fresh[name][1], rtol=1e-6)
        assert min(std) >= tabular.STD_FLOOR


def test_tabular_class_names_match_scikit_learn() -> None:
    from sklearn import datasets

    for spec in tabular.TABULAR_SETS.values():
        assert tuple(getattr(datasets, spec.loader)().target_names) == spec.class_names


def test_registry_lists_the_new_kinds_without_importing_scikit_learn() -> None:
    for name in ("cifar100", "fmnist-seg", "cityscapes", "breast-cancer", "wine"):
        assert DATASETS[name].description
    assert [DATASETS[n].needs_path for n in ("fmnist-seg", "breast-cancer", "wine")] == [False] * 3
    assert parse_data_spec("wine") == ("wine", None)
    probe = "import sys, quantpipe.data.registry; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_selection_labelled_does_not_read_labels() -> None:
    reads = []
    masks = LazyMasks(3, lambda i: reads.append(i) or np.zeros((2, 2), np.uint8), str, (2, 2))
    from quantpipe.data.sources import Source

    src = Source("image", 3, lambda idx: np.zeros((len(idx), 2, 2), np.uint8), masks)
    sel = select(Dataset("t", None, {"all": src}), "all", Preprocessing(1, (2, 2), (0.0,), (1.0,)))
    assert sel.labelled and reads == []
    assert [y.shape for _, y in sel.batches(2)] == [(2, 2, 2), (1, 2, 2)]
    assert sorted(reads) == [0, 1, 2]
