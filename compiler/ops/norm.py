"""Normalizations, softmax and reductions: ``layer_norm``, ``rms_norm``, ``group_norm``, ``batch_norm``,
``softmax``, ``reduce_{sum,mean,max,min,prod}``.

Semantics: coremltools MIL ``normalization.py``, ``activation.py`` (softmax) and ``reduction.py``
(iOS15 opset). Statistics are computed in fp32 even for fp16 inputs, then rounded to the input
dtype (the fp16 rule of :func:`tlc.ops.run_kernel`; rationale in runtime/mil_interpreter.py).
The torch kernels use ``F.layer_norm`` / ``F.batch_norm`` / ``torch.softmax`` and torch reductions,
which also accumulate fp16 in fp32 on CUDA; integer sums and products are cast back from torch's
int64 to the input dtype (int32 wrap-around, as NumPy).
"""
from __future__ import annotations

import numpy as np
from .._lazy import F, torch

from ..errors import IRError
from ..dtypes import DTYPES, TensorType
from .table import COMMUTES, PositiveScale, register
from .common import FLOAT, same_dtype
from .linalg import softmax as _softmax
from .parallel import map_rows


def norm_axes(axes, rank: int) -> tuple[int, ...]:
    """Normalize (possibly negative) axes to sorted non-negative ints; raises IRError if out of range."""
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise IRError(f"axis {a} out of range for rank {rank}")
        out.append(a % rank)
    return tuple(sorted(set(out)))


def _infer_layer_norm(in_types, attrs):
    x = in_types[0]
    same_dtype(in_types, FLOAT)
    axes = norm_axes(attrs["axes"], x.rank)
    want = tuple(x.shape[a] for a in axes)
    for t in in_types[1:]:
        if t.shape != want:
            raise IRError(f"layer_norm/rms_norm gamma/beta must have shape {list(want)}, got {list(t.shape)}")
    return [x]


def _layer_norm(attrs, x, gamma=None, beta=None):
    """MIL ``layer_norm`` (iOS15 normalization.py): (x - mean) / sqrt(var + epsilon) * gamma + beta
    over ``axes`` (biased variance, as torch). Over trailing axes it runs as rows of a
    ``[-1, prod(normalized shape)]`` view, tiled over threads (:func:`tlc.ops.parallel.map_rows`)."""
    axes = norm_axes(attrs["axes"], x.ndim)
    eps = np.float32(attrs.get("epsilon", 1e-5))
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    trailing = axes == tuple(range(x.ndim - len(axes), x.ndim))
    row = int(np.prod(shape)) if trailing else 0
    g = gamma.reshape(-1 if trailing else shape) if gamma is not None else None
    b = beta.reshape(-1 if trailing else shape) if beta is not None else None

    def norm(xs, red=tuple(axes) if not trailing else -1):
        xf = xs.astype(np.float32, copy=False)
        d = xf - xf.mean(axis=red, keepdims=True)
        var = np.mean(d * d, axis=red, keepdims=True)
        var += eps
        d /= np.sqrt(var)
        if g is not None:
            d *= g
        if b is not None:
            d += b
        return d

    y = map_rows(norm, x, row, np.float32) if trailing else norm(x)
    return y.astype(x.dtype, copy=False)


def _t_layer_norm(attrs, x, gamma=None, beta=None):
    """Torch kernel of ``layer_norm``: ``F.layer_norm`` when ``axes`` are the trailing axes, else the
    formula in fp32 (as the NumPy kernel)."""
    axes = norm_axes(attrs["axes"], x.dim())
    eps = float(attrs.get("epsilon", 1e-5))
    if axes == tuple(range(x.dim() - len(axes), x.dim())):
        return F.layer_norm(x, x.shape[x.dim() - len(axes):], gamma, beta, eps)
    xf = x.float()
    var, mean = torch.var_mean(xf, dim=axes, keepdim=True, correction=0)
    y = (xf - mean) * torch.rsqrt(var + eps)
    shape = [x.shape[i] if i in axes else 1 for i in range(x.dim())]
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y.to(x.dtype)


