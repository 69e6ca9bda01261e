"""ONNX operators as torch functions, for the ops quantpipe's exported models contain.

Each function takes the node's inputs (tensors, None for an absent optional input) and its
attributes, and returns its outputs. Shape arguments that ONNX passes as tensors (Slice,
Pad, Reshape) are constant initializers in exported models; they are read as Python ints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Inputs = list[Tensor | None]
Op = Callable[[Inputs, dict[str, Any]], list[Tensor]]


def _at(x: Inputs, i: int) -> Tensor:
    """Input `i`, which the op requires."""
    value = x[i] if i < len(x) else None
    if value is None:
        raise ValueError(f"required input {i} is absent")
    return value


def _opt(x: Inputs, i: int) -> Tensor | None:
    return x[i] if i < len(x) else None


def _ints(t: Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _pads(pads: Sequence[int]) -> list[int]:
    """ONNX pads (x1_begin, x2_begin, ..., x1_end, x2_end, ...) as F.pad's (last dim first)."""
    half = len(pads) // 2
    out: list[int] = []
    for axis in reversed(range(half)):
        out += [pads[axis], pads[axis + half]]
    return out


def conv(x: Inputs, a: dict[str, Any]) -> list[Tensor]:
    inp, w = _at(x, 0), _at(x, 1)
    dims = w.dim() - 2
    pads = list(a.get("pads", [0] * 2 * dims))
    if pads[:dims] != pads[dims:]:  # asymmetric: pad explicitly, as F.conv cannot
        inp, pads = F.pad(inp, _pads(pads)), [0] * 2 * dims
    fn = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    kwargs = {"stride": a.get("strides", 1), "dilation": a.get("dilations", 1)}
    return [fn(inp, w, _opt(x, 2), padding=pads[:dims], groups=a.get("group", 1), **kwargs)]


def gemm(x: Inputs, a: dict[str, Any]) -> list[Tensor]:
    left = _at(x, 0).t() if a.get("transA", 0) else _at(x, 0)
    right = _at(x, 1).t() if a.get("transB", 0) else _at(x, 1)
    out = a.get("alpha", 1.0) * (left @ right)
    bias = _opt(x, 2)
    return [out if bias is None else out + a.get("beta", 1.0) * bias]


def max_pool(x: Inputs, a: dict[str, Any]) -> list[Tensor]:
    inp, kernel = _at(x, 0), a["kernel_shape"]
    dims = len(kernel)
    pads = list(a.get("pads", [0] * 2 * dims))
    if pads[:dims] != pads[dims:]:
        inp, pads = F.pad(inp, _pads(pads), value=float("-inf")), [0] * 2 * dims
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[dims - 1]
    stride, ceil = a.get("strides", kernel), bool(a.get("ceil_mode", 0))
    return [fn(inp, kernel, stride, pads[:dims], a.get("dilations", 1), ceil)]


def average_pool(x: Inputs, a: dict[str, Any]) -> list[Tensor]:
    kernel = a["kernel_shape"]
    dims = len(kernel)
    pads = list(a.get("pads", [0] * 2 * dims))
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[dims - 1]
    ceil, with_pad = bool(a.get("ceil_mode", 0)), bool(a.get("count_include_pad", 0))
    return [fn(_at(x, 0), kernel, a.get("strides", kernel), pads[:dims], ceil, with_pad)]


def global_average_pool(x: Inputs, a: dict[str, Any]) -> list[Tensor]:
    data = _at(x, 0)
    return [data.mean(dim=tuple(range(2, data.dim())), keepdim=True)]


def slice_(x: Inputs, a: dict[str, Any]) -> list[Tensor]:
    data = _at(x, 0)
    starts, ends = _ints(_opt(x, 1)), _ints(_opt(x, 2))
    axes = _ints(_opt(x, 3)) or list(range(len(starts)))
    steps = _ints(_opt(x, 4)) or [1] * len(starts)
    index: list[Any] = [slice(None)] * data.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        size = data.shape[axis]  # ONNX clamps out-of-range starts and ends (e.g. INT64_MAX)
        index[axis] = slice(max(min(start, size), -size), max(min(end, size), -size - 1), step)
    return [data[tuple(index)]]


