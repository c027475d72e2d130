"""Reference executor: runs a tlc IR graph with the NumPy kernels of the op table.

fp16 values follow :func:`tlc.ops.run_kernel`'s rule (compute in fp32, round once), the same as
the MIL interpreter, so an fp16/mixed IR graph runs as its package would.

This is the reference every other backend is tested against. Values are freed after their last
use, so peak memory is the live set, not the whole graph.

Speed: a graph is compiled once into a :class:`Plan` (cached per graph object): every node's
kernel bound with its attributes and dtypes (:func:`tlc.ops.bind_kernel`), values numbered into
slots of a list, constants placed up front and the slots to free after each step precomputed, so
a run is one thin loop over the steps. The kernels' own speed (BLAS GEMMs, tiled multi-threaded
elementwise chains) is documented in compiler/ops/; measurements in docs/performance.md.

Memory: every kernel returns fresh arrays, megabytes each for full-size models. With glibc's
default malloc settings such blocks are mmap'ed and unmapped again (or trimmed off the heap) once
freed, so the next op's output page-faults its memory in anew — measured at ~0.4 ms per MB here,
which made a 600k-element erf 4x slower than its arithmetic. The first :func:`run_graph` call
therefore asks glibc to keep freed memory for reuse (:func:`keep_freed_memory`);
``TLC_MALLOC_TUNE=0`` turns that off.
"""
from __future__ import annotations

import ctypes
import os
import sys
import weakref
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from tlc.errors import InputError, TlcError
from tlc.ir import DTYPES, Graph, Node, node_context
from tlc.ops import bind_kernel, get_op


def fit_int(name: str, a: np.ndarray, dt: np.dtype, what: str = "the model") -> np.ndarray:
    """Integer array ``a`` as ``dt`` (a narrower or other integer dtype), refusing values that do
    not fit instead of wrapping them (3 000 000 000 as int32 is -1294967296): raises
    :class:`InputError` naming the input, the range and the values found."""
    dt = np.dtype(dt)
    if a.dtype.kind in "iu" and a.size:
        info = np.iinfo(dt)
        lo, hi = a.min(), a.max()
        if lo < info.min or hi > info.max:
            raise InputError(f"input {name!r} of {what}: {a.dtype} values outside {dt.name}'s range "
                             f"[{info.min}, {info.max}] (min {lo}, max {hi}); {what} takes {dt.name}")
    return a.astype(dt)


def validate_feeds(expected: list[tuple[str, tuple, np.dtype]], feeds: Mapping[str, np.ndarray],
                   what: str = "the model") -> dict[str, np.ndarray]:
    """Check named inputs against ``expected`` ``(name, shape, numpy dtype)`` entries.

    A None in a shape matches any size on that axis (a flexible input: the caller checks what the
    package allows). Safe conversions are applied (any int -> int32 when every value fits
    (:func:`fit_int`), float64 -> float32, float32 <-> float16 where the model takes float16,
    int/bool -> bool); anything else raises :class:`InputError` naming the input, what was
    expected and what was given.
    """
    want = {n: (tuple(s), np.dtype(d)) for n, s, d in expected}
    missing = [n for n in want if n not in feeds]
    extra = [n for n in feeds if n not in want]
    if missing or extra:
        raise InputError(
            f"inputs do not match {what}: missing {missing or 'none'}, unexpected {extra or 'none'}; "
            f"expected {', '.join(f'{n}: {d.name}{[(chr(42) if x is None else x) for x in s]}' for n, (s, d) in want.items())}"
        )
    out = {}
    for name, (shape, dt) in want.items():
        a = np.asarray(feeds[name])
        if a.dtype != dt:
            ok = ((dt.kind in "iu" and a.dtype.kind in "iub") or (dt.kind == "f" and a.dtype.kind == "f")
                  or (dt.kind == "b" and a.dtype.kind in "iub"))
            if not ok:
                raise InputError(f"input {name!r} has dtype {a.dtype}, expected {dt.name}")
            a = fit_int(name, a, dt, what) if dt.kind in "iu" else a.astype(dt)
        if len(a.shape) != len(shape) or any(d is not None and d != s for d, s in zip(shape, a.shape)):
            want_s = [("*" if d is None else d) for d in shape]
            raise InputError(f"input {name!r} has shape {list(a.shape)}, expected {want_s}")
        out[name] = a
    return out


