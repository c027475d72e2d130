"""Stable forms for the known fp16 cliffs: rewrites that keep the math and remove an overflow,
an underflow to 0 before a ``log``, or a cancellation.

fp16's largest value is 65504 = e^11.09, so ``exp`` overflows for x > 11; its smallest positive
value is 2^-24 = e^-16.6, so a probability below that is 0 and its log is -inf (IEEE 754
binary16). A model written the textbook way — ``log(sum(exp(x)))``, ``log(softmax(x))``,
``E[x^2] - E[x]^2`` — is exact in fp32 for ordinary inputs and wrong in fp16; the max-shifted
and two-pass forms are the standard remedies (Blanchard, Higham & Higham, "Accurately computing
the log-sum-exp and softmax functions", IMA J. Numer. Anal. 2021; Welford/two-pass variance,
Chan, Golub & LeVeque 1983). tlc's own lowerings already emit the stable forms (``logsumexp``,
``log_softmax``, ``logcumsumexp``, ``var``, ``softplus``: tlc.frontend); these passes catch the
forms a model spells out itself. Mask sentinels (``-inf``, ``finfo(float32).min``) are clamped by
``precision::clamp_sentinels`` (tlc.passes.precision), which the fp16 paths run first.

Each rewrite fires only when the intermediates it replaces have no other reader.
"""
from __future__ import annotations

import numpy as np

from tlc.ir import DTYPES, Graph, Value

from .registry import register_pass
from .rewrite import Match, Pat, const, rewrite


def _axes(node, rank: int) -> tuple[int, ...] | None:
    axes = node.attrs.get("axes")
    if axes is None:
        return None
    return tuple(sorted(int(a) % rank for a in axes))


def _shifted(m: Match, x: Value) -> bool:
    """Whether ``x`` is already ``a - max(a)`` (:func:`_shift`'s result, or any max-shifted form)."""
    p = m.producer(x)
    q = m.producer(p.inputs[1]) if p is not None and p.op == "sub" else None
    return q is not None and (q.op == "reduce_max" or (q.op == "select" and (m.producer(q.inputs[2]) or q).op == "reduce_max"))


def _shift(m: Match, x: Value, axes: tuple[int, ...], tag: str) -> tuple[Value, Value]:
    """``(x - mk, mk)`` with mk = reduce_max(x) over ``axes`` (kept dims), an infinite max replaced
    by 0 so a row of -inf stays -inf instead of NaN (as torch's logsumexp)."""
    dt = x.type.dtype
    mk = m.add("reduce_max", [x], {"axes": axes, "keep_dims": True}, name=f"{m.root.name}_{tag}max")
    inf = m.const(np.array(np.inf, dtype=DTYPES[dt]), f"{m.root.name}_{tag}inf")
    zero = m.const(np.array(0, dtype=DTYPES[dt]), f"{m.root.name}_{tag}zero")
    isinf = m.add("equal", [m.add("abs", [mk], name=f"{m.root.name}_{tag}abs"), inf], name=f"{m.root.name}_{tag}isinf")
    mk = m.add("select", [isinf, zero, mk], name=f"{m.root.name}_{tag}m")
    return m.add("sub", [x, mk], name=f"{m.root.name}_{tag}shift"), mk


def _logsumexp(m: Match):
    x, red = m.val("x"), m["sum"]
    axes = _axes(red, x.type.rank)
    if (axes is None or not (m.single_use("e") and m.single_use("sum")) or m["log"].attrs.get("epsilon", 0.0)
            or _shifted(m, x)):
        return None
    keep = bool(red.attrs.get("keep_dims", False))
    s, mk = _shift(m, x, axes, "lse_")
    e = m.add("exp", [s], name=f"{m.root.name}_lse_exp")
    tot = m.add("reduce_sum", [e], {"axes": axes, "keep_dims": keep}, name=f"{m.root.name}_lse_sum")
    lg = m.add("log", [tot], {"epsilon": 0.0}, name=f"{m.root.name}_lse_log")
    off = mk if keep else m.add("squeeze", [mk], {"axes": axes}, name=f"{m.root.name}_lse_sq")
    return m.add("add", [lg, off])


@register_pass("stable::logsumexp")
def stable_logsumexp(g: Graph) -> Graph:
    """log-sum-exp with the max shifted out: exp(x) overflows fp16 for x > 11.

    Given:  %e = exp(%x); %s = reduce_sum(%e, axes); %y = log(%s)
    Result: %m = reduce_max(%x, axes, keep_dims); %y = log(reduce_sum(exp(%x - %m), axes)) + squeeze(%m)
    """
    pat = Pat("log", (Pat("reduce_sum", (Pat("exp", (Pat(name="x"),), name="e"),), name="sum"),), name="log")
    return rewrite(g, [(pat, _logsumexp)])


