"""Reference executor: runs a tlc IR graph with the NumPy kernels of the op table.

fp16 values follow :func:`tlc.ops.run_kernel`'s rule (compute in fp32, round once), the same as
the MIL interpreter, so an fp16/mixed IR graph runs as its package would.

This is the reference every other backend is tested against. Values are freed after their last
use, so peak memory is the live set, not the whole graph.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from tlc.errors import InputError, TlcError
from tlc.ir import DTYPES, Graph, Node
from tlc.ops import get_op, run_kernel


def validate_feeds(expected: list[tuple[str, tuple, np.dtype]], feeds: Mapping[str, np.ndarray],
                   what: str = "the model") -> dict[str, np.ndarray]:
    """Check named inputs against ``expected`` ``(name, shape, numpy dtype)`` entries.

    Safe conversions are applied (any int -> int32, float64 -> float32, float32 <-> float16 where
    the model takes float16, int/bool -> bool); anything else raises :class:`InputError` naming
    the input, what was expected and what was given.
    """
    want = {n: (tuple(s), np.dtype(d)) for n, s, d in expected}
    missing = [n for n in want if n not in feeds]
    extra = [n for n in feeds if n not in want]
    if missing or extra:
        raise InputError(
            f"inputs do not match {what}: missing {missing or 'none'}, unexpected {extra or 'none'}; "
            f"expected {', '.join(f'{n}: {d.name}{list(s)}' for n, (s, d) in want.items())}"
        )
    out = {}
    for name, (shape, dt) in want.items():
        a = np.asarray(feeds[name])
        if a.dtype != dt:
            ok = ((dt.kind in "iu" and a.dtype.kind in "iub") or (dt.kind == "f" and a.dtype.kind == "f")
                  or (dt.kind == "b" and a.dtype.kind in "iub"))
            if not ok:
                raise InputError(f"input {name!r} has dtype {a.dtype}, expected {dt.name}")
            a = a.astype(dt)
        if tuple(a.shape) != shape:
            raise InputError(f"input {name!r} has shape {list(a.shape)}, expected {list(shape)}")
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


def run_graph(
    g: Graph,
    feeds: Mapping[str, np.ndarray],
    observer: Callable[[Node, tuple], None] | None = None,
) -> dict[str, np.ndarray]:
    """Execute ``g`` on named NumPy inputs; returns ``{output_name: array}``.

    ``observer(node, outputs)`` is called after each node (used by ``tlc verify`` to compare
    intermediates). Kernel failures raise :class:`TlcError` naming the node and source line.
    """
    env = {v: a for v, a in zip(g.inputs, (check_inputs(g, feeds)[v.name] for v in g.inputs))}
    free = last_uses(g)
    for i, n in enumerate(g.nodes):
        try:
            if n.op == "const":
                outs = (n.attrs["val"],)
            else:
                outs = run_kernel(get_op(n.op), n.attrs, [env[v] for v in n.inputs],
                                  [DTYPES[v.type.dtype] for v in n.outputs])
        except TlcError:
            raise
        except Exception as e:  # a kernel bug or bad data: say which node
            raise TlcError(f"NumPy kernel for {n.op} failed on node {n.name}: {type(e).__name__}: {e}", loc=n.loc) from e
        for v, a in zip(n.outputs, outs):
            env[v] = a
        if observer is not None:
            observer(n, outs)
        for v in free.get(i, ()):
            env.pop(v, None)
    return {name: env[v] for name, v in zip(g.output_names, g.outputs)}
