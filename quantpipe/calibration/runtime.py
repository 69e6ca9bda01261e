"""ONNX Runtime plumbing shared by calibration and comparison: feeds, extra outputs, reused
output buffers. Sessions themselves come from quantpipe.engines.ort_session."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from quantpipe.errors import QuantpipeError

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class InputSpec:
    """A model input as ONNX Runtime reports it; str or None dims are free."""

    name: str
    dtype: Any
    shape: tuple[int | str | None, ...]

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{np.dtype(self.dtype).name} [{dims}]"


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The model, or one line saying why not: missing, not ONNX, or external data that the
    onnx library refuses to read (outside the model's directory, absolute, a symlink)."""
    from quantpipe.export.onnx_file import load_onnx

    path = Path(path)
    if not path.is_file():
        raise QuantpipeError(f"model file {str(path)!r} does not exist")
    model: onnx.ModelProto = load_onnx(path)
    return model


def with_outputs(model: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """Copy of ``model`` whose graph also outputs ``outputs`` (type float, shape free)."""
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {o.name for o in augmented.graph.output}
    for name in outputs:
        if name not in existing:
            augmented.graph.output.append(onnx.ValueInfoProto(name=name))
    return augmented


def input_specs(session: Any) -> list[InputSpec]:
    """The inputs of an ONNX Runtime session as `InputSpec`s."""
    return [
        InputSpec(i.name, _ORT_TYPES.get(i.type, np.float32), tuple(i.shape))
        for i in session.get_inputs()
    ]


def check_feed(feed: Mapping[str, np.ndarray], specs: Sequence[InputSpec]) -> None:
    """Raise QuantpipeError, saying expected vs got, if ``feed`` does not fit ``specs``."""
    names = [s.name for s in specs]
    for spec in specs:
        if spec.name not in feed:
            raise QuantpipeError(
                f"calibration batch lacks model input {spec.name!r} (model inputs: {names})"
            )
        _check_array(spec, feed[spec.name])
    extra = sorted(set(feed) - set(names))
    if extra:
        raise QuantpipeError(
            f"calibration batch has input {extra[0]!r}, which the model lacks "
            f"(model inputs: {names})"
        )


def _check_array(spec: InputSpec, array: Any) -> None:
    got_dtype = getattr(array, "dtype", None)
    got_shape = tuple(getattr(array, "shape", ()))
    fits = got_dtype == np.dtype(spec.dtype) and len(got_shape) == len(spec.shape)
    fits = fits and all(
        not isinstance(want, int) or want == got
        for want, got in zip(spec.shape, got_shape, strict=False)
    )
    if not fits:
        got = f"{getattr(got_dtype, 'name', type(array).__name__)} {list(got_shape)}"
        raise QuantpipeError(
            f"calibration input {spec.name!r}: expected {spec.describe()}, got {got}"
        )


class BoundRunner:
    """Runs a session into output buffers that are reused from batch to batch.

    ``session.run`` allocates fresh arrays for every output on every call; for calibration
    that is hundreds of MB of newly faulted pages per batch (resnet18: the exposed outputs
    cost +10 % over plain inference with ``run``, ~0 % with reused buffers). The first run
    of each input shape learns the output shapes; later runs of that shape write into the
    same arrays through an IOBinding. The returned arrays are only valid until the next run.
    """

    _KEEP = 2  # shapes whose buffers are kept (a full batch and a last partial one)

    def __init__(self, session: Any, outputs: Sequence[str]) -> None:
        self.session = session
        self.outputs = list(outputs)
        self.bound: dict[tuple[Any, ...], tuple[Any, list[np.ndarray]]] = {}

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        key = tuple((name, np.shape(value)) for name, value in sorted(feed.items()))
        if key not in self.bound:
            results: list[np.ndarray] = self.session.run(self.outputs, dict(feed))
            self._bind(key, results)
            return results
        binding, buffers = self.bound[key]
        inputs = {name: np.ascontiguousarray(value) for name, value in feed.items()}
        for name, value in inputs.items():
            binding.bind_cpu_input(name, value)
        self.session.run_with_iobinding(binding)
        return buffers

    def _bind(self, key: tuple[Any, ...], buffers: list[np.ndarray]) -> None:
        if not all(isinstance(b, np.ndarray) and b.flags.c_contiguous for b in buffers):
            return  # e.g. a sequence output: keep using run()
        if len(self.bound) >= self._KEEP:
            self.bound.pop(next(iter(self.bound)))
        binding = self.session.io_binding()
        for name, buf in zip(self.outputs, buffers, strict=True):
            binding.bind_output(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
        self.bound[key] = (binding, buffers)