def check_inputs(g: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`validate_feeds` against the graph's input types."""
    return validate_feeds([(v.name, v.type.shape, DTYPES[v.type.dtype]) for v in g.inputs], feeds, "the graph")


def last_uses(g: Graph) -> dict[int, list]:
    """Node index -> values whose last reader is that node (graph outputs are never freed)."""
    last: dict = {}
    for i, n in enumerate(g.nodes):
        for v in n.inputs:
            last[v] = i
    keep = set(g.outputs)
    by_node: dict[int, list] = {}
    for v, i in last.items():
        if v not in keep:
            by_node.setdefault(i, []).append(v)
    return by_node


_MALLOC_TUNED: list[bool] = []


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve blocks up to 32 MiB from the heap and not to return freed heap
    memory to the OS below 1 GiB (``mallopt(M_MMAP_THRESHOLD, 32 MiB)``,
    ``mallopt(M_TRIM_THRESHOLD, 1 GiB)``; glibc's ``mallopt(3)``: 32 MiB is the largest mmap
    threshold it accepts on 64-bit). Freed activations are then reused without page faults; the
    cost is that the process keeps that memory. Process-wide, done once; a no-op (False) off glibc
    Linux or with ``TLC_MALLOC_TUNE=0``. Returns whether glibc accepted both settings."""
    if _MALLOC_TUNED:
        return _MALLOC_TUNED[0]
    ok = False
    if sys.platform.startswith("linux") and os.environ.get("TLC_MALLOC_TUNE", "1") != "0":
        try:
            libc = ctypes.CDLL("libc.so.6")
            m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
            ok = bool(libc.mallopt(m_mmap_threshold, 32 << 20)) & bool(libc.mallopt(m_trim_threshold, 1 << 30))
        except (OSError, AttributeError):  # not glibc (musl has no mallopt)
            ok = False
    _MALLOC_TUNED.append(ok)
    return ok


@dataclass(frozen=True)
class Step:
    """One node of a :class:`Plan`: ``call(arrays) -> outputs`` (``None`` for a ``const``, whose
    value is already in its slot), the slots it reads and writes, and the slots to free after it."""

    node: Node
    call: Callable | None
    ins: tuple[int, ...]
    outs: tuple[int, ...]
    free: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    """A graph compiled for :func:`run_graph`: ``slots`` initial slot values (constants placed,
    everything else ``None``), ``inputs`` the graph inputs' slots, ``steps`` in graph order and
    ``outputs`` ``(name, slot)`` pairs."""

    slots: tuple
    inputs: tuple[int, ...]
    steps: tuple[Step, ...]
    outputs: tuple[tuple[str, int], ...]


_PLANS: "weakref.WeakKeyDictionary[Graph, Plan]" = weakref.WeakKeyDictionary()


def plan(g: Graph) -> Plan:
    """The :class:`Plan` of ``g`` (built on first use, then cached while ``g`` lives)."""
    p = _PLANS.get(g)
    if p is None:
        p = _PLANS[g] = _build_plan(g)
    return p


def value_slots(g: Graph) -> dict:
    """Value -> slot index: graph inputs first, then every node output in graph order (the
    executors' value numbering: a run keeps its values in a list indexed by slot)."""
    slot: dict = {}
    for v in g.inputs:
        slot[v] = len(slot)
    for n in g.nodes:
        for v in n.outputs:
            slot[v] = len(slot)
    return slot


def _build_plan(g: Graph) -> Plan:
    slot = value_slots(g)
    init: list = [None] * len(slot)
    free = last_uses(g)
    steps = []
    for i, n in enumerate(g.nodes):
        if n.op == "const":
            init[slot[n.out]] = n.attrs["val"]
            call = None
        else:
            call = bind_kernel(get_op(n.op, loc=n.loc), n.attrs, [DTYPES[v.type.dtype] for v in n.inputs],
                               [DTYPES[v.type.dtype] for v in n.outputs])
        steps.append(Step(n, call, tuple(slot[v] for v in n.inputs), tuple(slot[v] for v in n.outputs),
                          tuple(slot[v] for v in free.get(i, ()))))
    return Plan(tuple(init), tuple(slot[v] for v in g.inputs), tuple(steps),
                tuple((name, slot[v]) for name, v in zip(g.output_names, g.outputs)))


def run_graph(
    g: Graph,
    feeds: Mapping[str, np.ndarray],
    observer: Callable[[Node, tuple], None] | None = None,
) -> dict[str, np.ndarray]:
    """Execute ``g`` on named NumPy inputs; returns ``{output_name: array}``.

    ``observer(node, outputs)`` is called after each node, constants included (used by ``tlc
    verify`` to compare intermediates). Kernel failures raise :class:`TlcError` naming the node
    and source line.
    """
    keep_freed_memory()
    p = plan(g)
    checked = check_inputs(g, feeds)
    vals = list(p.slots)
    for v, s in zip(g.inputs, p.inputs):
        vals[s] = checked[v.name]
    with np.errstate(all="ignore"):  # inf/NaN are results (fp16 overflow shows as on device)
        for st in p.steps:
            if st.call is None:
                if observer is not None:
                    observer(st.node, (vals[st.outs[0]],))
                continue
            try:
                outs = st.call([vals[s] for s in st.ins])
            except TlcError:
                raise
            except Exception as e:  # a kernel bug or bad data: say which node
                n = st.node
                raise TlcError(f"NumPy kernel for {n.op} failed on node {n.name}: {type(e).__name__}: {e}",
                               loc=n.loc, context=node_context(g, n, arrays=[vals[s] for s in st.ins])) from e
            for s, a in zip(st.outs, outs):
                vals[s] = a
            if observer is not None:
                observer(st.node, outs)
            for s in st.free:
                vals[s] = None
    return {name: vals[s] for name, s in p.outputs}