def _emit_layer_norm(ctx, attrs, ins, nm):
    """MIL ``layer_norm`` (gamma/beta must be constants there: computed ones become a ``mul`` /
    ``add`` after a plain layer_norm, reshaped to broadcast over the normalized axes)."""
    x = ins[0]
    axes = norm_axes(attrs["axes"], x.rank)
    eps = np.float32(attrs.get("epsilon", 1e-5))
    params = list(ins[1:])
    if all(p.val is not None for p in params):
        kw = dict(zip(("gamma", "beta"), params))
        return ctx.mb.layer_norm(x=x, axes=list(axes), epsilon=eps, name=nm, **kw)
    y = ctx.mb.layer_norm(x=x, axes=list(axes), epsilon=eps, name=nm + "_norm")
    shape = [int(x.shape[i]) if i in axes else 1 for i in range(x.rank)]
    for k, (p, op) in enumerate(zip(params, ("mul", "add"))):
        p = ctx.mb.reshape(x=p, shape=np.array(shape, np.int32), name=f"{nm}_p{k}")
        y = getattr(ctx.mb, op)(x=y, y=p, name=nm if k == len(params) - 1 else f"{nm}_{op}")
    return y


def _norm_from_mil(names, default_fill):
    """Optional gamma/beta may be given independently in MIL; the IR takes them positionally, so a
    missing gamma before a given beta becomes ones (and a missing beta zeros)."""

    def adapter(vals):
        from .table import mil_attr

        arrays = [vals[n] for n in names[:default_fill]]
        opt = [vals.get(n) for n in names[default_fill:]]
        if any(o is not None for o in opt):
            shape = next(o.shape for o in opt if o is not None)
            fills = [np.ones, np.zeros]
            arrays += [o if o is not None else fills[i](shape, np.float32) for i, o in enumerate(opt)]
        attrs = {k: mil_attr(v) for k, v in vals.items() if k not in names and v is not None}
        return arrays, attrs

    return adapter



def _ca_norm(ctx, a, ins, node):
    """layer_norm / rms_norm in Core AI ops: statistics over ``axes`` in the input's dtype (as the
    MIL ops compute), then gamma (and beta)."""
    ca, x = ctx.ca, ins[0]
    t = node.inputs[0].type
    axes = list(norm_axes(a["axes"], t.rank))
    dt = DTYPES[t.dtype]
    eps = ctx.const(np.asarray(a.get("epsilon", 1e-5), dt))
    if node.op == "layer_norm":
        x = ca.broadcasting_sub(x, ca.reduce_mean(x, axes))
    var = ca.reduce_mean(ca.broadcasting_mul(x, x), axes)
    y = ca.broadcasting_mul(x, ca.rsqrt(ca.broadcasting_add(var, eps)))
    shape = [t.shape[i] if i in axes else 1 for i in range(t.rank)]
    for k, v in enumerate(ins[1:]):  # gamma, beta
        v = ca.reshape(v, shape)
        y = ca.broadcasting_mul(y, v) if k == 0 else ca.broadcasting_add(y, v)
    return y

register("layer_norm", half_attrs={"epsilon": "epsilon"}, emit_coreai=_ca_norm,
         scale=PositiveScale("invariant", affine=(1, 2)),
         infer=_infer_layer_norm, numpy=_layer_norm, emit_mil=_emit_layer_norm,
         flops=lambda i, o, a: 8 * o[0].size, mil_inputs=("x", "gamma", "beta"),
         from_mil=_norm_from_mil(("x", "gamma", "beta"), 1),
         torch=_t_layer_norm)


