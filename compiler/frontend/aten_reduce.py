"""ATen -> IR lowerings of reductions and normalizations MIL lacks as one op (registered into
:data:`tlc.frontend.common.LOWERINGS`): boolean reductions, ``count_nonzero``, vector norms,
variances, log-softmax and the training-mode layer/batch normalizations.

Each decomposition follows the formula named in its docstring; accuracy claims are for fp32 and
are checked against torch eager by benchmarks/bench_opinfo.py.
"""
from __future__ import annotations

import torch

from .common import as_float_result, lower, norm_axis, sub_name


def _red_axes(x, dim):
    r = x.type.rank
    if dim in (None, [], ()):
        return tuple(range(r))
    return tuple(sorted({norm_axis(d, r) for d in (dim if isinstance(dim, (list, tuple)) else [dim])}))


def _bool_reduce(op):
    def fn(L, x, dim=None, keepdim=False):
        x = L.v(x)
        if x.type.rank == 0:
            return L.cast(x, "bool")
        t = L.add("not_equal", [x, L.scalar(0, x.type.dtype)], name=sub_name(L, "nz")) if x.type.dtype != "bool" else x
        i = L.add(op, [L.cast(t, "int32")], {"axes": _red_axes(x, dim), "keep_dims": bool(keepdim)}, name=sub_name(L, "red"))
        return L.add("cast", [i], {"dtype": "bool"})

    fn.__doc__ = f"``{op}`` of (x != 0) as int32 (MIL reductions have no bool domain)."
    return fn


lower("aten.any.default", "aten.any.dim", "aten.any.dims")(_bool_reduce("reduce_max"))
lower("aten.all.default", "aten.all.dim", "aten.all.dims")(_bool_reduce("reduce_min"))


@lower("aten.count_nonzero.dim_IntList", "aten.count_nonzero.default")
def _count_nonzero(L, x, dim=None):
    x = L.v(x)
    t = L.add("not_equal", [x, L.scalar(0, x.type.dtype)], name=sub_name(L, "nz")) if x.type.dtype != "bool" else x
    if x.type.rank == 0:
        return L.cast(t, "int32")
    return L.add("reduce_sum", [L.cast(t, "int32")], {"axes": _red_axes(x, dim), "keep_dims": False})


@lower("aten.linalg_vector_norm.default")
def lower_vector_norm(L, x, ord=2, dim=None, keepdim=False, *, dtype=None):
    """Every order: 2 and 1 as MIL's l2/l1 reductions, inf/-inf as max/min of |x|, 0 as the count
    of non-zeros, any other p as (sum |x|^p)^(1/p)."""
    x = as_float_result(L, x)
    dt = x.type.dtype
    if x.type.rank == 0:
        a = L.add("abs", [x], name=sub_name(L, "abs"))
        return L.cast(L.add("not_equal", [x, L.scalar(0.0, dt)]), dt) if ord == 0 else a
    attrs = {"axes": _red_axes(x, dim), "keep_dims": bool(keepdim)}
    if ord == 2:
        return L.add("reduce_l2_norm", [x], attrs)
    if ord == 1:
        return L.add("reduce_l1_norm", [x], attrs)
    a = L.add("abs", [x], name=sub_name(L, "abs"))
    if ord == float("inf"):
        return L.add("reduce_max", [a], attrs)
    if ord == float("-inf"):
        return L.add("reduce_min", [a], attrs)
    if ord == 0:
        nz = L.cast(L.add("not_equal", [x, L.scalar(0.0, dt)], name=sub_name(L, "nz")), dt)
        return L.add("reduce_sum", [nz], attrs)
    p = L.add("pow", [a, L.scalar(float(ord), dt)], name=sub_name(L, "pow"))
    s = L.add("reduce_sum", [p], attrs, name=sub_name(L, "sum"))
    return L.add("pow", [s, L.scalar(1.0 / float(ord), dt)])


def var_mean(L, x, dim, correction, keepdim, tag="var"):
    """Variance over ``dim`` with ``correction`` (Bessel's = 1): sum((x - mean)^2) / (N - correction),
    the two-pass formula (no cancellation of E[x^2] - E[x]^2). Also returns the mean."""
    x = L.v(x)
    dt = x.type.dtype
    axes = _red_axes(x, dim)
    n = 1
    for a in axes:
        n *= x.type.shape[a]
    mean_k = L.add("reduce_mean", [x], {"axes": axes, "keep_dims": True}, name=sub_name(L, tag + "_meank"))
    d = L.add("sub", [x, mean_k], name=sub_name(L, tag + "_d"))
    ss = L.add("reduce_sum", [L.add("mul", [d, d], name=sub_name(L, tag + "_d2"))], {"axes": axes, "keep_dims": bool(keepdim)},
               name=sub_name(L, tag + "_ss"))
    corr = 1 if correction is None else correction
    denom = max(n - corr, 0)
    v = L.add("real_div", [ss, L.scalar(float(denom), dt)], name=sub_name(L, tag))  # n - corr <= 0 gives inf/NaN, as torch
    mean = mean_k if keepdim else L.add("reduce_mean", [x], {"axes": axes, "keep_dims": False}, name=sub_name(L, tag + "_mean"))
    return v, mean


@lower("aten.var.correction", "aten.var.dim", "aten.var.default")
def _var_op(L, x, dim=None, *args, correction=None, keepdim=False, unbiased=None):
    if L.node.target == torch.ops.aten.var.dim:  # var(x, dim, unbiased=True, keepdim=False)
        unbiased = args[0] if args else (True if unbiased is None else unbiased)
        keepdim = args[1] if len(args) > 1 else keepdim
        correction = 1 if unbiased else 0
    elif L.node.target == torch.ops.aten.var.default:  # var(x, unbiased=True)
        correction = 1 if (dim is None or dim) else 0
        dim = None
    x = as_float_result(L, x)
    if x.type.rank == 0:
        return L.add("real_div", [L.add("sub", [x, x], name=sub_name(L, "z")),
                                  L.scalar(float(max(1 - (1 if correction is None else correction), 0)), x.type.dtype)])
    return var_mean(L, x, dim, correction, keepdim)[0]


@lower("aten.var_mean.correction")
def _var_mean(L, x, dim=None, *, correction=None, keepdim=False):
    x = as_float_result(L, x)
    return var_mean(L, x, dim, correction, keepdim)


@lower("aten._log_softmax.default", "aten.log_softmax.int")
def _log_softmax(L, x, dim, half_to_float=False, dtype=None):
    """log_softmax = (x - max) - log(sum(exp(x - max))) along ``dim`` (no log of a rounded-to-0
    probability, unlike log(softmax))."""
    x = as_float_result(L, x)
    if x.type.rank == 0:
        return L.add("sub", [x, x])
    ax = norm_axis(dim, x.type.rank)
    m = L.add("reduce_max", [x], {"axes": (ax,), "keep_dims": True}, name=sub_name(L, "max"))
    s = L.add("sub", [x, m], name=sub_name(L, "shift"))
    lse = L.add("log", [L.add("reduce_sum", [L.add("exp", [s], name=sub_name(L, "exp"))], {"axes": (ax,), "keep_dims": True},
                              name=sub_name(L, "sum"))], {"epsilon": 0.0}, name=sub_name(L, "lse"))
    return L.add("sub", [s, lse])
