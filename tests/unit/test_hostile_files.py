"""Hostile input files are refused in one line (exit 2), run no code and read nothing
outside where they live: ONNX external data that escapes the model's directory, a
checkpoint carrying pickled code, an .npz with object arrays."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from quantpipe.cli import main
from quantpipe.data.registry import open_dataset
from quantpipe.errors import DataError
from quantpipe.export.metadata import set_metadata
from quantpipe.models.registry import get_model_spec


def _one_line_refusal(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> None:
    code = main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith(f"quantpipe {argv[0]}: error: "), lines
    for needle in needles:
        assert needle in lines[0]


def _model_with_external_weights(path: Path, location: str) -> None:
    """A digits-mlp-shaped model (quantpipe's metadata, so the stages accept it) whose one
    weight is declared as external data at `location`."""
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1, 1, 8, 8])
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "256")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
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
        initializer=[w, *ints],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    set_metadata(model, get_model_spec("digits-mlp"))
    path.write_bytes(model.SerializeToString())


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
