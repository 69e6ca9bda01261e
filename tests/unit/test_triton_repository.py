"""The triton stage: a model repository whose config.pbtxt files, parsed as Triton's own
ModelConfig message, say what the engine metadata says; bad input refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from quantpipe.cli import main
from quantpipe.engines.metadata import EngineMeta
from quantpipe.pipeline.hashing import sha256_file
from quantpipe.serving.triton_config import parse_config
from tests.conftest import digits_run_with_engines

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}  # Triton's names


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits-mlp trained, exported, quantized, and built as FP32/FP16/INT8 engines."""
    path = tmp_path_factory.mktemp("triton") / "run"
    digits_run_with_engines(path, "1,8,32")
    return path


def _metas(run: Path) -> dict[str, EngineMeta]:
    return {
        p.name: EngineMeta.from_json(json.loads(p.read_text()))
        for p in (run / "engines").glob("*.json")
    }


def test_every_config_is_the_engine_metadata(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    assert main(["triton", "--run-dir", str(run), "--out", str(out), "--quiet"]) == 0
    metas = {Path(m.engine).stem.replace(".", "_"): m for m in _metas(run).values()}
    configs = sorted(out.glob("*/config.pbtxt"))
    assert len(configs) == len(metas) >= 3  # fp32, fp16, int8 (and btc if any)
    for path in configs:
        config = parse_config(path.read_text(), str(path))
        assert config.name == path.parent.name
        meta = next(
            m for m in metas.values() if Path(m.engine).stem.replace(".", "_") == config.name
        )
        assert config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == meta.profile.max == 32
        for got, want in ((config.input, meta.inputs), (config.output, meta.outputs)):
            assert [t.name for t in got] == [t.name for t in want]
            assert [list(t.dims) for t in got] == [list(t.shape[1:]) for t in want]
            types = [mc.DataType.Name(t.data_type) for t in got]
            assert types == [
                "TYPE_" + {"float32": "FP32", "float16": "FP16"}[t.dtype] for t in want
            ]
        batching = list(config.dynamic_batching.preferred_batch_size)
        assert batching == sorted({meta.profile.opt, meta.profile.max})
        queue = config.dynamic_batching.default_queue_policy  # bounded: a flood is refused
        assert queue.max_queue_size == 256 and queue.timeout_action == queue.REJECT
        assert [(g.count, g.kind) for g in config.instance_group] == [
            (1, mc.ModelInstanceGroup.KIND_CPU)
        ]
        model = path.parent / "1" / "model.onnx"
        assert sha256_file(model) == meta.sha256  # the engine itself, unchanged
    # The copy in the run is the same repository, recorded in the manifest.
    outputs = json.loads((run / "manifest.json").read_text())["stages"]["triton"]["outputs"]
    assert {o["path"] for o in outputs} >= {f"triton/{p.parent.name}/config.pbtxt" for p in configs}


def test_select_and_serving_options(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    argv = ["triton", "--run-dir", str(run), "--out", str(out), "--quiet", "--force"]
    argv += ["--select", "*.int8.*", "--instances", "2", "--preferred-batch-sizes", "4,8"]
    assert main([*argv, "--max-queue", "32"]) == 0
    (path,) = out.glob("*/config.pbtxt")
    config = parse_config(path.read_text())
    assert config.name.endswith("_int8") and config.instance_group[0].count == 2
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 32


def test_bad_input_is_one_line(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cases = {
        "has no engines": ["--run-dir", str(tmp_path / "empty")],
        "matches none": ["--run-dir", str(run), "--select", "*.plan"],
        "outside engine": ["--run-dir", str(run), "--preferred-batch-sizes", "64", "--force"],
        "is a file": ["--run-dir", str(run), "--out", str(Path(__file__))],
        "without bound": ["--run-dir", str(run), "--max-queue", "0"],
    }
    (tmp_path / "empty").mkdir()
    for message, argv in cases.items():
        capsys.readouterr()
        assert main(["triton", *argv, "--quiet"]) == 2, message
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_a_config_that_is_not_one_is_refused() -> None:
    from quantpipe.errors import QuantpipeError

    with pytest.raises(QuantpipeError, match="not a Triton model configuration"):
        parse_config('name: "x"\nplatform: 7\n')
    # An enum given a 400-digit number: protobuf's runtime raised a bare ValueError (found
    # by bench_fuzz at 30,000 cases); the message stays short.
    with pytest.raises(QuantpipeError, match="not a Triton model configuration") as e:
        parse_config("input { name: 'x' data_type: " + "9" * 400 + " }")
    assert len(str(e.value)) < 300


def test_the_python_backend_variant_carries_the_engine_and_quantpipes_model(run: Path) -> None:
    argv = ["triton", "--run-dir", str(run), "--quiet", "--force", "--python-backend"]
    assert main([*argv, "--select", "*.int8.*"]) == 0
    (path,) = (run / "triton-python").glob("*/config.pbtxt")
    config = parse_config(path.read_text())
    assert config.name == path.parent.name == "fp32_onnxruntime-cpu_int8_python"
    assert (config.backend, config.platform, config.max_batch_size) == ("python", "", 32)
    native = parse_config(
        (run / "triton" / "fp32_onnxruntime-cpu_int8" / "config.pbtxt").read_text()
    )
    assert config.input == native.input and config.output == native.output
    version = path.parent / "1"
    model = (Path(__file__).parents[2] / "quantpipe/serving/triton_python_model.py").read_text()
    assert (version / "model.py").read_text() == model
    engine = version / "fp32.onnxruntime-cpu.int8.onnx"
    meta = EngineMeta.from_json(
        json.loads((version / "fp32.onnxruntime-cpu.int8.json").read_text())
    )
    assert sha256_file(engine) == meta.sha256
