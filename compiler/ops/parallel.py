"""Run a NumPy kernel tile by tile, tiles spread over worker threads.

NumPy's ufuncs are single-threaded; only BLAS (matmul, conv's GEMM) uses the machine's cores. A
chain of elementwise ufuncs over a large array (``gelu``'s erf is ~30 passes) is also bound by
memory traffic, since every pass writes a full-size temporary. :func:`map_rows` fixes both: it
cuts the array into tiles of whole rows small enough for the temporaries to stay in the CPU's L2
cache, and runs the tiles on :data:`NUM_THREADS` threads (ufunc loops release the GIL, so the
threads run in parallel). Each output element is computed by exactly the same sequence of
operations as without tiling, so results are bit-identical.

Thread count: ``TLC_NUM_THREADS`` if set, else the CPUs this process may run on
(``os.sched_getaffinity``), the same count NumPy's OpenBLAS uses by default.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np


def _cpu_count() -> int:
    env = os.environ.get("TLC_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS has no sched_getaffinity
        return max(1, os.cpu_count() or 1)


#: Worker threads for tiled kernels (``TLC_NUM_THREADS`` or the usable CPUs).
NUM_THREADS = _cpu_count()

#: Elements per tile: 32768 fp32 = 128 KiB per temporary, so a chain's few live temporaries fit in
#: a 1-2 MiB L2 cache. Arrays under two tiles run untiled (thread hand-off costs ~10-50 us).
TILE = 1 << 15

_pool: ThreadPoolExecutor | None = None


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(NUM_THREADS - 1, 1), thread_name_prefix="tlc-tile")
    return _pool


def parallel_for(fn: Callable[[int, int], None], n: int, grain: int = 1) -> None:
    """Call ``fn(start, stop)`` on consecutive ranges covering ``range(n)``, spread over
    :data:`NUM_THREADS` threads (the caller's thread takes the first range). Ranges hold at least
    ``grain`` items, so small ``n`` runs on the caller's thread alone. ``fn`` must only write
    disjoint outputs per range. Floating-point errors are ignored inside ``fn`` (inf/NaN are
    results, as in :func:`tlc.ops.run_kernel`); the first exception raised by ``fn`` propagates.
    """
    parts = max(1, min(NUM_THREADS, n // max(grain, 1)))
    bounds = [n * i // parts for i in range(parts + 1)]

    def work(i):
        with np.errstate(all="ignore"):  # errstate is per thread (a context variable)
            fn(bounds[i], bounds[i + 1])

    futures = [_get_pool().submit(work, i) for i in range(1, parts)]
    work(0)
    for f in futures:
        f.result()


def map_rows(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, row: int = 1,
             out_dtype=None) -> np.ndarray:
    """``fn(x)`` computed on tiles of whole rows, in parallel; returns a new C-contiguous array.

    ``x`` is viewed as ``[-1, row]`` (``row`` must divide ``x.size``; ``row=1`` for elementwise
    ``fn``, the last axis' length for a ``fn`` that works along the last axis, e.g. softmax).
    ``fn`` receives a ``[rows, row]`` block (a flat 1-D block when ``row == 1``) and must return a
    block of the same shape whose rows depend only on the same rows of the input. The result has
    ``x``'s shape and ``out_dtype`` (default ``x.dtype``). Floating-point errors are ignored
    inside ``fn``. Raises ValueError if ``row`` does not divide ``x.size``.
    """
    n = x.size
    dt = np.dtype(out_dtype or x.dtype)
    if n == 0:
        return np.empty(x.shape, dt)
    if row <= 0 or n % row:
        raise ValueError(f"row {row} does not divide the {n} elements of {list(x.shape)}")
    shape = (-1,) if row == 1 else (-1, row)
    if n < 2 * TILE:
        with np.errstate(all="ignore"):
            return np.ascontiguousarray(fn(x.reshape(shape)), dtype=dt).reshape(x.shape)
    x2 = np.ascontiguousarray(x).reshape(shape)
    out = np.empty(x2.shape, dt)
    step = max(1, TILE // row)

    def work(a, b):
        for s in range(a * step, min(b * step, x2.shape[0]), step):
            out[s:s + step] = fn(x2[s:s + step])

    parallel_for(work, -(-x2.shape[0] // step))
    return out.reshape(x.shape)
