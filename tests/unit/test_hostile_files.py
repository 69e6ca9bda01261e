"""Hostile input files are refused in one line (exit 2), run no code and read nothing
outside where they live: ONNX external data that escapes the model's directory, ONNX files
cut short or declaring tensors far larger than what they hold, a checkpoint carrying
pickled code, an .npz with object arrays. (Hostile data sets: test_hostile_datasets.py.)"""

from __future__ import annotations

import contextlib
import os
import pickle
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantpipe.cli import main
from quantpipe.data.registry import open_dataset
from quantpipe.errors import DataError, QuantpipeError
from quantpipe.export.metadata import require_contract, set_metadata
from quantpipe.export.onnx_file import load_onnx
from quantpipe.models.registry import get_model_spec


def _one_line_refusal(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> None:
    code = main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith(f"quantpipe {argv[0]}: error: "), lines
    for needle in needles:
        assert needle in lines[0]


def _digits_shaped_model(w: TensorProto, *extra: TensorProto) -> onnx.ModelProto:
    """A digits-mlp-shaped model (quantpipe's metadata, so the stages accept it) computing
    `x + w`, with `extra` initializers that no node uses."""
    ints = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in
            (("start", 0), ("end", 10), ("axis", 1))]  # fmt: skip
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "w"], ["a"]),
            helper.make_node("Flatten", ["a"], ["f"]),
            helper.make_node("Slice", ["f", "start", "end", "axis"], ["y"]),
        ],
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=[w, *ints, *extra],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    set_metadata(model, get_model_spec("digits-mlp"))
    return model


def _external(name: str, dims: list[int], location: str, length: int) -> TensorProto:
    """A FLOAT tensor whose data is declared to be `length` bytes of file `location`."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _model_with_external_weights(path: Path, location: str) -> None:
    """A digits-mlp-shaped model whose one weight is declared as external data at
    `location`."""
    w = _external("w", [1, 1, 8, 8], location, 256)
    path.write_bytes(_digits_shaped_model(w).SerializeToString())


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink"])
@pytest.mark.parametrize("command", ["calibrate", "ptq", "eval"])
def test_onnx_external_data_outside_the_model_directory_is_refused(
    tmp_path: Path, kind: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(64, dtype=np.float32).tobytes())
    models = tmp_path / "models"
    models.mkdir()
    location = {"parent": "../secret.bin", "absolute": str(secret), "symlink": "link.bin"}[kind]
    if kind == "symlink":
        os.symlink(secret, models / "link.bin")
    onnx_path = models / "model.onnx"
    _model_with_external_weights(onnx_path, location)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    run_dir = tmp_path / "run"
    argv = [command, "--onnx", str(onnx_path), "--data", "digits", "--run-dir", str(run_dir),
            "--quiet"]  # fmt: skip
    _one_line_refusal(capsys, argv, str(onnx_path))
    # Nothing written beside the model or the secret; no artifact in the run directory.
    after = {p.name for p in tmp_path.rglob("*") if run_dir not in p.parents and p != run_dir}
    assert sorted(after) == before
    assert not run_dir.exists() or not list(run_dir.rglob("*.onnx"))


class _Payload:
    """Unpickling this would create `marker`: the classic pickled-code checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_with_pickled_code_is_refused_and_never_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt"
    with evil.open("wb") as f:
        pickle.dump({"fc.weight": _Payload(marker)}, f, protocol=2)
    argv = ["export", "--model", "digits-mlp", "--weights", str(evil), "--run-dir",
            str(tmp_path / "run"), "--quiet"]  # fmt: skip
    _one_line_refusal(capsys, argv, "evil.pt", "not a readable PyTorch checkpoint")
    assert not marker.exists()
    assert not (tmp_path / "run" / "model.fp32.onnx").exists()


def test_an_npz_with_object_arrays_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.npz"
    np.savez(evil, x=np.array([object(), object()], dtype=object), y=np.zeros(2, np.int64))
    with pytest.raises(DataError, match=r"evil\.npz"):
        open_dataset(f"npz:{evil}")


def test_the_onnx_library_itself_refuses_the_escaping_paths(tmp_path: Path) -> None:
    """The guarantee above rests on onnx's own check (onnx ≥ 1.16): if an upgrade dropped it,
    this says so before a user finds out."""
    (tmp_path / "m").mkdir()
    _model_with_external_weights(tmp_path / "m" / "model.onnx", "../secret.bin")
    (tmp_path / "secret.bin").write_bytes(bytes(256))
    with pytest.raises(onnx.checker.ValidationError):
        onnx.load(str(tmp_path / "m" / "model.onnx"))


# --- ONNX files cut short or declaring more than they hold ------------------------------

# Python allocations (numpy's and protobuf's included) a refused load may make.
_SMALL_PEAK = 16 * 2**20


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


def _good_model_bytes() -> bytes:
    w = numpy_helper.from_array(np.zeros((1, 1, 8, 8), np.float32), "w")
    return _digits_shaped_model(w).SerializeToString()


def _parsing_cuts(data: bytes) -> list[int]:
    """Lengths at a field boundary: the cut file still parses (protobuf cannot tell)."""
    parses = []
    for cut in range(len(data)):
        with contextlib.suppress(Exception):
            onnx.load_model_from_string(data[:cut])
            parses.append(cut)
    return parses


