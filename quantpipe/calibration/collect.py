"""One pass of an FP32 ONNX model over the calibration feeds, collecting activation statistics.

Only the tensors that will be quantized are exposed as extra graph outputs, so ONNX Runtime
keeps its fusions (e.g. Conv+Relu) everywhere else, and each batch's activations are folded
into running histograms and dropped: memory is one batch of those tensors, whatever the
number of images. The collector that comes back serves all calibrators
(`quantpipe.calibration.calibrators.compute_all`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from quantpipe.calibration.histogram import HistogramCollector, SpatialSample
from quantpipe.calibration.runtime import (
    BoundRunner,
    InputSpec,
    check_feed,
    input_specs,
    load_model,
    with_outputs,
)
from quantpipe.engines.ort_session import OrtConfig, make_session
from quantpipe.errors import QuantpipeError
from quantpipe.progress import track


@dataclass(frozen=True)
class CollectConfig:
    """How to run the collection pass.

    Attributes:
        threads: ONNX Runtime intra-op threads; 0 lets ONNX Runtime choose (all cores).
        progress: show a progress bar (batches).
        with_histogram: False collects only the running max (enough for the max calibrator).
        max_batch: run larger batches through ONNX Runtime in slices of at most this many
            samples (0: as given). Memory grows with the slice (the exposed activations of
            two slices are alive at once, one being binned while the next is computed):
            resnet18 at 224x224 peaks at ~0.75 GiB RSS with 8, ~1.1 GiB with 16, for 3 %
            less time.
        histogram_stride: histograms of tensors with two spatial axes bin every
            ``histogram_stride``-th row and column, the start rotating from slice to slice
            (maxima stay exact); 1 bins every value. See
            `quantpipe.calibration.histogram.SpatialSample` for why and for which tensors.
    """

    threads: int = 0
    progress: bool = False
    with_histogram: bool = True
    max_batch: int = 8
    histogram_stride: int = 2

    def __post_init__(self) -> None:
        for name in ("threads", "max_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise QuantpipeError(
                    f"{name}={value!r}: allowed values are integers >= 0 (0 = automatic)"
                )
        check_histogram_stride(self.histogram_stride, "histogram stride")


def check_histogram_stride(stride: object, label: str) -> None:
    """Raise QuantpipeError, naming the setting as ``label``, unless ``stride`` is an int >= 1."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise QuantpipeError(
            f"{label} {stride!r}: give an integer of at least 1 "
            "(1 bins every value, 2 a quarter of the spatial positions)"
        )


