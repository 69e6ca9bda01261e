"""Hostile data sets are refused in one line (a DataError; exit 2 through the CLI), run no
code, never extract or write anything, and read nothing outside the data set: tar archives
with escaping names, links, devices or decompression bombs; image folders with symlinks
out, FIFOs, files that are not images or declare huge images; idx and .npz files whose
headers declare more than they hold."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import signal
import struct
import tarfile
import tracemalloc
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from quantpipe.cli import main
from quantpipe.data import npz, safe_tar
from quantpipe.data.fashion_mnist import MAX_IDX_BYTES
from quantpipe.data.registry import open_dataset
from quantpipe.data.safe_image import MAX_IMAGE_PIXELS
from quantpipe.data.safe_tar import MAX_MEMBER_BYTES
from quantpipe.errors import DataError
from quantpipe.export.metadata import set_metadata
from quantpipe.models.registry import get_model_spec

# Python allocations (numpy's included) a refused load may make: far below any bomb here.
_SMALL_PEAK = 16 * 2**20


# --- building blocks -------------------------------------------------------------------


def _png(size: int = 4, shade: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (shade, shade, shade)).save(buf, format="PNG")
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and header declaring width×height, with (almost) no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))  # fmt: skip


def _good_images() -> dict[str, bytes]:
    """Two classes of two images: what every archive and folder below starts from."""
    return {f"{cls}/{i}.png": _png(shade=40 * i) for cls in ("cat", "dog") for i in range(2)}


def _file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _write_tar(path: Path, extra: list[tuple[tarfile.TarInfo, bytes]], mode: str = "w") -> Path:
    """The good images plus `extra` members, written as TarInfo say (never from disk)."""
    members = [_file_member(n, d) for n, d in _good_images().items()] + extra
    with tarfile.open(path, mode) as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, b""


def _image_folder(root: Path) -> Path:
    for rel, data in _good_images().items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _refused(spec: str, *needles: str) -> str:
    """open_dataset(spec) raises one DataError line holding every needle; its message."""
    with pytest.raises(DataError) as info:
        open_dataset(spec).pools  # noqa: B018 (the pools are what loading builds)
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def _read_all(spec: str) -> int:
    """Decode every sample of every pool (images are decoded lazily); the sample count."""
    pools = open_dataset(spec).pools
    for source in pools.values():
        source.read(np.arange(len(source)))
    return sum(len(s) for s in pools.values())


@contextlib.contextmanager
def _small_allocations() -> Iterator[None]:
    """Fails if what runs inside allocates more than _SMALL_PEAK at once."""
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < _SMALL_PEAK, f"peak allocation {peak:,} bytes"


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """A hang (a blocking read of a FIFO) fails the test instead of stalling the suite."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: it hangs")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@contextlib.contextmanager
def _writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What runs inside, from an empty working directory, adds nothing to `tmp_path` but
    its run directory `run/`: an extraction of `x`, `../x` or `/etc/x` (relative to the
    working directory, or anywhere here) would show."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before, etc_x = _tree(tmp_path), Path("/etc/x").exists()
    yield
    assert [p for p in _tree(tmp_path) if p != "run" and not p.startswith("run/")] == before
    assert not any(p.name == "x" for p in tmp_path.rglob("*"))
    assert Path("/etc/x").exists() == etc_x


# --- tar archives ----------------------------------------------------------------------

TAR_MEMBERS: dict[str, Callable[[], tuple[tarfile.TarInfo, bytes]]] = {
    "parent": lambda: _file_member("../x", _png()),
    "parent-nested": lambda: _file_member("cat/../../x.png", _png()),
    "absolute": lambda: _file_member("/etc/x", _png()),
    "symlink": lambda: _special("cat/x.png", tarfile.SYMTYPE, "/etc/passwd"),
    "symlink-relative": lambda: _special("cat/x.png", tarfile.SYMTYPE, "../../x"),
    "hardlink": lambda: _special("cat/x.png", tarfile.LNKTYPE, "/etc/passwd"),
    "char-device": lambda: _special("cat/x.png", tarfile.CHRTYPE),
    "block-device": lambda: _special("cat/x.png", tarfile.BLKTYPE),
    "fifo": lambda: _special("cat/x.png", tarfile.FIFOTYPE),
}
# What the refusal names, beside the member.
TAR_WHY = {
    "parent": "outside the archive's root",
    "parent-nested": "outside the archive's root",
    "absolute": "outside the archive's root",
    "symlink": "symbolic link to '/etc/passwd'",
    "symlink-relative": "symbolic link to '../../x'",
    "hardlink": "hard link to '/etc/passwd'",
    "char-device": "character device",
    "block-device": "block device",
    "fifo": "FIFO",
}


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_a_good_archive_loads_plain_or_compressed(tmp_path: Path, compression: str) -> None:
    """The control for the refusals below: the same archive without a hostile member."""
    suffix = f".tar.{compression}" if compression else ".tar"
    tar = _write_tar(tmp_path / f"good{suffix}", [], f"w:{compression}")
    assert _read_all(f"imagefolder:{tar}") == 4
    assert _read_all(f"cifar10:{tar}") == 4


