"""Chunked, optionally threaded iteration over the rows (blocks) of a tensor.

Work is cut into chunks of about `CHUNK_ELEMS` weights so temporaries stay in cache
and peak memory stays bounded (a few chunk-sized float32 buffers per thread). Measured
on this 2-core EPYC (B = 64, sigma rule, 25 M weights), encode throughput by chunk
size: 16 Ki 108 M/s, 64 Ki 185 M/s, 256 Ki 220 M/s, 1 Mi 200 M/s: smaller chunks pay
numpy's per-call overhead on the per-block arrays, larger ones fall out of cache.
numpy releases the GIL inside its loops, so a thread pool over groups of chunks
scales with cores.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from quantpipe.errors import QuantpipeError

CHUNK_ELEMS = 1 << 18
# Below this many weights a tensor is processed inline: the pool's hand-off costs more.
_MIN_PARALLEL_ELEMS = 1 << 16

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def default_workers() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int | None) -> int:
    """Validate `workers` (None = all available CPUs)."""
    if workers is None:
        return default_workers()
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise QuantpipeError(f"workers={workers!r} is not allowed: use an int >= 1 or None")
    return workers


def chunk_rows(block_len: int) -> int:
    """Rows (blocks) per chunk for blocks of `block_len` weights."""
    return max(1, CHUNK_ELEMS // block_len)


def _pool(workers: int) -> ThreadPoolExecutor:
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="btc")
        return _pools[workers]


def for_row_ranges(
    n_rows: int, block_len: int, workers: int, fn: Callable[[int, int], None]
) -> None:
    """Call fn(start, stop) over [0, n_rows) in chunk-sized, disjoint row ranges.

    With workers > 1 and enough work, the ranges are spread over a shared thread
    pool in `workers` groups (chunks shrink, down to 1/4 of CHUNK_ELEMS, so that
    mid-sized tensors still give every worker two of them); fn must only write rows
    start..stop of its outputs. Exceptions from fn propagate to the caller.
    """
    step = chunk_rows(block_len)
    parallel = workers > 1 and n_rows * block_len >= _MIN_PARALLEL_ELEMS
    if parallel:
        step = max(min(step, -(-n_rows // (2 * workers))), max(1, step // 4))
    ranges = [(s, min(s + step, n_rows)) for s in range(0, n_rows, step)]
    if not parallel or len(ranges) < 2:
        for start, stop in ranges:
            fn(start, stop)
        return

    def run_group(group: list[tuple[int, int]]) -> None:
        for start, stop in group:
            fn(start, stop)

    groups = [ranges[i::workers] for i in range(workers)]
    futures = [_pool(workers).submit(run_group, g) for g in groups if g]
    for f in futures:
        f.result()
