"""`quantpipe inspect FILE`: what an ONNX model, an engine or a BTC container holds.

An engine is a file with its metadata JSON beside it (`engines.metadata.meta_path`), or
that JSON itself. Its checks are the ones `load_engine` makes before a runner loads it, so
an engine that inspect passes is one that runs here; one that fails gets the same one-line
reason (exit 2) after everything its metadata could tell has been printed.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantpipe.errors import QuantpipeError
from quantpipe.text_table import format_table

if TYPE_CHECKING:
    from quantpipe.btc.container import ContainerAccounting, LoadedContainer
    from quantpipe.engines.metadata import EngineMeta, TensorInfo

# Suffixes that are always engines (TensorRT plans); an .onnx is one only with its JSON.
ENGINE_SUFFIXES = (".plan",)
ACCEPTS = (
    "inspect accepts an ONNX model (.onnx), an engine (.onnx or .plan with its .json beside "
    "it, or that .json) or a BTC container (.btc)"
)
Rows = list[tuple[str, str]]


def cmd_inspect(args: argparse.Namespace) -> int:
    path = Path(args.file)
    inspectors: dict[str, Callable[[Path], None]] = {
        "onnx": inspect_onnx,
        "engine": inspect_engine,
        "btc": inspect_btc,
    }
    inspectors[file_kind(path)](path)
    return 0


def file_kind(path: Path) -> str:
    """The kind of `path` ("onnx", "engine" or "btc"); a user error for anything else."""
    from quantpipe.engines.metadata import meta_path

    if not path.exists():
        raise QuantpipeError(f"{path} does not exist: {ACCEPTS}")
    if not path.is_file():
        raise QuantpipeError(f"{path} is not a file: {ACCEPTS}")
    suffix = path.suffix.lower()
    if suffix == ".btc":
        return "btc"
    if suffix == ".json" or suffix in ENGINE_SUFFIXES:
        return "engine"
    if suffix == ".onnx":
        return "engine" if meta_path(path).is_file() else "onnx"
    raise QuantpipeError(f"cannot inspect {path} (suffix {path.suffix or 'none'}): {ACCEPTS}")


def _print_fields(rows: Rows) -> None:
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")


def _shape(dims: Sequence[int | str]) -> str:
    return "×".join(map(str, dims)) if len(dims) else "scalar"


# --- ONNX models -------------------------------------------------------------------------


def inspect_onnx(path: Path) -> None:
    from quantpipe.export.onnx_file import load_onnx
    from quantpipe.pipeline.hashing import sha256_file

    model = load_onnx(path, load_external_data=False)
    head = [("file", f"{path} ({path.stat().st_size:,} bytes)"), ("sha256", sha256_file(path))]
    print_onnx_summary(model, head)


def print_onnx_summary(model: Any, head: Rows | None = None) -> None:
    """Producer, opsets, inputs/outputs, op counts, Q/DQ, initializers and metadata, after
    the `head` fields (e.g. the file's name and hash)."""
    ops = Counter(n.op_type for n in model.graph.node)
    _print_fields((head or []) + _onnx_rows(model, ops))
    _print_io(model)
    ranked = sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))
    print(f"\nOps ({len(ops)} kinds, most frequent first):")
    print(format_table(("op", "count"), [(op, f"{n:,}") for op, n in ranked]))
    _print_initializers(model)
    _print_metadata(model)


def _onnx_rows(model: Any, ops: Counter[str]) -> Rows:
    producer = f"{model.producer_name} {model.producer_version}".strip()
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    q, dq = ops["QuantizeLinear"], ops["DequantizeLinear"]
    return [
        ("producer", producer or "(not recorded)"),
        ("IR version", str(model.ir_version)),
        ("opsets", opsets),
        ("nodes", f"{len(model.graph.node):,}"),
        ("Q/DQ nodes", f"{q} QuantizeLinear, {dq} DequantizeLinear"),
        ("INT8 Q/DQ model", _qdq_verdict(model, q + dq)),
    ]