def _log_softmax(m: Match):
    x, sm = m.val("x"), m["softmax"]
    if not m.single_use("softmax") or m["log"].attrs.get("epsilon", 0.0) or _shifted(m, x):
        return None
    ax = int(sm.attrs.get("axis", -1)) % x.type.rank
    s, _ = _shift(m, x, (ax,), "ls_")
    tot = m.add("reduce_sum", [m.add("exp", [s], name=f"{m.root.name}_ls_exp")], {"axes": (ax,), "keep_dims": True},
                name=f"{m.root.name}_ls_sum")
    return m.add("sub", [s, m.add("log", [tot], {"epsilon": 0.0}, name=f"{m.root.name}_ls_log")])


@register_pass("stable::log_softmax")
def stable_log_softmax(g: Graph) -> Graph:
    """log(softmax(x)) as x - max - log(sum(exp(x - max))): a probability below 2^-24 is 0 in fp16
    and its log -inf.

    Given:  %p = softmax(%x, axis); %y = log(%p)
    Result: %s = %x - reduce_max(%x, axis); %y = %s - log(reduce_sum(exp(%s), axis))
    """
    pat = Pat("log", (Pat("softmax", (Pat(name="x"),), name="softmax"),), name="log")
    return rewrite(g, [(pat, _log_softmax)])


def _logcumsumexp(m: Match):
    x, cs = m.val("x"), m["cumsum"]
    if not (m.single_use("e") and m.single_use("cumsum")) or m["log"].attrs.get("epsilon", 0.0) or _shifted(m, x):
        return None
    ax = int(cs.attrs.get("axis", 0)) % x.type.rank
    s, mk = _shift(m, x, (ax,), "lcse_")
    c = m.add("cumsum", [m.add("exp", [s], name=f"{m.root.name}_lcse_exp")], dict(cs.attrs), name=f"{m.root.name}_lcse_cs")
    return m.add("add", [m.add("log", [c], {"epsilon": 0.0}, name=f"{m.root.name}_lcse_log"), mk])


@register_pass("stable::logcumsumexp")
def stable_logcumsumexp(g: Graph) -> Graph:
    """log(cumsum(exp(x))) with the axis maximum shifted out (no overflow; a prefix more than 16.6
    below the maximum still underflows to -inf in fp16, which range analysis then keeps in fp32).

    Given:  %e = exp(%x); %c = cumsum(%e, axis); %y = log(%c)
    Result: %m = reduce_max(%x, axis, keep_dims); %y = log(cumsum(exp(%x - %m), axis)) + %m
    """
    pat = Pat("log", (Pat("cumsum", (Pat("exp", (Pat(name="x"),), name="e"),), name="cumsum"),), name="log")
    return rewrite(g, [(pat, _logcumsumexp)])


def _is_two(v) -> bool:
    return v.size == 1 and float(np.asarray(v).ravel()[0]) == 2.0


def _variance(m: Match):
    x, x2 = m.val("x"), m.val("x2")
    if x2 is not x:
        return None
    ms, mm = m["msq"], m["mean"]
    rank = x.type.rank
    if _axes(ms, rank) is None or _axes(ms, rank) != _axes(mm, rank):
        return None
    keep = bool(ms.attrs.get("keep_dims", False))
    if keep != bool(mm.attrs.get("keep_dims", False)) or not (m.single_use("sq") and m.single_use("msq")
                                                               and m.single_use("p")):
        return None
    axes = _axes(ms, rank)
    mk = m.add("reduce_mean", [x], {"axes": axes, "keep_dims": True}, name=f"{m.root.name}_var_mean")
    d = m.add("sub", [x, mk], name=f"{m.root.name}_var_d")
    return m.add("reduce_mean", [m.add("mul", [d, d], name=f"{m.root.name}_var_d2")], {"axes": axes, "keep_dims": keep})


@register_pass("stable::variance")
def stable_variance(g: Graph) -> Graph:
    """E[x^2] - E[x]^2 as the two-pass E[(x - E[x])^2]: the difference of two nearly equal
    numbers loses every digit fp16 has when the mean is large next to the spread.

    Given:  %q = reduce_mean(mul(%x, %x), axes); %m = reduce_mean(%x, axes); %v = sub(%q, pow(%m, 2))
    Result: %d = %x - reduce_mean(%x, axes, keep_dims); %v = reduce_mean(mul(%d, %d), axes)
    """
    sq = Pat("mul", (Pat(name="x"), Pat(name="x2")), name="sq")
    mean = Pat("reduce_mean", (Pat(name="x"),), name="mean")
    rules = []
    for p in (Pat("pow", (mean, const(where=_is_two)), name="p"), Pat("mul", (mean, mean), name="p"),
              Pat("square", (mean,), name="p")):
        rules.append((Pat("sub", (Pat("reduce_mean", (sq,), name="msq"), p)), _variance))
    return rewrite(g, rules)