def _rms_norm(attrs, x, gamma=None):
    """RMS norm (``torch.nn.RMSNorm``, transformers' ``LlamaRMSNorm``): x / sqrt(mean(x^2) + epsilon)
    * gamma over ``axes``. Statistics in fp32 like ``layer_norm`` (MIL has no rms_norm op; see
    :func:`_emit_rms_norm` for how it is emitted)."""
    axes = norm_axes(attrs["axes"], x.ndim)
    xf = x.astype(np.float32, copy=False)
    y = xf / np.sqrt(np.mean(xf * xf, axis=axes, keepdims=True) + np.float32(attrs.get("epsilon", 1e-5)))
    if gamma is not None:
        y *= gamma.reshape([x.shape[i] if i in axes else 1 for i in range(x.ndim)])
    return y.astype(x.dtype, copy=False)


def _emit_rms_norm(ctx, attrs, ins, nm):
    """MIL has no rms_norm: emit ``layer_norm`` over ``concat([x, -x])`` and keep the first half.

    The pair has mean exactly 0 and variance mean(x^2), so layer_norm computes x / sqrt(mean(x^2)
    + epsilon), epsilon included exactly (gamma is concatenated with itself). Chosen over the
    decomposed form (pow, reduce_mean, add, rsqrt, mul: x^2 overflows fp16 for |x| > 256,
    huggingface/swift-transformers#95, pytorch/executorch#8641) and over ``reduce_l2_norm``
    (pytorch/executorch#19523: exact only with a floored epsilon) because layer_norm is one fused
    op the ANE runs without fp16 overflow of x^2 (the ANEMLL trick, apple/coremltools#2585;
    coremltools' own max|x| rescaling inflates epsilon, apple/coremltools#2821). 4 MIL ops:
    mul, concat, layer_norm, slice_by_index — all in tlc's op table, so the interpreter runs them.
    """
    x = ins[0]
    rank = len(x.shape)
    axes = norm_axes(attrs["axes"], rank)
    ax, n = axes[-1], x.shape[axes[-1]]
    pair = ctx.mb.concat(values=[x, ctx.mb.mul(x=x, y=-1.0, name=f"{nm}_neg")], axis=ax, name=f"{nm}_pair")
    kw = {}
    if len(ins) > 1:
        g = ins[1]
        kw["gamma"] = ctx.mb.concat(values=[g, g], axis=len(axes) - 1, name=f"{nm}_gamma")
    y = ctx.mb.layer_norm(x=pair, axes=list(axes), epsilon=np.float32(attrs.get("epsilon", 1e-5)), name=f"{nm}_ln", **kw)
    end = [int(d) for d in x.shape]
    end[ax] = n
    return ctx.mb.slice_by_index(x=y, begin=[0] * rank, end=end, name=nm)


def _t_rms_norm(attrs, x, gamma=None):
    """Torch kernel of ``rms_norm``: the formula in fp32 (as the NumPy kernel), then the input dtype."""
    axes = norm_axes(attrs["axes"], x.dim())
    xf = x.float()
    y = xf * torch.rsqrt(xf.square().mean(dim=axes, keepdim=True) + float(attrs.get("epsilon", 1e-5)))
    if gamma is not None:
        y = y * gamma.reshape([x.shape[i] if i in axes else 1 for i in range(x.dim())])
    return y.to(x.dtype)


register("rms_norm", half_attrs={"epsilon": "epsilon"}, emit_coreai=_ca_norm,
         scale=PositiveScale("invariant", affine=(1,)),
         infer=_infer_layer_norm, numpy=_rms_norm, emit_mil=_emit_rms_norm,
         flops=lambda i, o, a: 6 * o[0].size, mil_inputs=("x", "gamma"), torch=_t_rms_norm)


def _infer_group_norm(in_types, attrs):
    x = in_types[0]
    same_dtype(in_types, FLOAT)
    g = attrs["num_groups"]
    if x.rank < 2 or g < 1 or x.shape[1] % g:
        raise IRError(f"group_norm needs x[N, C, ...] with C divisible by num_groups={g}; got {list(x.shape)}")
    for t in in_types[1:]:
        if t.shape != (x.shape[1],):
            raise IRError(f"group_norm weight/bias must be [{x.shape[1]}], got {list(t.shape)}")
    return [x]


