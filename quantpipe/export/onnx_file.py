"""Reading an ONNX file that may be cut short, corrupt or crafted: `load_onnx`.

Every stage reads ONNX files through `load_onnx`, so that a bad file is one clear error
naming it, never a traceback, a giant allocation or a read outside the model's directory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from quantpipe.errors import QuantpipeError


def load_onnx(path: str | Path, load_external_data: bool = True) -> Any:
    """Load an ONNX file, or raise a user error saying why it cannot be read.

    Nothing in the file is trusted before it is checked: a cut file must still hold a graph
    and an opset, and every tensor must hold the data its shape declares (see
    `_check_tensor`), so a tiny file declaring a 2**40-element tensor is refused here,
    before onnx, numpy or ONNX Runtime allocate for it. External data is only read after
    its file and byte range are checked.
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise QuantpipeError(f"ONNX model not found: {path}") from None
    except Exception as e:  # protobuf's DecodeError and friends: not an ONNX file
        raise QuantpipeError(
            f"{path} is not a readable ONNX model ({type(e).__name__}: {e}); "
            "is it cut short? re-export it with `quantpipe export`"
        ) from None
    _check_complete(model, path)
    base = Path(path).parent
    for tensor in _all_tensors(model):
        _check_tensor(tensor, path, base)
    if load_external_data:
        try:
            onnx.load_external_data_for_model(model, str(base))
        except Exception as e:  # onnx's own checks (ValidationError, ValueError, OSError)
            raise QuantpipeError(
                f"{path}: cannot read its external data ({type(e).__name__}: {e})"
            ) from None
    return model


def _check_complete(model: Any, path: str | Path) -> None:
    """A file cut at a field boundary still parses; without a graph or an opset it is not a
    model (an empty file parses as an empty one)."""
    if not model.HasField("graph") or not model.opset_import:
        missing = "graph" if not model.HasField("graph") else "opset_import"
        raise QuantpipeError(
            f"{path} is not a complete ONNX model (it has no {missing}): the file is cut "
            "short or not a model; re-export it with `quantpipe export`"
        )


# Bits per element of the types numpy has no dtype for (they are packed in bytes).
_SUB_BYTE_BITS = {
    "INT4": 4,
    "UINT4": 4,
    "FLOAT4E2M1": 4,
    "INT2": 2,
    "UINT2": 2,
    "FLOAT6E2M3": 6,
    "FLOAT6E3M2": 6,
}
_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data",
                 "uint64_data")  # fmt: skip
# ONNX Runtime densifies sparse tensors: their dense size is held to protobuf's own limit
# on an embedded tensor, so a sparse declaration cannot ask for more than a dense file could.
MAX_SPARSE_DENSE_BYTES = 2**31


def _all_tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto and SparseTensorProto in the model: initializers, and node
    attributes (Constant values), in subgraphs and functions too."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)


def _graph_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    yield from graph.sparse_initializer
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Any) -> Iterator[Any]:
    for node in nodes:
        for attr in node.attribute:
            for field in ("t", "sparse_tensor"):
                if attr.HasField(field):
                    yield getattr(attr, field)
            yield from attr.tensors
            yield from attr.sparse_tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for graph in attr.graphs:
                yield from _graph_tensors(graph)


