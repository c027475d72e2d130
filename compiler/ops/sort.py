"""Scans and sorting: ``cumsum``, ``topk``, ``argsort``, ``reduce_argmax``, ``reduce_argmin``.

Semantics: coremltools MIL ``tensor_operation.py`` (``cumsum``, ``topk``, ``argsort``; iOS15) and
``reduction.py`` (``reduce_argmax`` / ``reduce_argmin``). Indices are int32.

Sorting ties: MIL does not specify their order; the kernels sort stably (ascending) and keep
equal elements in input order for descending sorts, which is torch's ``stable=True`` order.
"""
from __future__ import annotations

import numpy as np
from .._lazy import torch

from ..errors import IRError
from ..dtypes import DTYPES, TensorType
from .table import COMMUTES, Reason, register
from .norm import norm_axes

_SORT_ANE = Reason("sorting is not run on the ANE (no ANE sort kernel is documented; ../shared/ane-rules.md)", "undocumented")
_SCAN_ANE = Reason("cumsum is not documented to run on the ANE (../shared/ane-rules.md); Core ML runs it on the GPU/CPU",
                   "undocumented")


def _no_ane(reason):
    return lambda i, o, a: reason


def _axis(attrs, rank: int) -> int:
    return norm_axes([attrs.get("axis", 0)], rank)[0]


# -------------------------------------------------------------------------------------- scans


def _infer_cumsum(in_types, attrs):
    x = in_types[0]
    if x.dtype == "bool":
        raise IRError("cumsum of bool: cast to int32 first (MIL type domain fp16, fp32, int32)")
    _axis(attrs, x.rank)
    return [x]


def _cumsum(attrs, x):
    """MIL ``cumsum`` (iOS15 tensor_operation.py) along ``axis``; ``exclusive`` shifts by one
    (first element 0), ``reverse`` sums from the end. fp16 inputs accumulate in fp32 (tlc's fp16
    rule, :func:`tlc.ops.run_kernel`)."""
    ax = attrs.get("axis", 0) % x.ndim
    y = np.flip(x, ax) if attrs.get("reverse") else x
    y = np.cumsum(y, axis=ax, dtype=x.dtype)
    if attrs.get("exclusive"):
        y = np.concatenate([np.zeros_like(np.take(y, [0], ax)), np.take(y, np.arange(y.shape[ax] - 1), ax)], ax)
    return np.flip(y, ax) if attrs.get("reverse") else y


def _t_cumsum(attrs, x):
    ax = attrs.get("axis", 0) % x.dim()
    y = x.flip(ax) if attrs.get("reverse") else x
    y = torch.cumsum(y, ax).to(x.dtype)
    if attrs.get("exclusive"):
        y = torch.cat([torch.zeros_like(y.narrow(ax, 0, 1)), y.narrow(ax, 0, y.shape[ax] - 1)], ax)
    return y.flip(ax) if attrs.get("reverse") else y


def _ca_cumsum(ctx, a, ins, node):
    """cumsum as Core AI ``scan`` (sum); ``exclusive`` subtracts x itself (x + exclusive = inclusive)."""
    ax = a.get("axis", 0) % node.inputs[0].type.rank
    y = ctx.ca.scan(ins[0], np.uint32(ax), bool(a.get("reverse", False)), combiner="sum")
    return ctx.ca.broadcasting_sub(y, ins[0]) if a.get("exclusive") else y


register("cumsum", infer=_infer_cumsum, numpy=_cumsum, emit_coreai=_ca_cumsum,
         emit_mil=lambda ctx, a, ins, nm: ctx.mb.cumsum(x=ins[0], axis=a.get("axis", 0),
                                                        exclusive=bool(a.get("exclusive", False)),
                                                        reverse=bool(a.get("reverse", False)), name=nm),
         ane=_no_ane(_SCAN_ANE), scale=COMMUTES, torch=_t_cumsum)


# ------------------------------------------------------------------------------------ sorting


def order(x: np.ndarray, axis: int, ascending: bool) -> np.ndarray:
    """Stable argsort along ``axis``; descending keeps equal elements in input order (NaN sorts
    as the largest value, as torch does)."""
    if ascending:
        return np.argsort(x, axis=axis, kind="stable")
    key = x.astype(np.int32) if x.dtype == np.bool_ else x
    if key.dtype.kind == "f":
        # descending with NaN first: sort ascending on (-x) with NaN mapped to -inf
        k2 = np.where(np.isnan(key), -np.inf, -key)
        return np.argsort(k2, axis=axis, kind="stable")
    return np.argsort(-key.astype(np.int64), axis=axis, kind="stable")


def _infer_topk(in_types, attrs):
    x = in_types[0]
    ax = _axis({"axis": attrs.get("axis", -1)}, x.rank)
    k = attrs.get("k", 1)
    if not 0 <= k <= x.shape[ax]:
        raise IRError(f"topk k={k} out of range for axis {ax} of size {x.shape[ax]}")
    shape = list(x.shape)
    shape[ax] = k
    return [TensorType(x.dtype, tuple(shape)), TensorType("int32", tuple(shape))]