def _qdq_verdict(model: Any, qdq_nodes: int) -> str:
    if not qdq_nodes:
        return "no (no Q/DQ nodes: a float model)"
    kinds = sorted(_zero_point_types(model))
    verdict = "yes" if set(kinds) <= {"int8", "uint8"} else "no"
    return f"{verdict} (zero points {', '.join(kinds)})"


def _zero_point_types(model: Any) -> set[str]:
    """Element types of the Q/DQ zero points (ONNX's default, uint8, where none is given)."""
    import onnx

    types = {t.name: t.data_type for t in model.graph.initializer}
    found = set()
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zp = node.input[2] if len(node.input) > 2 else ""
        if not zp:
            found.add("uint8")
        elif zp in types:
            found.add(onnx.TensorProto.DataType.Name(types[zp]).lower())
        else:
            found.add("not an initializer")
    return found


def _print_io(model: Any) -> None:
    from quantpipe.engines.metadata import onnx_io

    inputs, outputs = onnx_io(model)
    rows = [("input", *_tensor_cells(t)) for t in inputs]
    rows += [("output", *_tensor_cells(t)) for t in outputs]
    print("\nInputs and outputs:")
    print(format_table(("", "name", "dtype", "shape"), rows))


def _tensor_cells(t: TensorInfo) -> tuple[str, str, str]:
    return t.name, t.dtype, _shape(t.shape)


def _print_initializers(model: Any) -> None:
    import onnx

    totals: dict[str, list[int]] = {}  # dtype -> [tensors, elements, bytes]
    for t in model.graph.initializer:
        name = onnx.TensorProto.DataType.Name(t.data_type).lower()
        n = math.prod(t.dims)
        entry = totals.setdefault(name, [0, 0, 0])
        entry[0], entry[1] = entry[0] + 1, entry[1] + n
        entry[2] += n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    rows = [(k, f"{c:,}", f"{n:,}", f"{b:,}") for k, (c, n, b) in sorted(totals.items())]
    count, size = len(model.graph.initializer), sum(v[2] for v in totals.values())
    print(f"\nInitializers: {count:,}, {size:,} bytes of parameters")
    if rows:
        print(format_table(("dtype", "tensors", "elements", "bytes"), rows))


def _print_metadata(model: Any) -> None:
    from quantpipe.export.metadata import read_metadata

    meta = read_metadata(model)
    if not meta:
        print("\nMetadata: none (not exported by quantpipe)")
        return
    print("\nMetadata:")
    print(format_table(("key", "value"), sorted(meta.items())))


# --- engines -----------------------------------------------------------------------------


def inspect_engine(path: Path) -> None:
    from quantpipe.engines.metadata import meta_path

    json_path = meta_path(path)
    meta = _read_meta(json_path, path)
    engine = _engine_beside(json_path, meta) if path == json_path else path
    _print_fields(_engine_rows(engine, meta))
    print(_checks(engine))  # raises, after all of the above, when a check fails
    if engine.suffix.lower() == ".onnx":
        from quantpipe.export.onnx_file import load_onnx

        print("\nONNX model:")
        print_onnx_summary(load_onnx(engine, load_external_data=False))


def _read_meta(json_path: Path, engine: Path) -> EngineMeta:
    from quantpipe.engines.metadata import load_engine, read_meta

    if not json_path.is_file():
        load_engine(engine)  # raises its "no metadata beside it" error
    return read_meta(json_path)


def _engine_beside(json_path: Path, meta: EngineMeta) -> Path:
    """The engine file a metadata JSON describes: the one it names, in its directory."""
    from quantpipe.engines.metadata import meta_path

    named = json_path.parent / Path(meta.engine).name
    candidates = [named, *(json_path.with_suffix(s) for s in (".onnx", *ENGINE_SUFFIXES))]
    for engine in candidates:
        if engine != json_path and engine.is_file() and meta_path(engine) == json_path:
            return engine
    _print_fields(_engine_rows(named, meta))
    raise QuantpipeError(
        f"{json_path} describes engine {named.name}, which is not beside it: copy the engine "
        "next to its metadata, or rebuild it with `quantpipe engines --force`"
    )


