"""ATen -> tlc IR lowerings, one function per ATen op (names as torch spells them).

Each function receives the :class:`~tlc.frontend.lower.Lowerer` and the op's arguments with fx
nodes replaced by IR values / constants, and returns the IR value(s). Arguments follow the ATen
schemas in ``native_functions.yaml``. A lowering raises :class:`UnsupportedOpError` to decline
arguments MIL cannot express; the front-end then keeps the torch op as a fallback node
(:mod:`tlc.ops.fallback`), with the message as the node's reason.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ..errors import FrontendError, UnsupportedOpError
from ..ir import Value
from .lower import _IR_TO_TORCH, Const, Lowerer

LOWERINGS: dict[str, Callable] = {}

#: Ops that compute nothing at inference time.
SKIP = {
    "aten._assert_tensor_metadata.default",
    "aten._assert_scalar.default",
    "aten.sym_constrain_range_for_size.default",
    "aten._assert_async.msg",
}


def lower(*names: str):
    def deco(fn):
        for n in names:
            LOWERINGS[n] = fn
        return fn

    return deco


def _dims(x) -> int:
    return len(x.type.shape) if isinstance(x, Value) else x.tensor.dim()


def _shape(x) -> tuple:
    return x.type.shape if isinstance(x, Value) else tuple(x.tensor.shape)


def _axis(d: int, rank: int) -> int:
    return d % rank if rank else 0


# ---------------------------------------------------------------------------------- elementwise


def _operand(L: Lowerer, x, dtype: str) -> Value:
    """Tensor or Python scalar as an IR value of ``dtype`` (torch type promotion already decided
    the result dtype; operands are cast to it)."""
    if isinstance(x, (Value, Const)):
        return L.cast(L.v(x), dtype)
    return L.scalar(x, dtype)


def _binary(op: str, compare=False):
    def fn(L: Lowerer, a, b, *, alpha=1):
        out = L.out_type()
        dt = _promote(L, a, b) if compare else out.dtype
        x, y = _operand(L, a, dt), _operand(L, b, dt)
        if alpha != 1:
            y = L.add("mul", [y, L.scalar(alpha, dt)], name=L.node.name + "_alpha")
        return L.add(op, [x, y])

    return fn


def _promote(L, a, b) -> str:
    """IR dtype both operands of a comparison are cast to (torch's type promotion)."""
    from .lower import _IR_TO_TORCH, ir_dtype

    def probe(x):
        if isinstance(x, Const):
            return x.tensor
        if isinstance(x, Value):  # a 1-element tensor promotes like a dimensioned tensor of its dtype
            return torch.empty(1, dtype=_IR_TO_TORCH[x.type.dtype])
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
    x = _operand(L, a, dt)
    if alpha != 1:
        x = L.add("mul", [x, L.scalar(alpha, dt)], name=L.node.name + "_alpha")
    return L.add("sub", [_operand(L, b, dt), x])


@lower("aten.div.Tensor_mode")
def _div_mode(L, a, b, *, rounding_mode=None):
    dt = L.out_type().dtype
    x, y = _operand(L, a, dt), _operand(L, b, dt)
    if rounding_mode is None:
        return L.add("real_div", [x, y])
    if rounding_mode == "floor":
        return L.add("floor_div", [x, y])
    raise UnsupportedOpError(f"div with rounding_mode={rounding_mode!r} is not supported yet")


def _logical(op):
    def fn(L, a, b):
        if L.out_type().dtype != "bool":
            raise UnsupportedOpError(f"bitwise {op} on integer tensors has no MIL op; only bool is supported")
        return L.add(op, [_operand(L, a, "bool"), _operand(L, b, "bool")])

    return fn


lower("aten.bitwise_and.Tensor", "aten.logical_and.default")(_logical("logical_and"))
lower("aten.bitwise_or.Tensor", "aten.logical_or.default")(_logical("logical_or"))
lower("aten.bitwise_xor.Tensor", "aten.logical_xor.default")(_logical("logical_xor"))


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
    ("exp", "exp"), ("log", "log"), ("sqrt", "sqrt"), ("rsqrt", "rsqrt"), ("tanh", "tanh"),
    ("sigmoid", "sigmoid"), ("relu", "relu"), ("erf", "erf"), ("abs", "abs"), ("sin", "sin"),
    ("cos", "cos"), ("floor", "floor"), ("ceil", "ceil"), ("round", "round"), ("sign", "sign"),
    ("reciprocal", "inverse"), ("silu", "silu"),
]:
    lower(f"aten.{_n}.default")(_unary(_op))