def _topk(attrs, x):
    """MIL ``topk`` (iOS15 tensor_operation.py): the ``k`` largest (``ascending`` False, default)
    or smallest values along ``axis`` in order, and their int32 indices."""
    ax = attrs.get("axis", -1) % x.ndim
    idx = np.take(order(x, ax, bool(attrs.get("ascending", False))), np.arange(attrs.get("k", 1)), axis=ax)
    return np.take_along_axis(x, idx, ax), idx.astype(np.int32)


def _t_topk(attrs, x):
    ax = attrs.get("axis", -1) % x.dim()
    v, i = torch.sort(x, dim=ax, descending=not attrs.get("ascending", False), stable=True)
    k = attrs.get("k", 1)
    return v.narrow(ax, 0, k), i.narrow(ax, 0, k).to(torch.int32)


def _ca_topk(ctx, a, ins, node):
    """topk as a stable Core AI ``argsort``, its first k indices, and a gather of the values."""
    ca = ctx.ca
    t = node.inputs[0].type
    ax = a.get("axis", -1) % t.rank
    idx = ca.argsort(ins[0], ax, not a.get("ascending", False), True)
    end = list(t.shape)
    end[ax] = a.get("k", 1)
    idx = ca.cast(ca.slice_(idx, [0] * t.rank, end, [1] * t.rank), np.int32)
    return [ca.gather_along_axis(ins[0], idx, ax), idx]


register("topk", infer=_infer_topk, numpy=_topk, emit_coreai=_ca_topk,
         emit_mil=lambda ctx, a, ins, nm: tuple(ctx.mb.topk(x=ins[0], k=a.get("k", 1), axis=a.get("axis", -1),
                                                            ascending=bool(a.get("ascending", False)), name=nm)),
         ane=_no_ane(_SORT_ANE), flops=lambda i, o, a: i[0].size * max(1, int(np.log2(max(i[0].shape or (1,))))),
         torch=_t_topk)


def _argsort(attrs, x):
    """MIL ``argsort`` (iOS15 tensor_operation.py): int32 indices that sort ``x`` along ``axis``,
    descending unless ``ascending``."""
    return order(x, attrs.get("axis", -1) % x.ndim, bool(attrs.get("ascending", False))).astype(np.int32)


def _ca_argsort(ctx, a, ins, node):
    """Stable Core AI ``argsort`` (descending unless ``ascending``), int32 as the IR."""
    ax = a.get("axis", -1) % node.inputs[0].type.rank
    return ctx.ca.cast(ctx.ca.argsort(ins[0], ax, not a.get("ascending", False), True), np.int32)


register("argsort", infer=lambda i, a: [TensorType("int32", i[0].shape)], numpy=_argsort, emit_coreai=_ca_argsort,
         emit_mil=lambda ctx, a, ins, nm: ctx.mb.argsort(x=ins[0], axis=a.get("axis", -1),
                                                         ascending=bool(a.get("ascending", False)), name=nm),
         ane=_no_ane(_SORT_ANE), flops=lambda i, o, a: i[0].size * max(1, int(np.log2(max(i[0].shape or (1,))))),
         torch=lambda a, x: torch.sort(x, dim=a.get("axis", -1) % x.dim(), descending=not a.get("ascending", False),
                                       stable=True)[1].to(torch.int32))


def _arg_reduce(name, fn, tfn):
    def infer(in_types, attrs):
        x = in_types[0]
        if x.dtype == "bool":
            raise IRError(f"{name} of bool: cast to int32 first (MIL type domain)")
        ax = _axis({"axis": attrs.get("axis", -1)}, x.rank)
        keep = attrs.get("keep_dims", False)
        shape = tuple(1 if i == ax else d for i, d in enumerate(x.shape) if keep or i != ax)
        return [TensorType("int32", shape)]

    def kernel(attrs, x):
        ax = attrs.get("axis", -1) % x.ndim
        return np.asarray(fn(x, axis=ax, keepdims=bool(attrs.get("keep_dims", False)))).astype(np.int32)

    kernel.__doc__ = (f"MIL ``{name}`` (iOS15 reduction.py): int32 index of the first "
                      f"{'largest' if 'max' in name else 'smallest'} value along ``axis`` (NaN wins, as in torch).")

    def tkernel(attrs, x):
        return tfn(x, dim=attrs.get("axis", -1) % x.dim(), keepdim=bool(attrs.get("keep_dims", False))).to(torch.int32)

    def emit_coreai(ctx, a, ins, node):  # argmin(x) = argmax(-x): the first smallest
        x = ins[0] if "max" in name else ctx.ca.broadcasting_mul(ins[0], ctx.const(np.asarray(-1, DTYPES[node.inputs[0].type.dtype])))
        return ctx.reshaped(ctx.ca.cast(ctx.ca.argmax(x, a.get("axis", -1) % node.inputs[0].type.rank), np.int32))

    register(name, infer=infer, numpy=kernel,
             emit_mil=lambda ctx, a, ins, nm: getattr(ctx.mb, name)(x=ins[0], axis=a.get("axis", -1),
                                                                    keep_dims=bool(a.get("keep_dims", False)), name=nm),
             flops=lambda i, o, a: i[0].size, torch=tkernel, emit_coreai=emit_coreai)


_arg_reduce("reduce_argmax", np.argmax, torch.deferred("argmax"))  # NumPy returns the first NaN, as torch does
_arg_reduce("reduce_argmin", np.argmin, torch.deferred("argmin"))