def _cuts(data: bytes) -> list[int]:
    """Lengths to cut a model to: spread over the file, plus every field boundary."""
    spread = [0, 1, len(data) // 4, len(data) // 2, 3 * len(data) // 4, len(data) - 1]
    return sorted({*spread, *_parsing_cuts(data)})


def test_every_cut_of_an_onnx_file_is_refused_in_one_line(tmp_path: Path) -> None:
    """At every length, reading the model's contract (what every stage does first) fails
    with one QuantpipeError line naming the file; never another exception."""
    data = _good_model_bytes()
    path = tmp_path / "cut.onnx"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(QuantpipeError) as info:
            require_contract(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message, (cut, message)
    path.write_bytes(data)
    assert require_contract(path).num_classes == 10  # the whole file: the control


def test_an_onnx_file_cut_at_a_field_boundary_says_it_is_incomplete(tmp_path: Path) -> None:
    data = _good_model_bytes()
    cuts = _parsing_cuts(data)
    graph_only = next(c for c in cuts if onnx.load_model_from_string(data[:c]).HasField("graph"))
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[:graph_only])
    with pytest.raises(QuantpipeError, match=r"not a complete ONNX model .*no opset_import"):
        load_onnx(path)


@pytest.mark.parametrize("command", ["eval", "calibrate", "ptq"])
def test_a_truncated_onnx_file_is_refused_by_the_cli(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _good_model_bytes()
    for cut in _cuts(data):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        run_dir = tmp_path / f"run{cut}"
        argv = [command, "--onnx", str(path), "--data", "digits", "--run-dir", str(run_dir),
                "--quiet"]  # fmt: skip
        _one_line_refusal(capsys, argv, str(path))
        assert not run_dir.exists() or not list(run_dir.rglob("*.onnx"))


def _unbacked(kind: str, tmp_path: Path) -> onnx.ModelProto:
    """A model with one tensor declaring far more data than the file holds."""
    (tmp_path / "w.bin").write_bytes(bytes(256))
    good = numpy_helper.from_array(np.zeros((1, 1, 8, 8), np.float32), "w")
    huge = [2**34, 1, 8, 8]  # 4 TiB of FLOAT, broadcasting with x: only its size is wrong
    if kind == "no-data":
        return _digits_shaped_model(TensorProto(name="w", data_type=TensorProto.FLOAT, dims=huge))
    if kind == "short-raw":
        w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**20, 1, 8, 8])
        w.raw_data = bytes(256)
        return _digits_shaped_model(w)
    if kind == "short-typed":
        w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**20, 1, 8, 8])
        w.float_data.extend([0.0] * 64)
        return _digits_shaped_model(w)
    if kind == "unused-initializer":  # before: ONNX Runtime dropped it and the stages ran
        unused = TensorProto(name="unused", data_type=TensorProto.FLOAT, dims=[2**40])
        return _digits_shaped_model(good, unused)
    if kind == "constant-node":
        model = _digits_shaped_model(good)
        value = TensorProto(name="c", data_type=TensorProto.FLOAT, dims=[2**40])
        model.graph.node.append(helper.make_node("Constant", [], ["c"], value=value))
        return model
    if kind == "external-length-past-end":
        return _digits_shaped_model(_external("w", [1, 1, 8, 8], "w.bin", 2**40))
    assert kind == "external-range-past-end"  # declared length agrees with dims; file: 256 B
    return _digits_shaped_model(_external("w", huge, "w.bin", 2**34 * 64 * 4))


UNBACKED = {
    "no-data": "tensor 'w' declares shape [17179869184, 1, 8, 8] of FLOAT but holds 0 values",
    "short-raw": "holds 256 bytes, not 268,435,456",
    "short-typed": "holds 64 values",
    "unused-initializer": "tensor 'unused' declares shape [1099511627776]",
    "constant-node": "tensor 'c' declares shape [1099511627776]",
    "external-length-past-end": "has 1,099,511,627,776 bytes of external data, not 256",
    "external-range-past-end": "of 'w.bin', which holds 256",
}


@pytest.mark.parametrize("kind", list(UNBACKED))
def test_an_onnx_tensor_declaring_more_than_it_holds_is_refused_without_allocating(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(_unbacked(kind, tmp_path).SerializeToString())
    for external in (True, False):
        with _small_allocations(), pytest.raises(QuantpipeError) as info:
            load_onnx(path, load_external_data=external)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
        assert UNBACKED[kind] in message and "re-export" in message, message


@pytest.mark.parametrize("kind", list(UNBACKED))
@pytest.mark.parametrize("command", ["eval", "calibrate", "ptq"])
def test_an_onnx_file_declaring_more_than_it_holds_is_refused_by_the_cli(
    tmp_path: Path, kind: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(_unbacked(kind, tmp_path).SerializeToString())
    assert path.stat().st_size < 4096
    run_dir = tmp_path / "run"
    argv = [command, "--onnx", str(path), "--data", "digits", "--run-dir", str(run_dir),
            "--quiet"]  # fmt: skip
    _one_line_refusal(capsys, argv, str(path), UNBACKED[kind])
    assert not run_dir.exists() or not list(run_dir.rglob("*.onnx"))