@pytest.mark.parametrize("kind", list(TAR_MEMBERS))
def test_a_hostile_tar_member_is_refused_naming_it(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    info, data = TAR_MEMBERS[kind]()
    tar = _write_tar(tmp_path / "evil.tar", [(info, data)])
    with _writes_nothing(tmp_path, monkeypatch):
        _refused(f"imagefolder:{tar}", str(tar), repr(info.name), TAR_WHY[kind], "refused")


def test_a_member_over_the_size_limit_is_refused_from_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 200 kB .tar.gz whose one image claims (and holds) 64 MiB of zeros."""
    tar = _write_tar(
        tmp_path / "bomb.tar.gz",
        [_file_member("cat/bomb.png", bytes(MAX_MEMBER_BYTES + 1))],
        "w:gz",
    )
    assert tar.stat().st_size < MAX_MEMBER_BYTES // 100
    with _writes_nothing(tmp_path, monkeypatch), _small_allocations():
        _refused(f"imagefolder:{tar}", "'cat/bomb.png'", "MAX_MEMBER_BYTES", "before reading")


def test_a_pax_header_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tarfile reads a pax header whole; one claiming 64 MiB is refused, not read."""
    info, data = _file_member("cat/x.png", _png())
    info.pax_headers = {"comment": "x" * MAX_MEMBER_BYTES}
    tar = _write_tar(tmp_path / "pax.tar.gz", [(info, data)], "w:gz")
    with _writes_nothing(tmp_path, monkeypatch), _small_allocations():
        _refused(f"imagefolder:{tar}", str(tar), "MAX_MEMBER_BYTES", "pax")


def test_a_compressed_stream_past_the_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 8 GiB stream limit, lowered so the test decompresses 2 MiB, not 8 GiB: skipping a
    non-image member of 2 MiB (which is never read) passes it."""
    tar = _write_tar(
        tmp_path / "bomb.tar.gz", [_file_member("cat/notes.bin", bytes(2 * 2**20))], "w:gz"
    )
    assert _read_all(f"imagefolder:{tar}") == 4  # under the real limit: fine
    monkeypatch.setattr(safe_tar, "MAX_TAR_STREAM_BYTES", 2**20)
    _refused(f"imagefolder:{tar}", str(tar), "MAX_TAR_STREAM_BYTES (1,048,576", "bomb")


def test_an_archive_of_too_many_entries_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 2 M entry limit, lowered to 3 for an archive of 4 images (and no folders)."""
    tar = _write_tar(tmp_path / "many.tar", [])
    monkeypatch.setattr(safe_tar, "MAX_TAR_MEMBERS", 3)
    _refused(f"imagefolder:{tar}", "MAX_TAR_MEMBERS (3)")


def test_an_archive_that_is_not_one_is_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(gzip.compress(b"not a tar archive" * 100)[:-20])
    _refused(f"imagefolder:{broken}", "cannot read tar", str(broken))


# --- image folders ---------------------------------------------------------------------


def test_a_symlink_to_a_file_outside_the_folder_is_refused(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "data")
    secret = tmp_path / "secret.png"
    secret.write_bytes(_png(shade=200))
    os.symlink(secret, root / "cat" / "x.png")
    _refused(f"imagefolder:{root}", str(root / "cat" / "x.png"), str(secret), "outside the folder")


def test_a_symlinked_directory_outside_the_folder_is_refused(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "data")
    elsewhere = _image_folder(tmp_path / "elsewhere")
    os.symlink(elsewhere / "cat", root / "bird")
    _refused(f"imagefolder:{root}", str(root / "bird"), "outside the folder")


def test_symlinks_inside_the_folder_are_read_once(tmp_path: Path) -> None:
    """A link to an image inside is read; a linked directory inside is not descended (its
    images are listed by their own path), so a link to an ancestor cannot loop."""
    root = _image_folder(tmp_path / "data")
    os.symlink(root / "cat" / "0.png", root / "dog" / "linked.png")
    os.symlink(root, root / "cat" / "loop")
    assert _read_all(f"imagefolder:{root}") == 5


def test_files_without_an_image_suffix_are_ignored(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "data")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / "folder.png").mkdir()  # a folder named like an image: descended
    (root / "dog" / "folder.png" / "2.png").write_bytes(_png())
    os.mkfifo(root / "cat" / "pipe")  # a FIFO without an image suffix is never opened
    assert _read_all(f"imagefolder:{root}") == 5