def pad(x: Inputs, a: dict[str, Any]) -> list[Tensor]:
    fill = _opt(x, 2)
    mode = _text(a.get("mode", "constant"))
    value = 0.0 if fill is None else float(fill.item())
    return [F.pad(_at(x, 0), _pads(_ints(_opt(x, 1))), mode=mode, value=value)]


def reshape(x: Inputs, a: dict[str, Any]) -> list[Tensor]:
    data = _at(x, 0)
    shape = [data.shape[i] if s == 0 else s for i, s in enumerate(_ints(_opt(x, 1)))]
    return [data.reshape(shape)]


def clip(x: Inputs, a: dict[str, Any]) -> list[Tensor]:
    low, high = _opt(x, 1), _opt(x, 2)
    lo = a.get("min") if low is None else float(low.item())
    hi = a.get("max") if high is None else float(high.item())
    return [torch.clamp(_at(x, 0), lo, hi)]


def reduce_mean(x: Inputs, a: dict[str, Any]) -> list[Tensor]:
    data, axes = _at(x, 0), a.get("axes") or _ints(_opt(x, 1))
    keep = bool(a.get("keepdims", 1))
    return [data.mean(dim=axes, keepdim=keep) if axes else data.mean()]


def hard_sigmoid(x: Inputs, a: dict[str, Any]) -> list[Tensor]:
    return [torch.clamp(a.get("alpha", 0.2) * _at(x, 0) + a.get("beta", 0.5), 0, 1)]


def squeeze(x: Inputs, a: dict[str, Any]) -> list[Tensor]:
    axes = _ints(_opt(x, 1)) or list(a.get("axes", []))
    data = _at(x, 0)
    return [data.squeeze(dim=tuple(axes)) if axes else data.squeeze()]


def unsqueeze(x: Inputs, a: dict[str, Any]) -> list[Tensor]:
    t = _at(x, 0)
    axes = _ints(_opt(x, 1)) or list(a["axes"])
    for axis in sorted(v if v >= 0 else v + t.dim() + len(axes) for v in axes):
        t = t.unsqueeze(axis)
    return [t]


def resize(x: Inputs, a: dict[str, Any]) -> list[Tensor]:
    """ONNX Resize on N×C×H×W as F.interpolate: linear (half-pixel or align-corners) or
    nearest (asymmetric, floor), by constant scales or sizes."""
    data, scales, sizes = _at(x, 0), _opt(x, 2), _opt(x, 3)
    mode = _text(a.get("mode", "nearest"))
    transform = _text(a.get("coordinate_transformation_mode", "half_pixel"))
    if mode not in ("nearest", "linear") or data.dim() != 4:
        raise NotImplementedError(f"Resize mode {mode} on {data.dim()}-D input")
    kwargs: dict[str, Any] = {}
    if sizes is not None and sizes.numel():
        kwargs["size"] = _ints(sizes)[2:]
    else:
        assert scales is not None
        kwargs["scale_factor"] = [float(v) for v in scales.tolist()[2:]]
    if mode == "linear":
        kwargs["mode"] = "bilinear"
        kwargs["align_corners"] = transform == "align_corners"
    return [F.interpolate(data, **kwargs)]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _unary(fn: Callable[[Tensor], Tensor]) -> Op:
    return lambda x, a: [fn(_at(x, 0))]


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Op:
    return lambda x, a: [fn(_at(x, 0), _at(x, 1))]


OPS: dict[str, Op] = {
    "Conv": conv,
    "Gemm": gemm,
    "MatMul": _binary(torch.matmul),
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(torch.div),
    "Relu": _unary(F.relu),
    "Sigmoid": _unary(torch.sigmoid),
    "HardSigmoid": hard_sigmoid,
    "HardSwish": _unary(F.hardswish),
    "Clip": clip,
    "Identity": _unary(lambda t: t),
    "MaxPool": max_pool,
    "AveragePool": average_pool,
    "GlobalAveragePool": global_average_pool,
    "ReduceMean": reduce_mean,
    "Flatten": lambda x, a: [torch.flatten(_at(x, 0), a.get("axis", 1))],
    "Reshape": reshape,
    "Transpose": lambda x, a: [_at(x, 0).permute(a["perm"])],
    "Concat": lambda x, a: [torch.cat([t for t in x if t is not None], dim=a["axis"])],
    "Slice": slice_,
    "Pad": pad,
    "Resize": resize,
    "Softmax": lambda x, a: [torch.softmax(_at(x, 0), dim=a.get("axis", -1))],
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
}