for _n in ("log", "rsqrt", "reciprocal"):  # MIL's default epsilon is not torch's 0
    lower(f"aten.{_n}.default")(_unary({"reciprocal": "inverse"}.get(_n, _n), epsilon=0.0))


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
    if dt in ("fp32", "fp16") and lo is not None and hi is not None:
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
    return L.add("select", [L.cast(cond, "bool"), _operand(L, a, dt), _operand(L, b, dt)])


@lower("aten._to_copy.default", "aten.to.dtype", "aten._to_dim_order_copy.default")
def _to_copy(L, x, *args, dtype=None, **kwargs):
    return L.cast(x, L.out_type().dtype)


@lower("aten.clone.default", "aten.alias.default", "aten.detach.default", "aten.lift_fresh_copy.default",
       "aten.contiguous.default", "aten.dropout.default", "aten.native_dropout.default")
def _passthrough(L, x, *args, **kwargs):
    if L.node.target == torch.ops.aten.native_dropout.default:
        return (x, None)
    return x


# -------------------------------------------------------------------------------------- linalg


@lower("aten.linear.default")
def _linear(L, x, w, b=None):
    ins = [x, w] + ([b] if b is not None else [])
    x = L.v(x)
    if len(_shape(x)) == 0:
        raise FrontendError("linear on a scalar input")
    return L.add("linear", ins)


@lower("aten.addmm.default")
def _addmm(L, bias, x, w, *, beta=1, alpha=1):
    if beta != 1 or alpha != 1:
        raise UnsupportedOpError("addmm with beta/alpha != 1 is not supported yet")
    if isinstance(w, Const) and _shape(bias)[-1:] == (_shape(w)[1],) and len(_shape(bias)) == 1:
        wt = Const(w.tensor.t().contiguous(), w.name + "_t")
        return L.add("linear", [x, wt, bias])
    mm = L.add("matmul", [x, w], name=L.node.name + "_mm")
    return L.add("add", [mm, L.v(bias)])


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


# ----------------------------------------------------------------------------------------- conv


