"""The file names of a run's artifacts and their labels: the one place they are built and read.

A *label* names a model artifact in record names, eval files and the summary: `fp32`,
`btc`, `int8.qdq`, `btc.int8.ort`, `pytorch` (the PyTorch model itself), or the stem of a
user's own ONNX file (`mynet.onnx` → `mynet`). Every other module asks this one for the
file behind a label, so renaming an artifact is a change here only.
"""

from __future__ import annotations

from pathlib import Path

TRAINED_WEIGHTS = "model.pt"
FP32_ONNX = "model.fp32.onnx"
BTC_CONTAINER = "model.btc"
BTC_ONNX = "model.btc.onnx"
BTC_REPORT_MD = "btc/report.md"
BTC_HISTOGRAM_PNG = "btc/weights_histogram.png"
BTC_BLOCK_SIZE_PNG = "btc/accuracy_vs_block_size.png"
CALIB_DIR = "calib"
TACTICS_DIR = "tactics"  # the CPU tactic pass's timing caches (quantize/cpu_tactics.py)
QAT_DIR = "qat"  # per-epoch checkpoints, so that an interrupted QAT resumes
ENGINES_DIR = "engines"
BENCH_JSON = "bench/bench.json"
SERVE_BENCH_JSON = "bench/serve.json"  # written by `make bench-serve` (tests/bench/bench_serve.py)
TRITON_DIR = "triton"  # a Triton model repository: <model>/config.pbtxt, <model>/1/model.*
TRITON_PYTHON_DIR = "triton-python"  # its Python-backend variants: <model>_python/1/model.py
REPORT_MD = "report/report.md"
REPORT_ACCURACY_PNG = "report/accuracy_vs_size.png"
REPORT_LATENCY_PNG = "report/latency_vs_batch.png"
REPORT_BTC_LAYERS_PNG = "report/btc_layers.png"
# Inside the mixed stage's directory (`mixed_path`).
MIXED_SENSITIVITY_JSON = "sensitivity.json"
MIXED_SENSITIVITY_PNG = "sensitivity.png"
MIXED_PARETO_JSON = "pareto.json"
MIXED_PARETO_PNG = "pareto.png"
MIXED_REPORT_MD = "report.md"
MIXED_ACCURACY_PNG = "accuracy_vs_size.png"

PYTORCH = "pytorch"
FP32 = "fp32"
BTC = "btc"
# The two INT8 models `ptq` writes: the portable Q/DQ model (what TensorRT builds from)
# and its ONNX Runtime CPU build.
INT8_BUILDS = ("qdq", "ort")
# The file whose size is an artifact's size, where it is not the label's ONNX file.
_DELIVERABLES = {FP32: FP32_ONNX, PYTORCH: TRAINED_WEIGHTS, BTC: BTC_CONTAINER}


def onnx_label(path: Path | None) -> str:
    """`model.fp32.onnx` → `fp32`, `model.btc.int8.qdq.onnx` → `btc.int8.qdq`,
    `mynet.onnx` → `mynet`; None (the PyTorch model itself) → `pytorch`."""
    if path is None:
        return PYTORCH
    name = path.name.removesuffix(".onnx")
    return name.removeprefix("model.") if name != "model" else "model"


def onnx_file(label: str) -> str:
    """The run's ONNX file of a label: `int8.qdq` → `model.int8.qdq.onnx`."""
    return f"model.{label}.onnx"


def int8_label(source_label: str, build: str) -> str:
    """`fp32` → `int8.qdq`; any other source keeps its label: `btc` → `btc.int8.qdq`."""
    return _quantized_label("int8", source_label, build)


def qat_label(source_label: str, build: str) -> str:
    """`fp32` → `qat.qdq`; `btc` → `btc.qat.qdq`: the QAT model of a float model."""
    return _quantized_label("qat", source_label, build)


def mp_label(source_label: str, build: str) -> str:
    """`fp32` → `mp.qdq`; `btc` → `btc.mp.qdq`: the mixed-precision model of a float model."""
    return _quantized_label("mp", source_label, build)


def _quantized_label(kind: str, source_label: str, build: str) -> str:
    if build not in INT8_BUILDS:
        raise ValueError(f"unknown INT8 build {build!r}")
    return f"{kind}.{build}" if source_label == FP32 else f"{source_label}.{kind}.{build}"


def mp_file(source: Path, build: str = "qdq") -> str:
    """The mixed-precision Q/DQ model `mixed` writes for the float ONNX model at `source`."""
    return onnx_file(mp_label(onnx_label(source), build))


def mp_packed_file(source: Path) -> str:
    """Its weights packed at their bit widths: `model.mp.qpmix`, `model.btc.mp.qpmix`
    (the format: quantpipe/mixed/packed.py)."""
    label = onnx_label(source)
    return f"model.{'mp' if label == FP32 else f'{label}.mp'}.qpmix"


def mixed_path(source: Path, name: str) -> str:
    """A file of the mixed stage for `source`: `mixed/report.md`, `mixed.btc/report.md`."""
    return f"{record_name('mixed', source)}/{name}"


def qat_file(source: Path, build: str = "qdq") -> str:
    """The QAT model `qat` writes for the float ONNX model at `source`."""
    return onnx_file(qat_label(onnx_label(source), build))


def int8_file(source: Path, build: str = "qdq") -> str:
    """The INT8 model `ptq` writes for the ONNX model at `source`."""
    return onnx_file(int8_label(onnx_label(source), build))


def fp16_file(source: Path) -> str:
    """The FP16 ONNX model made from a float one: `model.fp32.onnx` → `model.fp16.onnx`,
    `model.btc.onnx` → `model.btc.fp16.onnx`."""
    label = onnx_label(source)
    return onnx_file("fp16" if label == FP32 else f"{label}.fp16")


def engine_file(model: str, backend: str, precision: str, suffix: str) -> str:
    """`engines/fp32.onnxruntime-cpu.int8.onnx`: the engine of a run's model (`fp32`,
    `btc`, ...) for a backend, in a precision."""
    return f"{ENGINES_DIR}/{model}.{backend}.{precision}{suffix}"


def record_name(kind: str, source: Path) -> str:
    """The manifest record of a stage that runs once per ONNX model of a run: `ptq` for the
    FP32 model, `ptq.btc` for the BTC-decoded one."""
    label = onnx_label(source)
    return kind if label == FP32 else f"{kind}.{label}"


def eval_file(label: str, backend: str) -> str:
    """Where `eval` writes its full result: `eval/int8.ort.onnxruntime-cpu.json`."""
    return f"eval/{label}.{backend}.json"


def deliverable(label: str) -> str:
    """The file a serving team receives for a label; its size is the artifact's size."""
    return _DELIVERABLES.get(label, onnx_file(label))
