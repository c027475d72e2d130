"""Layout passes: run channels-last stretches of a graph in channels-first layout.

ConvNeXt-style blocks permute NCHW -> NHWC, apply layer_norm / linear / gelu / linear / scale on
the last axis, and permute back. On the ANE a linear over channels is a 1x1 conv in NCHW
(apple/ml-ane-transformers; ../shared/ane-rules.md), and every transpose is a data copy. This
pass sinks transposes forward through ops that commute with them, rewriting the ops to act on
the un-permuted tensor, until a transpose meets its inverse and both vanish.
"""
from __future__ import annotations

import numpy as np

from tlc.errors import IRError
from tlc.ir import Graph
from tlc.ops import elementwise_ops

from .registry import register_pass
from .cleanup import merge_transposes, remove_noops
from .rewrite import Match, Pat, const, either, rewrite

#: Every elementwise op commutes with any transpose; the sets come from the op rows'
#: ``elementwise`` trait (one tensor input / two broadcasting inputs), so a new row is covered.
UNARY = tuple(sorted(elementwise_ops("unary")))
BINARY = tuple(sorted(elementwise_ops("binary")))


def _inverse(perm) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


def _sink_unary(m: Match):
    t, op = m["t"], m["op"]
    if not m.single_use("t"):
        return None
    y = m.add(op.op, [t.inputs[0]], dict(op.attrs), name=op.name)
    return m.add("transpose", [y], {"perm": t.attrs["perm"]}, name=op.name + "_t")


def _sink_binary_const(m: Match):
    t, op = m["t"], m["op"]
    c = m.const_val("c")
    perm = t.attrs["perm"]
    if not m.single_use("t") or c.ndim > len(perm):
        return None
    c_full = c.reshape((1,) * (len(perm) - c.ndim) + c.shape)
    c_new = np.ascontiguousarray(np.transpose(c_full, _inverse(perm)))
    ins = [t.inputs[0], m.const(c_new, op.name + "_c")]
    if op.inputs[0] is not m.val("t"):
        ins = ins[::-1]
    y = m.add(op.op, ins, dict(op.attrs), name=op.name)
    return m.add("transpose", [y], {"perm": perm}, name=op.name + "_t")


def _sink_binary_both(m: Match):
    a, b, op = m["t"], m["u"], m["op"]
    if a.attrs["perm"] != b.attrs["perm"] or not (m.single_use("t") and m.single_use("u")):
        return None
    y = m.add(op.op, [a.inputs[0], b.inputs[0]], dict(op.attrs), name=op.name)
    return m.add("transpose", [y], {"perm": a.attrs["perm"]}, name=op.name + "_t")


def _sink_layer_norm(m: Match):
    t, ln = m["t"], m["op"]
    perm = t.attrs["perm"]
    rank = len(perm)
    axes = [a % rank for a in ln.attrs["axes"]]
    mapped = [perm[a] for a in axes]
    if not m.single_use("t") or mapped != sorted(mapped):
        return None  # gamma/beta are laid out in axis order; keep it simple
    y = m.add("layer_norm", [t.inputs[0]] + list(ln.inputs[1:]), {**ln.attrs, "axes": tuple(mapped)}, name=ln.name)
    return m.add("transpose", [y], {"perm": perm}, name=ln.name + "_t")


def _linear_to_conv(m: Match):
    """linear over the last axis of transpose(x, (0, 2, 3, 1)) == 1x1 conv over x's channels."""
    t, lin = m["t"], m["op"]
    w = m.const_val("w")
    if not m.single_use("t") or tuple(t.attrs["perm"]) != (0, 2, 3, 1) or w is None:
        return None
    b = lin.inputs[2:] if len(lin.inputs) == 3 else []
    if b and m.const_val("b") is None:
        return None
    w4 = m.const(np.ascontiguousarray(w.reshape(w.shape + (1, 1))), lin.name + "_w1x1")
    y = m.add("conv", [t.inputs[0], w4] + list(b), {"pad": (0, 0, 0, 0)}, name=lin.name)
    return m.add("transpose", [y], {"perm": (0, 2, 3, 1)}, name=lin.name + "_t")


T = Pat("transpose", name="t")
RULES = [
    (Pat("transpose", (Pat("transpose", name="t1"),), name="t2"), merge_transposes),
    (Pat(UNARY, (T,), name="op"), _sink_unary),
    (either(BINARY, T, const("c"), name="op"), _sink_binary_const),
    (Pat(BINARY, (T, Pat("transpose", name="u")), name="op"), _sink_binary_both),
    (Pat("layer_norm", (T,), name="op"), _sink_layer_norm),
    (Pat("linear", (T, const("w"), const("b")), name="op"), _linear_to_conv),
    (Pat("linear", (T, const("w")), name="op"), _linear_to_conv),
]


@register_pass("layout::channels_first")
def channels_first(g: Graph) -> Graph:
    """Sink transposes through ops that commute with them so that inverse pairs cancel; a linear
    over channels-last data becomes a 1x1 conv over channels-first data. The rewrite is kept
    only if it leaves fewer transposes than it found.

    Given:  %a = transpose(%x, (0,2,3,1)); %b = layer_norm(%a, axes=(-1,)); %c = linear(%b, W, b)
            %d = gelu(%c); %e = transpose(%d, (0,3,1,2))
    Result: %b = layer_norm(%x, axes=(1,)); %c = conv(%b, W[:, :, None, None], b); %e = gelu(%c)
    """
    before = sum(n.op == "transpose" for n in g.nodes)
    if not before:
        return g
    try:
        g2 = remove_noops(rewrite(g, RULES, max_iters=64))
    except IRError:  # did not settle: an optional layout change is not worth failing the build
        return g
    after = sum(n.op == "transpose" for n in g2.nodes)
    return g2 if after < before else g
