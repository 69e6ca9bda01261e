"""Reading an image-folder archive (.tar, .tar.gz, .tar.bz2, .tar.xz) without trusting it.

Nothing is ever extracted: members are read into memory by name, so a member's path can
neither write nor overwrite a file. The archive is still checked, and refused in one line:

- a member named with an absolute path or `..` (an image-folder archive holds a relative
  tree; such a name is the mark of a crafted archive);
- a symbolic or hard link, a character or block device, a FIFO or any other member that is
  not a regular file or a directory (links could make one name read another member, and
  none of these belong in a tree of images);
- an image member over `MAX_MEMBER_BYTES`, from its header, before it is read; and any
  single read over that size (a pax or GNU long-name header that claims gigabytes);
- a compressed archive whose decompressed stream passes `MAX_TAR_STREAM_BYTES`, or an
  archive of more than `MAX_TAR_MEMBERS` entries: decompression bombs, which would
  otherwise cost minutes of CPU or gigabytes of member list. An uncompressed .tar has no
  stream limit: its size is its size on disk.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, cast

from quantpipe.errors import DataError

# An image larger than this is no data set sample (a 4K PNG is ~25 MB).
MAX_MEMBER_BYTES = 64 * 2**20
# Decompressed size a .tar.gz/.bz2/.xz may reach; ImageNet's val set is 6.4 GB.
MAX_TAR_STREAM_BYTES = 8 * 2**30
# Entries (files, folders) an archive may hold; ImageNet's train set has 1.28 M.
MAX_TAR_MEMBERS = 2_000_000

# Magic bytes of the compressions tarfile reads, and their decompressing readers.
_COMPRESSED: dict[bytes, Callable[[Path], io.BufferedIOBase]] = {
    b"\x1f\x8b": gzip.GzipFile,
    b"BZh": bz2.BZ2File,
    b"\xfd7zXZ\x00": lzma.LZMAFile,
}
# What a broken archive or compressed stream raises while it is read.
READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)
_KINDS = {
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
}
_REMAKE = "image-folder archives hold regular files and folders only; re-create it"


class _CappedStream:
    """A (decompressed) stream that refuses to read or seek past `cap` bytes, or to read
    more than `MAX_MEMBER_BYTES` at once; tarfile reads its archive through this."""

    def __init__(self, stream: io.BufferedIOBase, cap: int | None, path: Path) -> None:
        self._stream, self._cap, self._path = stream, cap, path
        self.name = str(path)

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > MAX_MEMBER_BYTES:
            raise DataError(
                f"tar {self._path} asks for a read of {size:,} bytes at once, over "
                f"MAX_MEMBER_BYTES ({MAX_MEMBER_BYTES:,}): refused as crafted (a huge "
                f"pax or long-name header); {_REMAKE} with plain `tar -cf`"
            )
        if self._cap is None:
            return self._stream.read(size)
        left = self._cap - self._stream.tell()
        data = self._stream.read(min(size, left + 1))
        if len(data) > left:
            raise self._bomb()
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence not in (0, 1):  # tarfile seeks to absolute offsets only
            raise OSError(f"unsupported seek whence {whence}")
        target = offset if whence == 0 else self._stream.tell() + offset
        if self._cap is not None and target > self._cap:
            raise self._bomb()
        return self._stream.seek(target)

    def tell(self) -> int:
        return self._stream.tell()

    def close(self) -> None:
        self._stream.close()

    def _bomb(self) -> DataError:
        return DataError(
            f"tar {self._path} expands past MAX_TAR_STREAM_BYTES ({self._cap:,} bytes) once "
            "decompressed: refused as a decompression bomb; if it is genuine, decompress it "
            "yourself and pass the .tar (uncompressed archives have no such limit)"
        )


def open_tar(path: Path) -> tarfile.TarFile | None:
    """The archive at `path`, plain or compressed; None when it is not a tar at all.

    The stream stays open for the life of the returned TarFile (images are read from it
    on demand)."""
    with path.open("rb") as f:
        head = f.read(6)
    opener = next((o for magic, o in _COMPRESSED.items() if head.startswith(magic)), None)
    try:
        stream = opener(path) if opener else path.open("rb")
    except OSError as e:
        raise DataError(f"cannot read tar {path}: {e}") from None
    cap = MAX_TAR_STREAM_BYTES if opener else None
    try:
        capped = cast(IO[bytes], _CappedStream(stream, cap, path))
        return tarfile.open(fileobj=capped, mode="r:")
    except READ_ERRORS as e:
        stream.close()
        if opener or path.suffix == ".tar":
            raise DataError(f"cannot read tar {path}: {e}") from None
        return None  # some other file: the caller says what it expected
    except BaseException:
        stream.close()
        raise


def regular_members(
    tar: tarfile.TarFile, path: Path, wanted: Callable[[str], bool]
) -> dict[str, tarfile.TarInfo]:
    """Regular members whose names `wanted` accepts, by name, once every member (wanted or
    not) has passed the checks of the module docstring. Headers are read one at a time,
    so a refusal comes before the rest of the archive is decompressed."""
    found = {}
    try:
        for count, member in enumerate(tar, 1):
            if count > MAX_TAR_MEMBERS:
                raise DataError(
                    f"tar {path} holds more than MAX_TAR_MEMBERS ({MAX_TAR_MEMBERS:,}) "
                    "entries: refused as a decompression bomb; split the data set"
                )
            _check_member(member, path)
            if member.isfile() and wanted(member.name):
                _check_size(member, path)
                found[member.name] = member
    except READ_ERRORS as e:
        raise DataError(f"cannot read tar {path}: {e}") from None
    return found


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> bytes:
    """The bytes of a member that `regular_members` returned, read in memory."""
    try:
        f = tar.extractfile(member)
        if f is None:
            raise DataError(f"cannot read {member.name!r} in tar {path}: not a regular file")
        with f:
            return f.read()
    except READ_ERRORS as e:
        raise DataError(f"cannot read {member.name!r} in tar {path}: {e}") from None


def _check_member(member: tarfile.TarInfo, path: Path) -> None:
    # String tests, not PurePosixPath: this runs once per member of archives of millions.
    if member.name.startswith("/") or ".." in member.name.split("/"):
        raise DataError(
            f"tar {path} holds member {member.name!r}, a path outside the archive's root: "
            f"refused; {_REMAKE} from inside the folder (tar -C FOLDER -cf OUT.tar .)"
        )
    if member.issym() or member.islnk():
        kind = "symbolic link" if member.issym() else "hard link"
        raise DataError(
            f"tar {path} holds member {member.name!r}, a {kind} to {member.linkname!r}: "
            f"refused; {_REMAKE} storing files, not links (tar --dereference "
            "--hard-dereference)"
        )
    if not (member.isfile() or member.isdir()):
        kind = _KINDS.get(member.type, f"member of type {member.type!r}")
        raise DataError(f"tar {path} holds member {member.name!r}, a {kind}: refused; {_REMAKE}")


def _check_size(member: tarfile.TarInfo, path: Path) -> None:
    if member.size > MAX_MEMBER_BYTES:
        raise DataError(
            f"tar {path} holds member {member.name!r} of {member.size:,} bytes, over "
            f"MAX_MEMBER_BYTES ({MAX_MEMBER_BYTES:,}): refused before reading it (no data "
            "set image is that large; a crafted archive can claim any size)"
        )
