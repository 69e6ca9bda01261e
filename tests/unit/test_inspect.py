"""`quantpipe inspect` on real files: an exported ONNX model, its Q/DQ version, an ONNX
Runtime engine with its metadata, a TensorRT plan built elsewhere, and a BTC container."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from quantpipe import __version__
from quantpipe.btc.container import ContainerAccounting, write_container
from quantpipe.btc.model import encode_model, select_weight_names
from quantpipe.btc.policy import SigmaRule
from quantpipe.cli import main
from quantpipe.engines.backend import BatchProfile, BuildJob
from quantpipe.engines.machine import GpuInfo, cpu_info
from quantpipe.engines.metadata import EngineMeta, meta_path, onnx_io
from quantpipe.engines.registry import get_backend
from quantpipe.export.onnx_export import ExportOptions, export_onnx
from quantpipe.models.registry import MODELS
from quantpipe.pipeline.hashing import sha256_file
from quantpipe.quantize import plan_qdq, quantize_qdq

MODEL = "fmnist-cnn"


@dataclass(frozen=True)
class Files:
    fp32: Path
    qdq: Path
    engine: Path
    btc: Path
    btc_encoded: dict
    btc_accounting: ContainerAccounting


def _engine_meta(engine: Path, source: Path, runtime: str, version: str, **kw: object) -> dict:
    inputs, outputs = onnx_io(onnx.load(str(source), load_external_data=False))
    fields = {
        "engine": engine.name,
        "sha256": sha256_file(engine),
        "bytes": engine.stat().st_size,
        "backend": "onnxruntime-cpu",
        "runtime": runtime,
        "runtime_version": version,
        "precision": "fp32",
        "model": "fp32",
        "source": source.name,
        "source_sha256": sha256_file(source),
        "inputs": inputs,
        "outputs": outputs,
        "profile": BatchProfile(1, 8, 32),
        "cpu": cpu_info(),
        "gpu": None,
        "build_options": {"provider": "CPUExecutionProvider"},
        "build_seconds": 0.25,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quantpipe": __version__,
    }
    return EngineMeta(**(fields | kw)).to_json()  # type: ignore[arg-type]


def _write_meta(engine: Path, meta: dict) -> None:
    meta_path(engine).write_text(json.dumps(meta, indent=1))


def _qdq(proto: onnx.ModelProto) -> onnx.ModelProto:
    amax = dict.fromkeys(plan_qdq(proto).calibration_tensors, 4.0)
    model = quantize_qdq(proto, amax).model
    prop = model.metadata_props.add()
    prop.key, prop.value = "quantpipe.precision", "int8-qdq"
    return model


def _btc(net: torch.nn.Module, path: Path) -> tuple[dict, ContainerAccounting]:
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    names = select_weight_names(net)
    enc = encode_model(state, names, SigmaRule(0.05, block_size=64), workers=1)
    others = {k: v for k, v in state.items() if k not in names}
    meta = {"model": MODEL, "policy": enc.summary.policy}
    return enc.encoded, write_container(path, enc.encoded, others, meta)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("inspect")
    torch.manual_seed(0)
    net = MODELS[MODEL].build().eval()
    proto = export_onnx(net, MODELS[MODEL], ExportOptions())
    fp32, qdq = root / "model.fp32.onnx", root / "model.int8.qdq.onnx"
    onnx.save(proto, str(fp32))
    onnx.save(_qdq(proto), str(qdq))
    engine = root / "engines" / "fp32.onnxruntime-cpu.fp32.onnx"
    engine.parent.mkdir()
    job = BuildJob(fp32, engine, "fp32", BatchProfile(1, 8, 32))
    info = get_backend("onnxruntime-cpu").build(job)
    _write_meta(engine, _engine_meta(engine, fp32, info.runtime, info.runtime_version))
    encoded, accounting = _btc(net, root / "model.btc")
    return Files(fp32, qdq, engine, root / "model.btc", encoded, accounting)


def _inspect(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    code = main(["inspect", str(path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def _field(out: str, key: str) -> str:
    """The value of a `key  value` line of the output."""
    match = re.search(rf"^{re.escape(key)} +(.+)$", out, re.MULTILINE)
    assert match, f"no {key!r} line in:\n{out}"
    return match.group(1)


def _ops_in_output(out: str) -> list[tuple[str, int]]:
    section = out.split("Ops (", 1)[1].split("\n\n", 1)[0].splitlines()[3:]
    return [(line.split()[0], int(line.split()[1].replace(",", ""))) for line in section]


def _shape(dims: list) -> str:
    return "×".join(str(d) for d in dims)


def test_onnx_model_summary(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _inspect(files.fp32, capsys)
    proto = onnx.load(str(files.fp32))
    assert code == 0 and err == []
    assert _field(out, "sha256") == sha256_file(files.fp32)
    assert f"({files.fp32.stat().st_size:,} bytes)" in _field(out, "file")
    assert _field(out, "producer") == f"quantpipe {__version__}"
    assert _field(out, "opsets") == "ai.onnx 17"
    assert _field(out, "nodes") == str(len(proto.graph.node))
    ops = Counter(n.op_type for n in proto.graph.node)
    assert _ops_in_output(out) == sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))
    assert _field(out, "Q/DQ nodes") == "0 QuantizeLinear, 0 DequantizeLinear"
    assert _field(out, "INT8 Q/DQ model").startswith("no")
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    shape = _shape([d.dim_param or d.dim_value for d in dims])
    assert re.search(rf"^input +input +float32 +{shape}$", out, re.MULTILINE)
    n_params = sum(numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)
    assert f"Initializers: {len(proto.graph.initializer)}, {n_params:,} bytes" in out
    assert re.search(rf"^quantpipe.model +{MODEL}$", out, re.MULTILINE)
    assert re.search(r"^quantpipe.preprocessing +\{", out, re.MULTILINE)


def test_qdq_model_counts_and_int8_weights(
    files: Files, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _inspect(files.qdq, capsys)
    proto = onnx.load(str(files.qdq))
    ops = Counter(n.op_type for n in proto.graph.node)
    assert code == 0 and ops["QuantizeLinear"] > 0
    q, dq = ops["QuantizeLinear"], ops["DequantizeLinear"]
    assert _field(out, "Q/DQ nodes") == f"{q} QuantizeLinear, {dq} DequantizeLinear"
    assert _field(out, "INT8 Q/DQ model") == "yes (zero points int8)"
    assert dict(_ops_in_output(out)) == dict(ops)
    int8 = [numpy_helper.to_array(t) for t in proto.graph.initializer]
    int8 = [a for a in int8 if a.dtype == np.int8]
    row = f"int8 +{len(int8)} +{sum(a.size for a in int8):,} +{sum(a.nbytes for a in int8):,}"
    assert re.search(rf"^{row}$", out, re.MULTILINE)
    assert re.search(r"^quantpipe.precision +int8-qdq$", out, re.MULTILINE)


def test_engine_metadata_checks_and_onnx_summary(
    files: Files, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _inspect(files.engine, capsys)
    assert code == 0 and err == []
    assert _field(out, "backend") == "onnxruntime-cpu"
    assert _field(out, "runtime") == f"onnxruntime {ort.__version__}"
    assert _field(out, "batch profile") == "min 1, opt 8, max 32"
    assert _field(out, "source") == f"model.fp32.onnx (sha256 {sha256_file(files.fp32)})"
    assert _field(out, "built on CPU") == cpu_info().describe()
    assert _field(out, "built for GPU") == "none"
    assert _field(out, "build options") == "provider=CPUExecutionProvider"
    assert (
        f"checks: file sha256 matches; built by onnxruntime {ort.__version__} (runs anywhere)"
        in out.splitlines()
    )
    ops = Counter(n.op_type for n in onnx.load(str(files.engine)).graph.node)
    assert "\nONNX model:\n" in out and dict(_ops_in_output(out)) == dict(ops)
    # The JSON itself names the same engine and gives the same report.
    assert _inspect(meta_path(files.engine), capsys)[1] == out


def test_tampered_engine_is_refused(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = tmp_path / files.engine.name
    shutil.copyfile(files.engine, engine)
    shutil.copyfile(meta_path(files.engine), meta_path(engine))
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    code, out, err = _inspect(engine, capsys)
    assert code == 2 and len(err) == 1
    assert "does not match its metadata" in err[0] and str(engine) in err[0]
    assert _field(out, "backend") == "onnxruntime-cpu"  # what the metadata says, printed first
    assert "checks:" not in out


def test_plan_of_another_tensorrt_version_is_refused(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "fp32.tensorrt.fp16.plan"
    plan.write_bytes(b"serialized engine " * 64)
    gpu = GpuInfo("NVIDIA H200", "9.0")
    meta = _engine_meta(
        plan, files.fp32, "tensorrt", "10.0.0", backend="tensorrt", precision="fp16", gpu=gpu
    )
    _write_meta(plan, meta)
    code, out, err = _inspect(plan, capsys)
    assert code == 2 and len(err) == 1
    assert "built by tensorrt 10.0.0, and this host has none" in err[0]
    assert _field(out, "runtime") == "tensorrt 10.0.0"
    assert _field(out, "built for GPU") == "NVIDIA H200 (compute capability 9.0)"


def test_btc_container(files: Files, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _inspect(files.btc, capsys)
    a = files.btc_accounting
    assert code == 0 and err == [] and files.btc.stat().st_size == a.file_bytes
    assert _field(out, "format") == "version 1"
    assert _field(out, "model") == MODEL
    assert json.loads(_field(out, "policy"))["tau"] == 0.05
    assert _field(out, "bytes") == (
        f"coded {a.coded_bytes:,} + raw {a.raw_bytes:,} + "
        f"overhead {a.overhead_bytes:,} = {a.file_bytes:,}"
    )
    assert _field(out, "bits per weight").startswith(f"b_avg {a.b_avg:.3f}, b_eff {a.b_eff:.3f}")
    for name, enc in files.btc_encoded.items():
        nb, high = enc.high.size, int(enc.high.sum())
        share = f"{high / nb:.1%} ({high:,} of {nb:,})"
        row = rf"{re.escape(name)} +{_shape(enc.shape)} +coded 4/8-bit +64 +{re.escape(share)}"
        assert re.search(rf"^{row}$", out, re.MULTILINE), row
    assert re.search(r"^head\.bias +10 +raw float32$", out, re.MULTILINE)
    assert re.search(r"^stem\.1\.num_batches_tracked +scalar +raw int64$", out, re.MULTILINE)


def test_truncated_btc_container(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "model.btc"
    path.write_bytes(files.btc.read_bytes()[:-7])
    code, out, err = _inspect(path, capsys)
    assert code == 2 and len(err) == 1 and out == ""
    assert str(path) in err[0] and "truncated" in err[0]


def test_metadata_without_its_engine(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_path = tmp_path / meta_path(files.engine).name
    shutil.copyfile(meta_path(files.engine), json_path)
    code, out, err = _inspect(json_path, capsys)
    assert code == 2 and len(err) == 1
    assert f"describes engine {files.engine.name}, which is not beside it" in err[0]
    assert _field(out, "batch profile") == "min 1, opt 8, max 32"


@pytest.mark.parametrize("kind", ["missing", "txt", "directory", "plan without json"])
def test_what_inspect_does_not_read(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = {
        "missing": tmp_path / "nowhere.onnx",
        "txt": tmp_path / "notes.txt",
        "directory": tmp_path,
        "plan without json": tmp_path / "lone.plan",
    }[kind]
    if path.suffix in (".txt", ".plan"):
        path.write_text("hello")
    code, out, err = _inspect(path, capsys)
    assert code == 2 and len(err) == 1 and out == ""
    expected = "no metadata beside it" if kind == "plan without json" else "inspect accepts"
    assert expected in err[0] and str(path) in err[0]
