"""ATen -> tlc IR lowerings, one function per ATen op (names as torch spells them).

Each function receives the :class:`~tlc.frontend.lower.Lowerer` and the op's arguments with fx
nodes replaced by IR values / constants, and returns the IR value(s). Arguments follow the ATen
schemas in ``native_functions.yaml``. A lowering raises :class:`UnsupportedOpError` to decline
arguments MIL cannot express; the front-end then keeps the torch op as a fallback node
(:mod:`tlc.ops.fallback`), with the message as the node's reason.
"""
from __future__ import annotations

import math
import torch

from ..errors import FrontendError
from ..ir import Value
from .. import dtypes
from .common import LOWERINGS, SKIP, Const, ir_dtype, lower, norm_axis, operand, rank_of, shape_of, take# noqa: F401

# ---------------------------------------------------------------------------------- elementwise


def _binary(op: str, compare=False):
    def fn(L, a, b, *, alpha=1):
        out = L.out_type()
        dt = _promote(L, a, b) if compare else out.dtype
        x, y = operand(L, a, dt), operand(L, b, dt)
        if alpha != 1:
            y = L.add("mul", [y, L.scalar(alpha, dt)], name=L.node.name + "_alpha")
        return L.add(op, [x, y])

    return fn


def _promote(L, a, b) -> str:
    """IR dtype both operands of a comparison are cast to (torch's type promotion)."""
    def probe(x):
        if isinstance(x, Const):
            return x.tensor
        if isinstance(x, Value):  # a 1-element tensor promotes like a dimensioned tensor of its dtype
            return torch.empty(1, dtype=dtypes.TORCH[x.type.dtype])
        return x

    return ir_dtype(torch.result_type(probe(a), probe(b)), loc=L.loc)


for _names, _op in [
    (("aten.add.Tensor", "aten.add.Scalar"), "add"),
    (("aten.sub.Tensor", "aten.sub.Scalar"), "sub"),
    (("aten.mul.Tensor", "aten.mul.Scalar"), "mul"),
    (("aten.div.Tensor", "aten.div.Scalar"), "real_div"),
    (("aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor"), "pow"),
    (("aten.maximum.default",), "maximum"),
    (("aten.minimum.default",), "minimum"),
    (("aten.remainder.Tensor", "aten.remainder.Scalar"), "mod"),
    (("aten.floor_divide.default",), "floor_div"),
]:
    lower(*_names)(_binary(_op))

for _names, _op in [
    (("aten.eq.Tensor", "aten.eq.Scalar"), "equal"),
    (("aten.ne.Tensor", "aten.ne.Scalar"), "not_equal"),
    (("aten.lt.Tensor", "aten.lt.Scalar"), "less"),
    (("aten.le.Tensor", "aten.le.Scalar"), "less_equal"),
    (("aten.gt.Tensor", "aten.gt.Scalar"), "greater"),
    (("aten.ge.Tensor", "aten.ge.Scalar"), "greater_equal"),
]:
    lower(*_names)(_binary(_op, compare=True))


@lower("aten.rsub.Scalar", "aten.rsub.Tensor")
def _rsub(L, a, b, alpha=1):
    dt = L.out_type().dtype
    x = operand(L, a, dt)
    if alpha != 1:
        x = L.add("mul", [x, L.scalar(alpha, dt)], name=L.node.name + "_alpha")
    return L.add("sub", [operand(L, b, dt), x])


@lower("aten.bitwise_not.default", "aten.logical_not.default")
def _not(L, x):
    if L.node.target == torch.ops.aten.bitwise_not.default and L.out_type().dtype == "int32":
        # two's complement: ~x == -x - 1
        neg = L.add("mul", [L.v(x), L.scalar(-1, "int32")], name=L.node.name + "_neg")
        return L.add("sub", [neg, L.scalar(1, "int32")])
    return L.add("logical_not", [L.cast(x, "bool")])


def _unary(op, **attrs):
    def fn(L, x, *args, **kwargs):
        dt = L.out_type().dtype
        return L.add(op, [L.cast(x, dt)], dict(attrs))

    return fn


for _n, _op in [
    ("exp", "exp"), ("sqrt", "sqrt"), ("tanh", "tanh"), ("sigmoid", "sigmoid"), ("relu", "relu"), ("erf", "erf"),
    ("abs", "abs"), ("sin", "sin"), ("cos", "cos"), ("floor", "floor"), ("ceil", "ceil"), ("round", "round"),
    ("sign", "sign"), ("silu", "silu"),
]:
    lower(f"aten.{_n}.default")(_unary(_op))