def collect_statistics(
    model: str | os.PathLike[str] | onnx.ModelProto,
    feeds: Iterable[Mapping[str, np.ndarray]],
    tensors: Sequence[str],
    config: CollectConfig | None = None,
    collector: HistogramCollector | None = None,
) -> HistogramCollector:
    """Run ``model`` on every feed and accumulate the statistics of ``tensors``.

    Args:
        model: FP32 ONNX model (path or proto).
        feeds: batches ``{input name: array}`` (iterated once).
        tensors: names of the activation tensors to calibrate (node outputs or graph inputs).
        config: threads, progress bar, histogram or max only.
        collector: an existing collector to add to (e.g. resumed state).

    Returns:
        The collector holding one `TensorHistogram` per tensor.

    Raises:
        QuantpipeError: unknown tensor, a batch that does not fit the model's inputs, NaN/Inf
            in an activation, or no batch at all.
    """
    config = config or CollectConfig()
    proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
    graph_inputs = _check_tensors(proto, tensors)
    outputs = [t for t in dict.fromkeys(tensors) if t not in graph_inputs]
    # ONNX Runtime's spinning pool (its default) even though binning shares the cores: with
    # sampled histograms calibration measured 1.18-1.27x FP32 inference with it, 1.32-1.36x
    # without (resnet18, 512 images, 2 cores; tests/bench/bench_ptq.py's phases).
    session = make_session(with_outputs(proto, outputs), OrtConfig(threads=config.threads))
    specs = input_specs(session)
    names = [*graph_inputs, *outputs]
    collector = collector or HistogramCollector(with_histogram=config.with_histogram)
    collector.prepare(names)
    # Two runners, each with its own output buffers: while one slice's activations are
    # binned, ONNX Runtime (which releases the GIL) computes the next slice into the other.
    # Binning barely uses a second core (np.bincount holds the GIL); overlapping it with
    # inference took resnet18's calibration from 1.60x to 1.40x the FP32 inference time
    # (2 cores, tests/bench/bench_ptq.py's phases, every value binned).
    runners = [BoundRunner(session, outputs) for _ in range(2)]
    batches = slices = 0
    # The slice being computed, and the sample its histograms take.
    pending: tuple[Future[list[np.ndarray]], SpatialSample] | None = None
    workers = config.threads or os.cpu_count() or 1
    with ThreadPoolExecutor(1) as inference, ThreadPoolExecutor(workers) as pool:
        for feed in _progress(feeds, config.progress):
            check_feed(feed, specs)
            for part in split_batch(feed, specs, config.max_batch):
                future = inference.submit(_activations, runners[slices % 2], part, graph_inputs)
                if pending is not None:
                    _fold(pool, collector, names, pending[0].result(), pending[1])
                pending = future, SpatialSample.rotating(config.histogram_stride, slices)
                slices += 1
            batches += 1
        if pending is not None:
            _fold(pool, collector, names, pending[0].result(), pending[1])
    if batches == 0:
        raise QuantpipeError("calibration data is empty: no batch was given")
    return collector


def _activations(
    runner: BoundRunner, feed: Mapping[str, np.ndarray], graph_inputs: list[str]
) -> list[np.ndarray]:
    """The graph inputs to calibrate, then the exposed outputs, for one slice."""
    arrays = [feed[n] for n in graph_inputs]
    return arrays + (runner.run(feed) if runner.outputs else [])


def _fold(
    pool: ThreadPoolExecutor,
    collector: HistogramCollector,
    names: list[str],
    arrays: list[np.ndarray],
    sample: SpatialSample,
) -> None:
    """Fold each tensor's batch into its statistics, largest first for an even split."""
    order = sorted(range(len(names)), key=lambda k: -np.size(arrays[k]))
    for _ in pool.map(lambda k: collector.collect(names[k], arrays[k], sample), order):
        pass  # iterating re-raises the first error (e.g. NaN in a named tensor)


def split_batch(
    feed: Mapping[str, np.ndarray], specs: Sequence[InputSpec], max_batch: int
) -> list[Mapping[str, np.ndarray]]:
    """``feed`` cut along axis 0 into slices of at most ``max_batch`` samples.

    Only where every input has a free leading dimension and all share its length; otherwise
    (or with max_batch 0) the feed is returned whole.
    """
    sizes = {np.shape(v)[0] if np.ndim(v) else -1 for v in feed.values()}
    free = all(not isinstance(s.shape[0], int) for s in specs if s.shape)
    if max_batch == 0 or len(sizes) != 1 or not free:
        return [feed]
    (n,) = sizes
    if n <= max_batch:
        return [feed]
    return [{k: v[i : i + max_batch] for k, v in feed.items()} for i in range(0, n, max_batch)]


def _check_tensors(model: onnx.ModelProto, tensors: Sequence[str]) -> list[str]:
    """Validate tensor names; return those that are graph inputs (read from the feeds)."""
    produced = {out for node in model.graph.node for out in node.output}
    inputs = {i.name for i in model.graph.input}
    unknown = [t for t in tensors if t not in produced and t not in inputs]
    if unknown:
        raise QuantpipeError(
            f"tensor {unknown[0]!r} to calibrate is neither a node output nor an input of the model"
        )
    return [t for t in dict.fromkeys(tensors) if t in inputs and t not in produced]


def _progress(feeds: Iterable[Mapping[str, np.ndarray]], enabled: bool) -> Iterable[Any]:
    return track(feeds, "calibrate", enabled, unit="batch")