@pytest.mark.parametrize(
    ("kind", "why"),
    [("fifo", "not a regular file"), ("broken-link", "not a regular file"),
     ("link-loop", "does not resolve")],
)  # fmt: skip
def test_an_image_name_that_is_not_a_regular_file_is_refused(
    tmp_path: Path, kind: str, why: str
) -> None:
    """Before: a FIFO named cat/x.png blocked the run forever; a broken link was a
    FileNotFoundError traceback."""
    root = _image_folder(tmp_path / "data")
    entry = root / "cat" / "x.png"
    if kind == "fifo":
        os.mkfifo(entry)
    else:
        os.symlink(entry if kind == "link-loop" else root / "cat" / "gone.png", entry)
    with _deadline(20):
        _refused(f"imagefolder:{root}", str(entry), why)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"just some text, not pixels", "it is not a JPEG/PNG/"),
        # PIL would recognise this as EPS by its content and run Ghostscript on it.
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n", "it is not a JPEG/PNG/"),
        (_png()[:-30], "cannot decode image"),  # a PNG cut short
    ],
    ids=["text", "eps", "truncated-png"],
)
def test_a_file_that_is_not_an_image_is_refused(
    tmp_path: Path, content: bytes, needle: str
) -> None:
    root = _image_folder(tmp_path / "data")
    (root / "cat" / "1.png").write_bytes(content)
    with pytest.raises(DataError, match=needle) as info:
        _read_all(f"imagefolder:{root}")
    assert "1.png" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "side",
    [
        9_000,  # 81 M pixels: over MAX_IMAGE_PIXELS, under PIL's own limit
        10_000,  # 100 M: PIL warns (DecompressionBombWarning)
        100_000,  # 10 G: PIL raises DecompressionBombError
    ],
)
def test_an_image_declaring_huge_dimensions_is_refused_from_its_header(
    tmp_path: Path, side: int
) -> None:
    root = _image_folder(tmp_path / "data")
    (root / "cat" / "0.png").write_bytes(_png_header(side, side))
    with warnings.catch_warnings():
        # Printed beside the error, PIL's warning would be a second line.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with _small_allocations():
            _refused(f"imagefolder:{root}", "0.png", f"MAX_IMAGE_PIXELS ({MAX_IMAGE_PIXELS:,}")


def test_an_image_file_over_the_size_limit_is_refused_before_reading(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "data")
    with (root / "cat" / "0.png").open("r+b") as f:
        f.truncate(MAX_MEMBER_BYTES + 1)  # sparse: no disk used
    with _small_allocations():
        _refused(f"imagefolder:{root}", "0.png", "MAX_MEMBER_BYTES", "before reading")


# --- idx and .npz files ----------------------------------------------------------------


def test_a_fashion_mnist_gz_bomb_is_refused_before_decompressing(tmp_path: Path) -> None:
    """A 300 kB .gz whose idx header declares (and holds) 300 MB of zeros."""
    dims = (MAX_IDX_BYTES // (28 * 28) + 1, 28, 28)
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as f:
        f.write(bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in dims))
        mib, rest = divmod(dims[0] * 28 * 28, 2**20)
        for _ in range(mib):
            f.write(bytes(2**20))
        f.write(bytes(rest))
    assert bomb.stat().st_size < 2 * 2**20
    with _small_allocations():
        _refused(f"fashion-mnist:{tmp_path}", str(bomb), "MAX_IDX_BYTES")