def _group_norm(attrs, x, gamma=None, beta=None):
    """Group norm (``torch.nn.GroupNorm``, Wu & He 2018): channels split into ``num_groups``
    groups; each (sample, group) normalized over its channels and spatial positions with the
    biased variance and ``epsilon``, then per-channel ``gamma``/``beta``. Statistics in fp32.
    MIL has no group_norm op (see :func:`_emit_group_norm`)."""
    n, c = x.shape[:2]
    g = attrs["num_groups"]
    xf = x.astype(np.float32, copy=False).reshape(n, g, -1)
    mean = xf.mean(-1, keepdims=True)
    d = xf - mean
    var = np.mean(d * d, axis=-1, keepdims=True)
    y = (d / np.sqrt(var + np.float32(attrs.get("epsilon", 1e-5)))).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y.astype(x.dtype, copy=False)


def _emit_group_norm(ctx, attrs, ins, nm):
    """``reshape`` to [N, G, C/G, *spatial] (spatial axes merged only beyond rank 5), one
    ``layer_norm`` over every axis after G, ``reshape`` back, then per-channel ``mul``/``add``.
    coremltools' own torch frontend (``_group_norm_impl``) spells the statistics out (reduce_mean,
    variance, sqrt, real_div); one fused layer_norm keeps the ANE's fp16-safe normalization and
    leaves spatial axes unmerged (an axis over 65536 would leave the ANE: ane-rules.md)."""
    mb = ctx.mb
    x = ins[0]
    shape = [int(d) for d in x.shape]
    n, c, sp = shape[0], shape[1], shape[2:]
    g = attrs["num_groups"]
    while len(sp) > 2:  # [N, G, C/G] + at most 2 spatial axes keeps rank <= 5
        sp = [sp[0] * sp[1]] + sp[2:]
    grouped = [n, g, c // g] + sp
    y = mb.reshape(x=x, shape=np.array(grouped, np.int32), name=nm + "_groups")
    y = mb.layer_norm(x=y, axes=list(range(2, len(grouped))), epsilon=np.float32(attrs.get("epsilon", 1e-5)),
                      name=nm + "_norm")
    last = nm if len(ins) == 1 else nm + "_ungroup"
    y = mb.reshape(x=y, shape=np.array(shape, np.int32), name=last)
    bshape = (c,) + (1,) * (len(shape) - 2)
    if len(ins) > 1:
        y = mb.mul(x=y, y=mb.reshape(x=ins[1], shape=np.array(bshape, np.int32), name=nm + "_gamma"),
                   name=nm if len(ins) == 2 else nm + "_scaled")
    if len(ins) > 2:
        y = mb.add(x=y, y=mb.reshape(x=ins[2], shape=np.array(bshape, np.int32), name=nm + "_beta"), name=nm)
    return y


def _t_group_norm(attrs, x, gamma=None, beta=None):
    return F.group_norm(x, attrs["num_groups"], gamma, beta, float(attrs.get("epsilon", 1e-5)))


def _ca_group_norm(ctx, a, ins, node):
    """Group norm in Core AI ops: [N, G, C/G * spatial] statistics, then per-channel gamma/beta."""
    ca = ctx.ca
    t = node.inputs[0].type
    n, c = t.shape[:2]
    g = a["num_groups"]
    dt = DTYPES[t.dtype]
    x = ca.reshape(ins[0], [n, g, t.size // (n * g)])
    d = ca.broadcasting_sub(x, ca.reduce_mean(x, [2]))
    var = ca.reduce_mean(ca.broadcasting_mul(d, d), [2])
    y = ca.reshape(ca.broadcasting_mul(d, ca.rsqrt(ca.broadcasting_add(var, ctx.const(np.asarray(a.get("epsilon", 1e-5), dt))))),
                   list(t.shape))
    shape = [1, c] + [1] * (t.rank - 2)
    for k, v in enumerate(ins[1:]):
        v = ca.reshape(v, shape)
        y = ca.broadcasting_mul(y, v) if k == 0 else ca.broadcasting_add(y, v)
    return y


def _ca_batch_norm(ctx, a, ins, node):
    """Inference batch norm as x * scale + shift per channel (scale/shift folded here when the
    statistics are constants, else computed in Core AI ops)."""
    ca = ctx.ca
    t = node.inputs[0].type
    dt = DTYPES[t.dtype]
    shape = [1, t.shape[1]] + [1] * (t.rank - 2)
    arrs = [ctx.array(i) for i in range(1, len(ins))]
    if all(v is not None for v in arrs):
        mean, var, *gb = (np.asarray(v, np.float32) for v in arrs)
        scale = 1.0 / np.sqrt(var + np.float32(a.get("epsilon", 1e-5)))
        if gb:
            scale = scale * gb[0]
        shift = -mean * scale + (gb[1] if len(gb) > 1 else 0)
        return ca.broadcasting_add(ca.broadcasting_mul(ins[0], ctx.const(scale.reshape(shape).astype(dt))),
                                   ctx.const(np.asarray(shift, np.float32).reshape(shape).astype(dt)))
    mean, var = (ca.reshape(v, shape) for v in ins[1:3])
    y = ca.broadcasting_mul(ca.broadcasting_sub(ins[0], mean),
                            ca.rsqrt(ca.broadcasting_add(var, ctx.const(np.asarray(a.get("epsilon", 1e-5), dt)))))
    for k, v in enumerate(ins[3:]):
        v = ca.reshape(v, shape)
        y = ca.broadcasting_mul(y, v) if k == 0 else ca.broadcasting_add(y, v)
    return y


register("group_norm", half_attrs={"epsilon": "epsilon"}, emit_coreai=_ca_group_norm,
         scale=PositiveScale("invariant", affine=(1, 2)),
         infer=_infer_group_norm, numpy=_group_norm, emit_mil=_emit_group_norm,
         flops=lambda i, o, a: 8 * o[0].size, mil_inputs=("x", "gamma", "beta"), torch=_t_group_norm)


def _infer_batch_norm(in_types, attrs):
    x = in_types[0]
    same_dtype(in_types, FLOAT)
    if x.rank < 2:
        raise IRError("batch_norm needs rank >= 2")
    for t in in_types[1:]:
        if t.shape != (x.shape[1],):
            raise IRError(f"batch_norm parameters must be [{x.shape[1]}], got {list(t.shape)}")
    return [x]


def _batch_norm(attrs, x, mean, var, gamma=None, beta=None):
    """MIL ``batch_norm`` (iOS15 normalization.py), inference form over channel axis 1:
    (x - mean) / sqrt(variance + epsilon) * gamma + beta."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = 1.0 / np.sqrt(var.astype(np.float32) + np.float32(attrs.get("epsilon", 1e-5)))
    if gamma is not None:
        scale = scale * gamma
    shift = -mean * scale
    if beta is not None:
        shift = shift + beta
    return (x * scale.reshape(shape).astype(x.dtype) + shift.reshape(shape).astype(x.dtype)).astype(x.dtype, copy=False)


def _emit_batch_norm(ctx, attrs, ins, nm):
    kw = {}
    if len(ins) > 3:
        kw["gamma"] = ins[3]
    if len(ins) > 4:
        kw["beta"] = ins[4]
    return ctx.mb.batch_norm(x=ins[0], mean=ins[1], variance=ins[2], epsilon=np.float32(attrs.get("epsilon", 1e-5)), name=nm, **kw)


register("batch_norm", half_attrs={"epsilon": "epsilon"}, emit_coreai=_ca_batch_norm,
         infer=_infer_batch_norm, numpy=_batch_norm, emit_mil=_emit_batch_norm,
         flops=lambda i, o, a: 2 * o[0].size, mil_inputs=("x", "mean", "variance", "gamma", "beta"),
         from_mil=_norm_from_mil(("x", "mean", "variance", "gamma", "beta"), 3),
         torch=lambda a, x, mean, var, gamma=None, beta=None: F.batch_norm(
             x, mean, var, gamma, beta, training=False, eps=float(a.get("epsilon", 1e-5))))


def _infer_softmax(in_types, attrs):
    x = in_types[0]
    same_dtype(in_types, FLOAT)
    norm_axes([attrs.get("axis", -1)], x.rank)
    return [x]


def _softmax_kernel(attrs, x):
    """MIL ``softmax`` (iOS15 activation.py): exp(x - max) / sum(exp(x - max)) along ``axis``."""
    return _softmax(x, attrs.get("axis", -1))


register("softmax", infer=_infer_softmax, numpy=_softmax_kernel,
         emit_coreai=lambda ctx, a, ins, node: ctx.ca.softmax(ins[0], a.get("axis", -1) % node.out.type.rank),
         emit_mil=lambda ctx, a, ins, nm: ctx.mb.softmax(x=ins[0], axis=a.get("axis", -1), name=nm),
         flops=lambda i, o, a: 5 * o[0].size,
         torch=lambda a, x: torch.softmax(x, a.get("axis", -1)))


# ------------------------------------------------------------------------------------ reductions


#: IR reduction -> Core AI op (which keeps the reduced axes; the result is reshaped)
_COREAI_REDUCE = {"reduce_sum": "reduce_sum", "reduce_mean": "reduce_mean", "reduce_max": "reduce_max",
                  "reduce_min": "reduce_min", "reduce_prod": "reduce_product"}

#: reductions composed of Core AI ops (see ``emit_coreai`` in :func:`_reduce`)
_COREAI_REDUCE_COMPOSED = {"reduce_l2_norm", "reduce_sum_square", "reduce_l1_norm", "reduce_log_sum", "reduce_log_sum_exp"}

#: Names of the ``reduce_*`` rows (``axes``, ``keep_dims``), for passes (tlc.passes.rank).
REDUCE_OPS: list[str] = []


#: reductions of degree 1 in x (sum, mean, max, min, L1/L2 norm of s x are s times those of x, s > 0)
_HOMOGENEOUS_REDUCE = ("reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_l1_norm", "reduce_l2_norm")


def _reduce(name, fn, tfn, float_only=False):
    REDUCE_OPS.append(name)
    def infer(in_types, attrs):
        x = in_types[0]
        if float_only and x.dtype not in FLOAT:
            raise IRError(f"{name} needs a float input, got {x.dtype}")
        axes = norm_axes(attrs["axes"], x.rank) if attrs.get("axes") is not None else tuple(range(x.rank))
        keep = attrs.get("keep_dims", False)
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape) if keep or i not in axes)
        return [TensorType(x.dtype, shape)]

    def kernel(attrs, x):
        axes = norm_axes(attrs["axes"], x.ndim) if attrs.get("axes") is not None else None
        r = fn(x, axis=axes, keepdims=attrs.get("keep_dims", False))
        return np.asarray(r).astype(x.dtype, copy=False)

    kernel.__doc__ = f"MIL ``{name}`` (iOS15 reduction.py) over ``axes`` (all if None), ``keep_dims``."

    def torch_kernel(attrs, x):
        axes = norm_axes(attrs["axes"], x.dim()) if attrs.get("axes") is not None else tuple(range(x.dim()))
        if not axes:  # torch reads dim=() as "all axes"; the IR means "none"
            return x
        return tfn(x, axes, bool(attrs.get("keep_dims", False))).to(x.dtype)

    def emit(ctx, attrs, ins, nm):
        kw = {"axes": list(attrs["axes"])} if attrs.get("axes") is not None else {}
        return getattr(ctx.mb, name)(x=ins[0], keep_dims=attrs.get("keep_dims", False), name=nm, **kw)

    def emit_coreai(ctx, attrs, ins, node):
        rank = node.inputs[0].type.rank
        axes = list(norm_axes(attrs["axes"], rank)) if attrs.get("axes") is not None else list(range(rank))
        if not axes:
            return ins[0]
        ca, x = ctx.ca, ins[0]
        if name in _COREAI_REDUCE:
            return ctx.reshaped(getattr(ca, _COREAI_REDUCE[name])(x, axes))
        if name == "reduce_log_sum_exp":  # m + log(sum(exp(x - m))), m the max (stable)
            m = ca.reduce_max(x, axes)
            return ctx.reshaped(ca.broadcasting_add(m, ca.log(ca.reduce_sum(ca.exp(ca.broadcasting_sub(x, m)), axes))))
        pre = {"reduce_l2_norm": lambda v: ca.broadcasting_mul(v, v), "reduce_sum_square": lambda v: ca.broadcasting_mul(v, v),
               "reduce_l1_norm": ca.abs_, "reduce_log_sum": lambda v: v}[name]
        post = {"reduce_l2_norm": ca.sqrt, "reduce_log_sum": ca.log}.get(name, lambda v: v)
        return ctx.reshaped(post(ca.reduce_sum(pre(x), axes)))

    register(name, infer=infer, numpy=kernel, emit_mil=emit, flops=lambda i, o, a: i[0].size,
             scale=COMMUTES if name in _HOMOGENEOUS_REDUCE else None, torch=torch_kernel, emit_coreai=emit_coreai if name in _COREAI_REDUCE or name in _COREAI_REDUCE_COMPOSED else None)


def _mean(x, axis, keepdims):
    return np.mean(x, axis=axis, keepdims=keepdims, dtype=np.float32 if x.dtype == np.float16 else None)


def _l2(x, axis, keepdims):
    xf = x.astype(np.float32, copy=False)
    return np.sqrt(np.sum(xf * xf, axis=axis, keepdims=keepdims))


def _l1(x, axis, keepdims):
    return np.sum(np.abs(x), axis=axis, keepdims=keepdims)


def _t_prod(x, axes, keep):
    for a in sorted(axes, reverse=True):  # torch.prod takes one axis at a time
        x = torch.prod(x, a, keepdim=keep)
    return x


def _t_l2(x, axes, keep):
    return torch.linalg.vector_norm(x.float(), 2, dim=axes, keepdim=keep)


def _log_sum_exp(x, axis, keepdims):
    xf = x.astype(np.float32, copy=False)
    m = np.max(xf, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    r = np.log(np.sum(np.exp(xf - m), axis=axis, keepdims=True)) + m
    return r if keepdims else np.squeeze(r, axis=axis)


def _sum_square(x, axis, keepdims):
    xf = x.astype(np.float32, copy=False)
    return np.sum(xf * xf, axis=axis, keepdims=keepdims)


_reduce("reduce_sum", np.sum, lambda x, ax, k: torch.sum(x, ax, keepdim=k))
_reduce("reduce_log_sum", lambda x, axis, keepdims: np.log(np.sum(x.astype(np.float32, copy=False), axis=axis,
                                                                  keepdims=keepdims)),
        lambda x, ax, k: torch.log(torch.sum(x.float(), ax, keepdim=k)), float_only=True)
_reduce("reduce_log_sum_exp", _log_sum_exp, lambda x, ax, k: torch.logsumexp(x.float(), ax, keepdim=k), float_only=True)
_reduce("reduce_sum_square", _sum_square, lambda x, ax, k: torch.sum(x.float() * x.float(), ax, keepdim=k),
        float_only=True)
_reduce("reduce_l2_norm", _l2, _t_l2, float_only=True)
_reduce("reduce_l1_norm", _l1, lambda x, ax, k: torch.sum(torch.abs(x), ax, keepdim=k), float_only=True)
_reduce("reduce_mean", _mean, lambda x, ax, k: torch.mean(x, ax, keepdim=k), float_only=True)
_reduce("reduce_max", np.max, lambda x, ax, k: torch.amax(x, ax, keepdim=k))
_reduce("reduce_min", np.min, lambda x, ax, k: torch.amin(x, ax, keepdim=k))
_reduce("reduce_prod", np.prod, _t_prod)