for _n, _op in [("log", "log"), ("rsqrt", "rsqrt"), ("reciprocal", "inverse")]:  # MIL's default epsilon is not torch's 0
    lower(f"aten.{_n}.default")(_unary(_op, epsilon=0.0))


@lower("aten.neg.default")
def _neg(L, x):
    dt = L.out_type().dtype
    return L.add("mul", [L.v(x), L.scalar(-1, dt)])


@lower("aten.gelu.default")
def _gelu(L, x, approximate="none"):
    return L.add("gelu", [x], {"mode": "TANH_APPROXIMATION" if approximate == "tanh" else "EXACT"})


@lower("aten.hardtanh.default", "aten.clamp.default", "aten.relu6.default")
def _clip(L, x, lo=None, hi=None):
    if L.node.target == torch.ops.aten.relu6.default:
        lo, hi = 0.0, 6.0
    if L.node.target == torch.ops.aten.hardtanh.default:
        lo = -1.0 if lo is None else lo
        hi = 1.0 if hi is None else hi
    dt = L.out_type().dtype  # torch promotes an int tensor clamped by a float bound to float
    x = L.cast(L.v(x), dt)
    if dt in ("fp32", "fp16") and lo is not None and hi is not None and lo <= hi:  # (lo > hi: all hi, as torch)
        return L.add("clip", [x], {"alpha": float(lo), "beta": float(hi)})
    y = x
    if lo is not None:
        y = L.add("maximum", [y, L.scalar(lo, dt)], name=L.node.name + "_lo")
    if hi is not None:
        y = L.add("minimum", [y, L.scalar(hi, dt)])
    return y


@lower("aten.clamp_min.default")
def _clamp_min(L, x, lo):
    return _clip(L, x, lo, None)


@lower("aten.clamp_max.default")
def _clamp_max(L, x, hi):
    return _clip(L, x, None, hi)


@lower("aten.hardsigmoid.default")
def _hardsigmoid(L, x):
    return L.add("sigmoid_hard", [x], {"alpha": 1.0 / 6, "beta": 0.5})


@lower("aten.hardswish.default")
def _hardswish(L, x):
    h = L.add("sigmoid_hard", [x], {"alpha": 1.0 / 6, "beta": 0.5}, name=L.node.name + "_gate")
    return L.add("mul", [x, h])


@lower("aten.leaky_relu.default")
def _leaky_relu(L, x, negative_slope=0.01):
    return L.add("leaky_relu", [x], {"alpha": float(negative_slope)})


@lower("aten.softplus.default")
def _softplus(L, x, beta=1, threshold=20):
    """torch: x where beta * x > threshold, else log(1 + exp(beta * x)) / beta. With the default
    threshold (20) the switch changes the result by < 2e-9 relative, below fp32 resolution, so
    it is dropped; a smaller threshold is honoured with a select."""
    dt = L.out_type().dtype
    x = L.v(x)
    bx = x if beta == 1 else L.add("mul", [x, L.scalar(beta, dt)], name=L.node.name + "_beta")
    s = L.add("softplus", [bx], name=L.node.name + "_sp" if (beta != 1 or threshold < 20) else None)
    if beta != 1:
        s = L.add("real_div", [s, L.scalar(beta, dt)], name=L.node.name + "_div" if threshold < 20 else None)
    if threshold < 20:
        above = L.add("greater", [bx, L.scalar(threshold, dt)], name=L.node.name + "_above")
        s = L.add("select", [above, x, s])
    return s


@lower("aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther", "aten.where.Scalar")
def _where(L, cond, a, b):
    dt = L.out_type().dtype
    return L.add("select", [L.cast(cond, "bool"), operand(L, a, dt), operand(L, b, dt)])


@lower("aten._to_copy.default", "aten.to.dtype", "aten._to_dim_order_copy.default")
def _to_copy(L, x, *args, dtype=None, **kwargs):
    return L.cast(x, L.out_type().dtype)


@lower("aten.clone.default", "aten.alias.default", "aten.detach.default", "aten.lift_fresh_copy.default",
       "aten.contiguous.default")
def _passthrough(L, x, *args, **kwargs):
    return x


# -------------------------------------------------------------------------------------- linalg


@lower("aten.linear.default")
def _linear(L, x, w, b=None):
    ins = [x, w] + ([b] if b is not None else [])
    x = L.v(x)
    if len(shape_of(x)) == 0:
        raise FrontendError("linear on a scalar input")
    return L.add("linear", ins)


