import gzip
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from quantpipe.data.fashion_mnist import read_idx
from quantpipe.data.registry import open_dataset, parse_data_spec
from quantpipe.data.selection import select
from quantpipe.data.sources import array_source
from quantpipe.data.splits import split_indices, stratified_order
from quantpipe.errors import DataError
from quantpipe.models.spec import Preprocessing

RGB32 = Preprocessing(3, (32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _write_tree(root: Path, classes: dict[str, int], size: tuple[int, int] = (32, 32)) -> None:
    rng = np.random.default_rng(0)
    for cls, n in classes.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            px = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(px).save(root / cls / f"{i}.png")


def test_image_folder_labels_follow_sorted_class_names(tmp_path: Path) -> None:
    _write_tree(tmp_path / "imgs", {"cat": 3, "airplane": 2})
    ds = open_dataset(f"imagefolder:{tmp_path / 'imgs'}")
    src = ds.pools["all"]
    assert src.class_names == ("airplane", "cat")
    assert sorted(src.labels.tolist()) == [0, 0, 1, 1, 1]


def test_tar_of_a_tree_matches_the_tree(tmp_path: Path) -> None:
    _write_tree(tmp_path / "root" / "test", {"a": 2, "b": 2})
    with tarfile.open(tmp_path / "data.tar", "w") as tar:
        tar.add(tmp_path / "root" / "test", arcname="test")
    from_dir = select(open_dataset(f"imagefolder:{tmp_path / 'root'}"), "all", RGB32).arrays()
    from_tar = select(open_dataset(f"cifar10:{tmp_path / 'data.tar'}"), "all", RGB32).arrays()
    np.testing.assert_array_equal(from_dir[0], from_tar[0])
    np.testing.assert_array_equal(from_dir[1], from_tar[1])


def test_preprocessing_normalises_and_resizes(tmp_path: Path) -> None:
    (tmp_path / "imgs" / "c").mkdir(parents=True)
    Image.new("RGB", (64, 48), (255, 0, 128)).save(tmp_path / "imgs" / "c" / "x.png")
    x, _ = select(open_dataset(str(tmp_path / "imgs")), "all", RGB32).arrays()
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 5, 5], [2.0, -2.0, (128 / 255 - 0.5) / 0.25], atol=1e-5)


def test_empty_image_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("no images")
    with pytest.raises(DataError, match="no images in class folders"):
        open_dataset(f"imagefolder:{tmp_path / 'empty'}")


def test_missing_path_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data path not found"):
        open_dataset(f"cifar10:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match="did you mean fashion-mnist"):
        parse_data_spec("fashion-mnst")


def test_npz_tensors_labels_and_bad_inputs(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    np.savez(good, x=np.ones((4, 3, 32, 32), np.float32), y=np.arange(4))
    x, y = select(open_dataset(f"npz:{good}"), "all", RGB32).arrays()
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 1, 2, 3]
    bad_shape = tmp_path / "shape.npz"
    np.savez(bad_shape, x=np.ones((4, 3, 32), np.float32))
    with pytest.raises(DataError, match=r"shape \(4, 3, 32\)"):
        open_dataset(str(bad_shape))
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="pickled objects"):
        open_dataset(f"npz:{pickled}")
    wrong_size = tmp_path / "size.npz"
    np.savez(wrong_size, x=np.ones((2, 3, 16, 16), np.float32))
    with pytest.raises(DataError, match=r"shape \(3, 16, 16\) but the model expects \(3, 32, 32\)"):
        select(open_dataset(str(wrong_size)), "all", RGB32).arrays()


def test_idx_reader_round_trip_and_truncation(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    (tmp_path / "a.gz").write_bytes(gzip.compress(header + arr.tobytes()))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "b.gz").write_bytes(gzip.compress(header + arr.tobytes()[:-1]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "b.gz")


def test_single_pool_splits_are_disjoint_stratified_and_deterministic() -> None:
    labels = np.repeat(np.arange(10), 100)  # grouped by class, like the JPEG tar
    pools = {"test": array_source(np.zeros((1000, 1, 1), np.uint8), labels)}
    parts = {s: split_indices(pools, s, seed=0)[1] for s in ("test", "val", "calib")}
    assert (len(parts["test"]), len(parts["val"]), len(parts["calib"])) == (400, 200, 400)
    assert not set(parts["test"]) & set(parts["val"])
    assert not set(parts["calib"]) & (set(parts["test"]) | set(parts["val"]))
    # Any prefix is class-balanced: the first 50 calibration samples hold all ten classes.
    assert np.bincount(labels[parts["calib"][:50]], minlength=10).min() >= 4
    np.testing.assert_array_equal(parts["val"], split_indices(pools, "val", seed=0)[1])
    assert not np.array_equal(parts["val"], split_indices(pools, "val", seed=1)[1])


def test_official_pools_hold_out_validation_from_train() -> None:
    labels = np.repeat(np.arange(10), 20)
    pools = {
        "train": array_source(np.zeros((200, 1, 1), np.uint8), labels),
        "test": array_source(np.zeros((50, 1, 1), np.uint8), labels[:50]),
    }
    pool_val, val = split_indices(pools, "val", 0)
    pool_train, train = split_indices(pools, "train", 0)
    assert (pool_val, pool_train, split_indices(pools, "test", 0)[0]) == ("train", "train", "test")
    assert len(val) == 20 and not set(val) & set(train) and len(train) == 180


def test_stratified_order_is_a_permutation() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    order = stratified_order(labels, 6, seed=3)
    assert sorted(order.tolist()) == list(range(6))


def test_unknown_split() -> None:
    pools = {"all": array_source(np.zeros((5, 1, 1), np.uint8), None)}
    with pytest.raises(DataError, match="unknown split 'holdout'"):
        split_indices(pools, "holdout", 0)


def test_grayscale_source_feeds_rgb_model() -> None:
    pools = {"all": array_source(np.full((2, 32, 32), 255, np.uint8), np.array([0, 1]))}
    from quantpipe.data.registry import Dataset

    x, _ = select(Dataset("t", None, pools), "all", RGB32).arrays()
    np.testing.assert_allclose(x, 2.0)


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "imgs" / "c").mkdir(parents=True)
    (tmp_path / "imgs" / "c" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg"):
        open_dataset(f"imagefolder:{tmp_path / 'imgs'}")