def _npz_declaring(path: Path, shape: tuple[int, ...], data: bytes) -> Path:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", header.getvalue() + data)
    return path


@pytest.mark.parametrize("shape", [(2**40,), (2**26, 1, 8, 8)])
def test_an_npz_declaring_more_than_it_holds_is_refused(tmp_path: Path, shape: tuple) -> None:
    """Before: numpy allocated what the header said (a MemoryError traceback for 4 TiB)."""
    path = _npz_declaring(tmp_path / "huge.npz", shape, bytes(256))
    with _small_allocations():
        _refused(f"npz:{path}", str(path), "x.npy declares shape", "holds 256")


def test_an_npz_zip_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 8 GiB limit, lowered to 1 MiB for a 4 MiB array of zeros compressed to 4 kB."""
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros((2**20, 1, 1, 1), np.float32))
    monkeypatch.setattr(npz, "MAX_NPZ_BYTES", 2**20)
    _refused(f"npz:{path}", "MAX_NPZ_BYTES (1,048,576)")


# --- through the CLI -------------------------------------------------------------------


def _digits_shaped_onnx(path: Path) -> Path:
    """A valid model with digits-mlp's metadata, so `eval` gets as far as the data."""
    w = numpy_helper.from_array(np.zeros((1, 1, 8, 8), np.float32), "w")
    ints = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in
            (("start", 0), ("end", 10), ("axis", 1))]  # fmt: skip
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "w"], ["a"]),
            helper.make_node("Flatten", ["a"], ["f"]),
            helper.make_node("Slice", ["f", "start", "end", "axis"], ["y"]),
        ],
        "digits-shaped",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=[w, *ints],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    set_metadata(model, get_model_spec("digits-mlp"))
    path.write_bytes(model.SerializeToString())
    return path


def _hostile_tar(tmp_path: Path) -> tuple[str, str]:
    tar = _write_tar(tmp_path / "evil.tar", [_file_member("../x", _png())])
    return f"cifar10:{tar}", "'../x'"


def _tar_bomb(tmp_path: Path) -> tuple[str, str]:
    member = _file_member("cat/bomb.png", bytes(MAX_MEMBER_BYTES + 1))
    return f"imagefolder:{_write_tar(tmp_path / 'bomb.tar.gz', [member], 'w:gz')}", "bomb.png"


def _symlink_out(tmp_path: Path) -> tuple[str, str]:
    root = _image_folder(tmp_path / "data")
    (tmp_path / "secret.png").write_bytes(_png())
    os.symlink(tmp_path / "secret.png", root / "cat" / "x.png")
    return f"imagefolder:{root}", "outside the folder"


def _not_an_image(tmp_path: Path) -> tuple[str, str]:
    root = _image_folder(tmp_path / "data")
    (root / "cat" / "0.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n")
    return f"imagefolder:{root}", "it is not a JPEG/PNG/"


def _pixel_bomb(tmp_path: Path) -> tuple[str, str]:
    root = _image_folder(tmp_path / "data")
    (root / "cat" / "0.png").write_bytes(_png_header(10_000, 10_000))
    return f"imagefolder:{root}", "MAX_IMAGE_PIXELS"


def _fifo(tmp_path: Path) -> tuple[str, str]:
    root = _image_folder(tmp_path / "data")
    os.mkfifo(root / "cat" / "x.png")
    return f"imagefolder:{root}", "not a regular file"


@pytest.mark.parametrize(
    "hostile", [_hostile_tar, _tar_bomb, _symlink_out, _not_an_image, _pixel_bomb, _fifo]
)
def test_the_cli_refuses_hostile_data_in_one_line(
    tmp_path: Path,
    hostile: Callable[[Path], tuple[str, str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`quantpipe eval` on each class above: exit 2, one line, nothing written outside the
    run directory and no result in it."""
    onnx_path = _digits_shaped_onnx(tmp_path / "model.onnx")
    spec, needle = hostile(tmp_path)
    run_dir = tmp_path / "run"
    argv = ["eval", "--onnx", str(onnx_path), "--data", spec, "--run-dir", str(run_dir),
            "--quiet"]  # fmt: skip
    with warnings.catch_warnings(), _writes_nothing(tmp_path, monkeypatch), _deadline(60):
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        code = main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("quantpipe eval: error: "), lines
    assert needle in lines[0]
    assert not run_dir.exists() or not list(run_dir.rglob("*.json*"))