@lower("aten.mm.default", "aten.bmm.default")
def _mm(L, x, y):
    return L.add("matmul", [x, y])


@lower("aten.matmul.default")
def _matmul(L, x, y):
    x, y = L.v(x), L.v(y)
    rx, ry = x.type.rank, y.type.rank
    if ry == 1:
        y = L.add("expand_dims", [y], {"axes": (-1,)}, name=L.node.name + "_y2d")
        r = L.add("matmul", [x if rx > 1 else L.add("expand_dims", [x], {"axes": (0,)}, name=L.node.name + "_x2d"), y], name=L.node.name + "_mm")
        out = L.out_type().shape
        return L.add("reshape", [r], {"shape": out})
    if rx == 1:
        x = L.add("expand_dims", [x], {"axes": (0,)}, name=L.node.name + "_x2d")
        r = L.add("matmul", [x, y], name=L.node.name + "_mm")
        return L.add("reshape", [r], {"shape": L.out_type().shape})
    return L.add("matmul", [x, y])


@lower("aten.scaled_dot_product_attention.default")
def _sdpa(L, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False):
    q, k, v = L.v(q), L.v(k), L.v(v)
    if enable_gqa and q.type.shape[-3] != k.type.shape[-3]:
        rep = q.type.shape[-3] // k.type.shape[-3]
        k, v = (_repeat_heads(L, t, rep) for t in (k, v))
    mask = attn_mask
    if is_causal:
        lq, ls = q.type.shape[-2], k.type.shape[-2]
        causal = Const(torch.ones(lq, ls, dtype=torch.bool).tril(), L.node.name + "_causal")
        mask = causal if mask is None else L.add("logical_and", [L.cast(mask, "bool"), causal], name=L.node.name + "_mask")
    ins = [q, k, v] + ([mask] if mask is not None else [])
    if mask is not None and L.v(mask).type.dtype not in ("bool", q.type.dtype):
        ins[3] = L.cast(mask, q.type.dtype)
    return L.add("scaled_dot_product_attention", ins, {"scale": None if scale is None else float(scale)})


def _repeat_heads(L, t, rep):
    s = t.type.shape
    e = L.add("expand_dims", [t], {"axes": (-3,)}, name=L.node.name + "_gqa_e")
    e = L.add("tile", [e], {"reps": (1,) * (len(s) - 2) + (rep, 1, 1)}, name=L.node.name + "_gqa_t")
    return L.add("reshape", [e], {"shape": s[:-3] + (s[-3] * rep,) + s[-2:]}, name=L.node.name + "_gqa")


@lower("aten.embedding.default")
def _embedding(L, w, ids, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    return L.add("gather", [w, L.cast(ids, "int32")], {"axis": 0})


# ------------------------------------------------------------------------------- reductions


def _reduce(op):
    def fn(L, x, dims=None, keepdim=False, *, dtype=None):
        out = L.out_type().dtype
        x = L.cast(x, out)
        r = x.type.rank
        if r == 0:  # reducing a scalar over its (only) axis 0 is the scalar itself
            return L.add("identity", [x])
        axes = tuple(range(r)) if dims in (None, [], ()) else tuple(norm_axis(d, r) for d in (dims if isinstance(dims, (list, tuple)) else [dims]))
        if out == "bool":  # MIL reductions take fp16/fp32/int32
            y = L.add(op, [L.cast(x, "int32")], {"axes": axes, "keep_dims": bool(keepdim)}, name=L.node.name + "_int")
            return L.add("cast", [y], {"dtype": "bool"})
        return L.add(op, [x], {"axes": axes, "keep_dims": bool(keepdim)})

    return fn


lower("aten.mean.dim", "aten.mean.default")(_reduce("reduce_mean"))
lower("aten.sum.dim_IntList", "aten.sum.default")(_reduce("reduce_sum"))
lower("aten.amax.default")(_reduce("reduce_max"))
lower("aten.amin.default")(_reduce("reduce_min"))
lower("aten.prod.dim_int")(_reduce("reduce_prod"))


lower("aten.max.default")(_reduce("reduce_max"))
lower("aten.min.default")(_reduce("reduce_min"))
lower("aten.prod.default")(_reduce("reduce_prod"))


# Lowerings of the other op families register themselves into LOWERINGS on import.
from . import (aten_bessel, aten_blas, aten_linalg, aten_math, aten_nn, aten_random, aten_reduce, aten_resample,  # noqa: E402,F401
               aten_sample, aten_scan, aten_scatter, aten_shape, aten_sort, aten_special, aten_strided)

__all__ = ["LOWERINGS", "SKIP", "math"]
