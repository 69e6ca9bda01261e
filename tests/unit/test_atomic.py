from pathlib import Path

import pytest

from quantpipe.pipeline.atomic import atomic_path, atomic_write_bytes


def test_atomic_write_replaces_content(tmp_path: Path) -> None:
    dest = tmp_path / "a.bin"
    atomic_write_bytes(dest, b"one")
    atomic_write_bytes(dest, b"two")
    assert dest.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path: Path, exc: type) -> None:
    dest = tmp_path / "model.onnx"
    dest.write_bytes(b"good")
    with pytest.raises(exc), atomic_path(dest) as tmp:
        tmp.write_bytes(b"half-writ")
        raise exc()
    assert dest.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