def _conv_pad(padding, kernel, dilation, nsp):
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * (2 * nsp)
        if padding == "same":
            pads = []
            for k, d in zip(kernel, dilation):
                tot = d * (k - 1)
                pads += [tot // 2, tot - tot // 2]
            return tuple(pads)
        raise FrontendError(f"conv padding {padding!r} unknown")
    padding = list(padding) if isinstance(padding, (list, tuple)) else [padding] * nsp
    if len(padding) == 1:
        padding = padding * nsp
    return tuple(p for p in padding for _ in range(2))


def _tuple(v, n):
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return tuple(v * n if len(v) == 1 else v)


@lower("aten.conv1d.default", "aten.conv2d.default", "aten.conv1d.padding", "aten.conv2d.padding")
def _conv(L, x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    nsp = _dims(w) - 2
    kernel = _shape(w)[2:]
    dil = _tuple(dilation, nsp)
    attrs = {
        "strides": _tuple(stride, nsp),
        "pad": _conv_pad(padding, kernel, dil, nsp),
        "dilations": dil,
        "groups": int(groups),
    }
    return L.add("conv", [x, w] + ([b] if b is not None else []), attrs)


@lower("aten.convolution.default")
def _convolution(L, x, w, b, stride, padding, dilation, transposed, output_padding, groups):
    if transposed:
        raise UnsupportedOpError("transposed convolution is not supported yet")
    return _conv(L, x, w, b, stride, padding, dilation, groups)


@lower("aten._native_batch_norm_legit_no_training.default")
def _bn_no_training(L, x, w, b, mean, var, momentum, eps):
    return (_bn(L, x, w, b, mean, var, eps), None, None)


@lower("aten.batch_norm.default")
def _batch_norm(L, x, w, b, mean, var, training, momentum, eps, cudnn_enabled=False):
    return _bn(L, x, w, b, mean, var, eps)


def _bn(L, x, w, b, mean, var, eps):
    ins = [x, mean, var]
    if w is not None or b is not None:
        c = _shape(x)[1]
        tdt = _IR_TO_TORCH[L.v(x).type.dtype]
        ins += [w if w is not None else Const(torch.ones(c, dtype=tdt), L.node.name + "_gamma"),
                b if b is not None else Const(torch.zeros(c, dtype=tdt), L.node.name + "_beta")]
    return L.add("batch_norm", ins, {"epsilon": float(eps)})


@lower("aten.layer_norm.default")
def _layer_norm(L, x, shape, w=None, b=None, eps=1e-5, cudnn_enable=False):
    r = _dims(x)
    axes = tuple(range(r - len(shape), r))
    ins = [x]
    if w is not None or b is not None:
        ins += [w if w is not None else Const(torch.ones(shape, dtype=_IR_TO_TORCH[L.v(x).type.dtype]), L.node.name + "_gamma")]
        if b is not None:
            ins.append(b)
    return L.add("layer_norm", ins, {"axes": axes, "epsilon": float(eps)})


@lower("aten.softmax.int", "aten._softmax.default")
def _softmax(L, x, dim, half_to_float=None):
    x = L.cast(x, L.out_type().dtype)
    return L.add("softmax", [x], {"axis": int(dim)})


def _pool_attrs(kernel, stride, padding, nsp, ceil_mode):
    k = _tuple(kernel, nsp)
    s = _tuple(stride, nsp) if stride not in (None, [], ()) else k
    p = _tuple(padding, nsp)
    return {"kernel_sizes": k, "strides": s, "pad": tuple(v for v in p for _ in range(2)), "ceil_mode": bool(ceil_mode)}


@lower("aten.max_pool2d.default", "aten.max_pool1d.default")
def _max_pool(L, x, kernel, stride=(), padding=0, dilation=1, ceil_mode=False):
    nsp = _dims(x) - 2
    if any(d != 1 for d in _tuple(dilation, nsp)):
        raise UnsupportedOpError("max_pool with dilation > 1 has no MIL op")
    return L.add("max_pool", [x], _pool_attrs(kernel, stride, padding, nsp, ceil_mode))


@lower("aten.avg_pool2d.default", "aten.avg_pool1d.default")
def _avg_pool(L, x, kernel, stride=(), padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    if divisor_override:
        raise UnsupportedOpError("avg_pool with divisor_override has no MIL op")
    nsp = _dims(x) - 2
    a = _pool_attrs(kernel, stride, padding, nsp, ceil_mode)
    a["exclude_padding_from_average"] = not count_include_pad
    return L.add("avg_pool", [x], a)


@lower("aten.adaptive_avg_pool2d.default", "aten.adaptive_avg_pool1d.default")
def _adaptive_avg_pool(L, x, output_size):
    shape = _shape(x)
    nsp = len(shape) - 2
    out = _tuple(output_size, nsp)
    if all(o == 1 for o in out):
        return L.add("reduce_mean", [x], {"axes": tuple(range(2, 2 + nsp)), "keep_dims": True})
    if all(i % o == 0 for i, o in zip(shape[2:], out)):
        k = tuple(i // o for i, o in zip(shape[2:], out))
        return L.add("avg_pool", [x], {"kernel_sizes": k, "strides": k, "pad": (0,) * (2 * nsp)})
    raise UnsupportedOpError(f"adaptive_avg_pool from {list(shape[2:])} to {list(out)} (not a divisor) is not supported yet")


# ------------------------------------------------------------------------------- reductions


def _reduce(op):
    def fn(L, x, dims=None, keepdim=False, *, dtype=None):
        x = L.cast(x, L.out_type().dtype)
        r = x.type.rank
        axes = tuple(range(r)) if dims in (None, [], ()) else tuple(_axis(d, r) for d in (dims if isinstance(dims, (list, tuple)) else [dims]))
        return L.add(op, [x], {"axes": axes, "keep_dims": bool(keepdim)})

    return fn


lower("aten.mean.dim", "aten.mean.default")(_reduce("reduce_mean"))
lower("aten.sum.dim_IntList", "aten.sum.default")(_reduce("reduce_sum"))
lower("aten.amax.default")(_reduce("reduce_max"))
lower("aten.amin.default")(_reduce("reduce_min"))
lower("aten.prod.dim_int")(_reduce("reduce_prod"))


@lower("aten.linalg_vector_norm.default")
def _vector_norm(L, x, ord=2, dim=None, keepdim=False, *, dtype=None):
    op = {2: "reduce_l2_norm", 2.0: "reduce_l2_norm", 1: "reduce_l1_norm", 1.0: "reduce_l1_norm"}.get(ord)
    if op is None:
        raise UnsupportedOpError(f"linalg_vector_norm with ord={ord} is not supported yet (only 1 and 2)")
    return _reduce(op)(L, x, dim, keepdim)


# ------------------------------------------------------------------------------------- shapes


@lower("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default")
def _view(L, x, shape):
    return L.add("reshape", [x], {"shape": L.out_type().shape})


@lower("aten.permute.default")
def _permute(L, x, dims):
    r = _dims(x)
    return L.add("transpose", [x], {"perm": tuple(_axis(d, r) for d in dims)})


@lower("aten.t.default")
def _t(L, x):
    return x if _dims(x) < 2 else L.add("transpose", [x], {"perm": (1, 0)})


@lower("aten.transpose.int")
def _transpose(L, x, a, b):
    r = _dims(x)
    perm = list(range(r))
    perm[_axis(a, r)], perm[_axis(b, r)] = perm[_axis(b, r)], perm[_axis(a, r)]
    return L.add("transpose", [x], {"perm": tuple(perm)})


@lower("aten.unsqueeze.default")
def _unsqueeze(L, x, dim):
    r = _dims(x) + 1
    return L.add("expand_dims", [x], {"axes": (_axis(dim, r),)})


@lower("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default")
def _squeeze(L, x, dims=None):
    shape = _shape(x)
    r = len(shape)
    if dims is None:
        axes = tuple(i for i, d in enumerate(shape) if d == 1)
    else:
        axes = tuple(a for a in (_axis(d, r) for d in (dims if isinstance(dims, (list, tuple)) else [dims])) if shape[a] == 1)
    return x if not axes else L.add("squeeze", [x], {"axes": axes})


@lower("aten.expand.default", "aten.expand_copy.default")
def _expand(L, x, size, *, implicit=False):
    out = L.out_type().shape
    x = L.v(x)
    shape = x.type.shape
    if len(out) > len(shape):
        shape = (1,) * (len(out) - len(shape)) + shape
        x = L.add("reshape", [x], {"shape": shape}, name=L.node.name + "_rank")
    reps = tuple(o // s if s != o else 1 for o, s in zip(out, shape))
    return x if all(r == 1 for r in reps) else L.add("tile", [x], {"reps": reps})


@lower("aten.repeat.default")
def _repeat(L, x, repeats):
    x = L.v(x)
    shape = x.type.shape
    if len(repeats) > len(shape):
        shape = (1,) * (len(repeats) - len(shape)) + shape
        x = L.add("reshape", [x], {"shape": shape}, name=L.node.name + "_rank")
    return L.add("tile", [x], {"reps": tuple(repeats)})


@lower("aten.cat.default")
def _cat(L, tensors, dim=0):
    vals = [t for t in tensors if _shape(t) != (0,)]
    dt = L.out_type().dtype
    vals = [L.cast(t, dt) for t in vals]
    if len(vals) == 1:
        return vals[0]
    return L.add("concat", vals, {"axis": _axis(dim, _dims(vals[0]))})


@lower("aten.split_with_sizes.default", "aten.split.Tensor")
def _split(L, x, sizes, dim=0):
    shape = _shape(x)
    ax = _axis(dim, len(shape))
    if isinstance(sizes, int):
        n = shape[ax]
        sizes = [min(sizes, n - i) for i in range(0, n, sizes)]
    outs = L.add("split", [x], {"split_sizes": tuple(sizes), "axis": ax})
    return outs if isinstance(outs, tuple) else (outs,)


@lower("aten.unbind.int")
def _unbind(L, x, dim=0):
    shape = _shape(x)
    ax = _axis(dim, len(shape))
    parts = _split(L, x, [1] * shape[ax], ax)
    return tuple(L.add("squeeze", [p], {"axes": (ax,)}, name=f"{L.node.name}_{i}") for i, p in enumerate(parts))


@lower("aten.slice.Tensor", "aten.slice_copy.Tensor")
def _slice(L, x, dim=0, start=None, end=None, step=1):
    shape = _shape(x)
    r = len(shape)
    ax = _axis(dim, r)
    n = shape[ax]
    s, e, st = slice(start, end, step).indices(n)
    e = max(e, s)
    if s == 0 and e == n and st == 1:
        return x
    begin, endv, stride = [0] * r, list(shape), [1] * r
    begin[ax], endv[ax], stride[ax] = s, e, st
    return L.add("slice_by_index", [x], {"begin": tuple(begin), "end": tuple(endv), "stride": tuple(stride)})


@lower("aten.flip.default")
def _flip(L, x, dims):
    r = _dims(x)
    return L.add("reverse", [x], {"axes": tuple(sorted({_axis(d, r) for d in dims}))})


@lower("aten.select.int", "aten.select_copy.int")
def _select(L, x, dim, index):
    shape = _shape(x)
    r = len(shape)
    ax = _axis(dim, r)
    i = index % shape[ax]
    begin, endv = [0] * r, list(shape)
    begin[ax], endv[ax] = i, i + 1
    mask = [False] * r
    mask[ax] = True
    return L.add("slice_by_index", [x], {"begin": tuple(begin), "end": tuple(endv), "stride": (1,) * r, "squeeze_mask": tuple(mask)})


@lower("aten.index.Tensor")
def _index(L, x, indices):
    """Advanced indexing with integer index tensors on consecutive axes: flatten those axes and
    ``gather`` with the linearized index. Boolean masks have data-dependent shapes: those nodes
    (like every case declined with :class:`UnsupportedOpError`) stay torch ops in the fallback runtime."""
    shape = _shape(x)
    pos = [i for i, t in enumerate(indices) if t is not None]
    if pos != list(range(pos[0], pos[-1] + 1)):
        raise UnsupportedOpError("index with non-consecutive index tensors is not supported yet")
    idx = [indices[i] for i in pos]
    for t in idx:
        dt = t.tensor.dtype if isinstance(t, Const) else t.type.dtype
        if dt in (torch.bool, "bool"):
            raise UnsupportedOpError(  # the front-end keeps it as a fallback op (tlc.ops.fallback)
                "boolean-mask indexing produces a data-dependent shape, which a static mlprogram cannot hold")
    k, m = pos[0], len(pos)
    dims = shape[k:k + m]
    if all(isinstance(t, Const) for t in idx):
        ts = torch.broadcast_tensors(*[t.tensor.long() for t in idx])
        lin = torch.zeros_like(ts[0])
        for t, d in zip(ts, dims):
            lin = lin * d + (t % d)
        lin_v = Const(lin.to(torch.int32), L.node.name + "_idx")
    elif m == 1:
        lin_v = L.cast(idx[0], "int32")
    else:
        lin_v = None
        for t, d in zip(idx, dims):
            t = L.add("mod", [L.cast(t, "int32"), L.scalar(d, "int32")], name=L.node.name + "_wrap")  # -1 -> d-1
            lin_v = t if lin_v is None else L.add("add", [L.add("mul", [lin_v, L.scalar(d, "int32")], name=L.node.name + "_lin"), t], name=L.node.name + "_lin")
    xv = L.v(x)
    is_bool = xv.type.dtype == "bool"
    if is_bool:  # MIL gather has no bool domain
        xv = L.cast(xv, "int32")
    if m > 1:
        xv = L.add("reshape", [xv], {"shape": shape[:k] + (int(np.prod(dims)),) + shape[k + m:]}, name=L.node.name + "_flat")
    if is_bool:
        g = L.add("gather", [xv, lin_v], {"axis": k}, name=L.node.name + "_int")
        return L.add("cast", [g], {"dtype": "bool"})
    return L.add("gather", [xv, lin_v], {"axis": k})


@lower("aten.constant_pad_nd.default")
def _constant_pad(L, x, pad, value=0.0):
    # torch lists (before, after) pairs from the last axis backwards; MIL from the first padded axis
    pairs = [(pad[i], pad[i + 1]) for i in range(0, len(pad), 2)][::-1]
    if any(p < 0 for pr in pairs for p in pr):
        raise UnsupportedOpError("constant_pad_nd with negative padding (cropping) is not supported yet")
    return L.add("pad", [x], {"pad": tuple(p for pr in pairs for p in pr), "mode": "constant", "constant_val": float(value)})


@lower("aten.flatten.using_ints")
def _flatten(L, x, start_dim=0, end_dim=-1):
    return L.add("reshape", [x], {"shape": L.out_type().shape})


__all__ = ["LOWERINGS", "SKIP", "math"]