def _check_tensor(tensor: Any, path: str | Path, base: Path) -> None:
    """Refuse a tensor whose declared shape is not backed by the data it holds."""
    if tensor.DESCRIPTOR.name == "SparseTensorProto":
        _check_sparse(tensor, path, base)
        return
    if any(d < 0 for d in tensor.dims):
        raise _bad_tensor(path, tensor, "has a negative dimension")
    count = math.prod(tensor.dims)
    bits = _element_bits(tensor.data_type)
    want = None if bits is None else -(-count * bits // 8)  # bytes, rounded up
    if tensor.data_location == tensor.EXTERNAL:
        _check_external(tensor, path, base, want)
    elif tensor.HasField("raw_data"):
        if want is not None and len(tensor.raw_data) != want:
            raise _bad_tensor(path, tensor, f"holds {len(tensor.raw_data):,} bytes, not {want:,}")
    else:
        entries = sum(len(getattr(tensor, f)) for f in _TYPED_FIELDS)
        # Packed types may hold several elements per int32 entry; anything else one.
        per_entry = 32 // bits if bits is not None and bits < 8 else 1
        if entries * per_entry < count:
            raise _bad_tensor(path, tensor, f"holds {entries:,} values")


def _check_sparse(sparse: Any, path: str | Path, base: Path) -> None:
    """Its values and indices are checked as tensors; its dense shape is capped."""
    values = sparse.values
    dense = math.prod(sparse.dims) * -(-(_element_bits(values.data_type) or 8) // 8)
    if any(d < 0 for d in sparse.dims) or dense > MAX_SPARSE_DENSE_BYTES:
        raise QuantpipeError(
            f"{path}: sparse tensor {values.name!r} declares dense shape {_shape(sparse.dims)}, "
            f"over {MAX_SPARSE_DENSE_BYTES:,} bytes once densified: the file is corrupt or "
            "crafted; re-export it with `quantpipe export`"
        )
    _check_tensor(values, path, base)
    _check_tensor(sparse.indices, path, base)


def _check_external(tensor: Any, path: str | Path, base: Path, want: int | None) -> None:
    """The external file must sit in the model's directory (no absolute path, `..` or
    symlink: it could name any file) and hold the declared byte range."""
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    file = _external_file(base, location)
    if file is None:
        raise QuantpipeError(
            f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, which is not a "
            "regular file in the model's directory (an absolute path, `..` or a symlink is "
            "refused: it could read any file); keep the data file beside the model"
        )
    try:
        offset, size = int(info.get("offset", "0")), file.stat().st_size
        length = int(info["length"]) if "length" in info else size - offset
    except ValueError:
        raise _bad_tensor(
            path, tensor, "has a non-integer external data offset or length"
        ) from None
    if want is not None and length != want:
        raise _bad_tensor(path, tensor, f"has {length:,} bytes of external data, not {want:,}")
    if offset < 0 or length < 0 or offset + length > size:
        raise _bad_tensor(
            path,
            tensor,
            f"reads bytes {offset:,}..{offset + length:,} of {location!r}, which holds {size:,}",
        )


def _external_file(base: Path, location: str) -> Path | None:
    """`base/location` when it is a regular file inside `base` reached without a symlink."""
    rel = Path(location)
    if not location or rel.is_absolute() or ".." in rel.parts:
        return None
    file = base / rel
    hops = [file, *file.parents[: len(rel.parts) - 1]]
    if any(p.is_symlink() for p in hops) or not file.is_file():
        return None
    return file


def _element_bits(data_type: int) -> int | None:
    """Bits per element; None for strings and unknown types (their size is not fixed)."""
    from onnx import helper

    name = _type_name(data_type)
    if name in _SUB_BYTE_BITS:
        return _SUB_BYTE_BITS[name]
    if name in ("UNDEFINED", "STRING") or name.isdigit():
        return None
    try:
        return int(helper.tensor_dtype_to_np_dtype(data_type).itemsize) * 8
    except (KeyError, ValueError):  # a type this onnx has no numpy dtype for
        return None


def _type_name(data_type: int) -> str:
    """FLOAT, INT8, …; the number itself for a type this onnx does not know."""
    from onnx import TensorProto

    known = data_type in TensorProto.DataType.values()
    return TensorProto.DataType.Name(data_type) if known else str(data_type)


def _bad_tensor(path: str | Path, tensor: Any, what: str) -> QuantpipeError:
    kind = _type_name(tensor.data_type)
    return QuantpipeError(
        f"{path}: tensor {tensor.name!r} declares shape {_shape(tensor.dims)} of {kind} but "
        f"{what}: the file is cut short, corrupt or crafted; re-export it with `quantpipe export`"
    )


def _shape(dims: Any) -> str:
    """Dims for a message, elided when a crafted file declares very many."""
    shown = [str(d) for d in dims[:8]]
    return "[" + ", ".join(shown) + (f", … ({len(dims)} dims)]" if len(dims) > 8 else "]")