def _engine_rows(engine: Path, meta: EngineMeta) -> Rows:
    p = meta.profile
    options = ", ".join(f"{k}={v}" for k, v in meta.build_options.items()) or "none"
    return [
        ("engine", f"{engine} ({meta.bytes:,} bytes)"),
        ("sha256", meta.sha256),
        ("backend", meta.backend),
        ("runtime", f"{meta.runtime} {meta.runtime_version}"),
        ("precision", meta.precision),
        ("model", meta.model),
        ("source", f"{meta.source} (sha256 {meta.source_sha256})"),
        *[("input", " ".join(_tensor_cells(t))) for t in meta.inputs],
        *[("output", " ".join(_tensor_cells(t))) for t in meta.outputs],
        ("batch profile", f"min {p.min}, opt {p.opt}, max {p.max}"),
        ("built on CPU", meta.cpu.describe()),
        ("built for GPU", meta.gpu.describe() if meta.gpu else "none"),
        ("build options", options),
        ("build time", f"{meta.build_seconds:.2f} s"),
        ("built at", meta.built_at),
        ("written by", f"quantpipe {meta.quantpipe} (metadata format {meta.format})"),
    ]


def _checks(engine: Path) -> str:
    from quantpipe.engines.metadata import MACHINE_SPECIFIC, load_engine

    meta = load_engine(engine)
    built = f"built by {meta.runtime} {meta.runtime_version}"
    if meta.runtime not in MACHINE_SPECIFIC:
        return f"checks: file sha256 matches; {built} (runs anywhere)"
    gpu = f"for {meta.gpu.describe()}, the GPU here" if meta.gpu else "for no GPU in particular"
    return f"checks: file sha256 matches; {built}, the version here; {gpu}"


# --- BTC containers ----------------------------------------------------------------------


def inspect_btc(path: Path) -> None:
    from quantpipe.btc.container import VERSION, load_container

    loaded = load_container(path)  # checks magic, version, size and every CRC
    rows = [("file", f"{path} ({path.stat().st_size:,} bytes)"), ("format", f"version {VERSION}")]
    rows += [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in loaded.metadata.items()]
    _print_fields(rows + _accounting_rows(loaded.accounting))
    print(f"\nTensors ({len(loaded.encoded)} coded, {len(loaded.others)} raw):")
    headers = ("tensor", "shape", "stored", "block size", "high-bit blocks")
    print(format_table(headers, _btc_tensor_rows(loaded)))


def _accounting_rows(a: ContainerAccounting) -> Rows:
    parts = f"coded {a.coded_bytes:,} + raw {a.raw_bytes:,} + overhead {a.overhead_bytes:,}"
    return [
        ("bytes", f"{parts} = {a.file_bytes:,}"),
        ("coded weights", f"{a.n_coded:,}"),
        ("bits", f"payload {a.payload_bits:,} + headers {a.header_bits:,}"),
        ("bits per weight", f"b_avg {a.b_avg:.3f}, b_eff {a.b_eff:.3f} (headers included)"),
    ]


def _btc_tensor_rows(loaded: LoadedContainer) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for name, enc in loaded.encoded.items():
        n_high, nb = int(enc.high.sum()), enc.n_blocks
        stored = f"coded {enc.low_bits}/{enc.high_bits}-bit"
        share = f"{n_high / nb:.1%} ({n_high:,} of {nb:,})"
        rows.append((name, _shape(enc.shape), stored, str(enc.block_size), share))
    for name, arr in loaded.others.items():
        rows.append((name, _shape(arr.shape), f"raw {arr.dtype}", "", ""))
    return rows
