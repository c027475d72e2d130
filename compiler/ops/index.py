"""Indexed reads and writes, scans and sorting: ``gather_along_axis``, ``gather_nd``, ``scatter``,
``scatter_along_axis``, ``scatter_nd``, ``cumsum``, ``topk``, ``argsort``, ``reduce_argmax``,
``reduce_argmin``.

Semantics: coremltools MIL ``scatter_gather.py`` (iOS15; iOS17 adds ``validate_indices`` and
requires non-negative scatter indices), ``tensor_operation.py`` (``cumsum``, ``topk``,
``argsort``) and ``reduction.py`` (``reduce_argmax`` / ``reduce_argmin``). Indices are int32;
the front-end wraps negative ones before they reach these ops (tlc.frontend), and the kernels
also accept them (NumPy's convention), so loaded programs that rely on the iOS15 rule run too.
Scatter ``mode`` is one of ``update``, ``add``, ``sub``, ``mul``, ``div``, ``max``, ``min``;
duplicate indices with ``update`` keep the last write here (MIL leaves it unspecified, as torch
does for ``scatter``/``index_put`` without accumulation).

Sorting ties: MIL does not specify their order; the kernels sort stably (ascending) and keep
equal elements in input order for descending sorts, which is torch's ``stable=True`` order.
"""
from __future__ import annotations

import numpy as np
from .._lazy import torch

from ..errors import IRError
from ..ir import DTYPES, TensorType
from . import flops_none, mil_attr, register
from .common import same_dtype
from .norm import norm_axes

_GATHER_ANE = "gather is not run on the ANE (hollance/neural-engine unsupported-layers.md)"
_SCATTER_ANE = ("scatter writes are indexed memory updates, the gather family the ANE does not run "
                "(hollance/neural-engine unsupported-layers.md lists gather)")
_SORT_ANE = "sorting is not run on the ANE (no ANE sort kernel is documented; ../shared/ane-rules.md)"
_SCAN_ANE = "cumsum is not documented to run on the ANE (../shared/ane-rules.md); Core ML runs it on the GPU/CPU"

_MODES = ("update", "add", "sub", "mul", "div", "max", "min")
_UFUNC = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "max": np.maximum,
          "min": np.minimum}
_TORCH_REDUCE = {"mul": "prod", "max": "amax", "min": "amin"}


def _no_ane(reason):
    return lambda i, o, a: reason


def _axis(attrs, rank: int) -> int:
    return norm_axes([attrs.get("axis", 0)], rank)[0]


def _check_indices(t: TensorType, what: str):
    if t.dtype != "int32":
        raise IRError(f"{what} indices must be int32, got {t.dtype}")


def _wrap(idx: np.ndarray, n: int) -> np.ndarray:
    return np.where(idx < 0, idx + n, idx)


def _mode(attrs) -> str:
    m = attrs.get("mode", "add")
    if m not in _MODES:
        raise IRError(f"scatter mode {m!r} unknown (one of {', '.join(_MODES)})")
    return m


def _idx_from_mil(names):
    """MIL adapter: integer index inputs of any int dtype become int32 (fp16 programs use int16)."""

    def adapter(v):
        arrays = [np.asarray(v[n]).astype(np.int32) if n in ("indices",) else v[n] for n in names]
        attrs = {k: mil_attr(x) for k, x in v.items() if k not in names and x is not None}
        return arrays, attrs

    return adapter


# ------------------------------------------------------------------------------------ gathers


def _infer_gather_along_axis(in_types, attrs):
    x, idx = in_types
    _check_indices(idx, "gather_along_axis")
    ax = _axis(attrs, x.rank)
    if idx.rank != x.rank or any(idx.shape[i] != x.shape[i] for i in range(x.rank) if i != ax):
        raise IRError(f"gather_along_axis indices {list(idx.shape)} must match x {list(x.shape)} off axis {ax}")
    if x.dtype == "bool":
        raise IRError("gather_along_axis cannot read bool tensors (MIL type domain); cast to int32 first")
    return [TensorType(x.dtype, idx.shape)]


def _gather_along_axis(attrs, x, idx):
    """MIL ``gather_along_axis`` (iOS15 scatter_gather.py): ``take_along_axis(x, indices, axis)``;
    ``indices`` has x's rank and shape except along ``axis``."""
    ax = attrs.get("axis", 0) % x.ndim
    return np.take_along_axis(x, _wrap(idx, x.shape[ax]), ax)


def _t_gather_along_axis(attrs, x, idx):
    ax = attrs.get("axis", 0) % x.dim()
    idx = idx.long()
    return torch.gather(x, ax, torch.where(idx < 0, idx + x.shape[ax], idx))


register("gather_along_axis", infer=_infer_gather_along_axis, numpy=_gather_along_axis,
         emit_coreai=lambda ctx, a, ins, node: ctx.ca.gather_along_axis(ins[0], ins[1], a.get("axis", 0) % node.inputs[0].type.rank),
         emit_mil=lambda ctx, a, ins, nm: ctx.mb.gather_along_axis(x=ins[0], indices=ins[1], axis=a.get("axis", 0),
                                                                    name=nm),
         ane=_no_ane(_GATHER_ANE), flops=flops_none, mil_inputs=("x", "indices"),
         from_mil=_idx_from_mil(("x", "indices")), torch=_t_gather_along_axis)


def _infer_gather_nd(in_types, attrs):
    x, idx = in_types
    _check_indices(idx, "gather_nd")
    k = idx.shape[-1] if idx.rank else 0
    if idx.rank < 1 or k > x.rank:
        raise IRError(f"gather_nd indices {list(idx.shape)} must index at most the {x.rank} axes of x")
    if x.dtype == "bool":
        raise IRError("gather_nd cannot read bool tensors (MIL type domain); cast to int32 first")
    return [TensorType(x.dtype, idx.shape[:-1] + x.shape[k:])]


def _gather_nd(attrs, x, idx):
    """MIL ``gather_nd`` (iOS15 scatter_gather.py): ``out[i...] = x[indices[i..., :]]`` (the last
    axis of ``indices`` addresses the leading axes of x)."""
    k = idx.shape[-1]
    cols = tuple(_wrap(idx[..., j], x.shape[j]) for j in range(k))
    return x[cols]


def _t_gather_nd(attrs, x, idx):
    k = idx.shape[-1]
    idx = idx.long()
    cols = tuple(torch.where(idx[..., j] < 0, idx[..., j] + x.shape[j], idx[..., j]) for j in range(k))
    return x[cols]


register("gather_nd", infer=_infer_gather_nd, numpy=_gather_nd,
         emit_coreai=lambda ctx, a, ins, node: ctx.ca.gather_nd(ins[0], ins[1]),  # wraps negative indices as MIL does
         emit_mil=lambda ctx, a, ins, nm: ctx.mb.gather_nd(x=ins[0], indices=ins[1], name=nm),
         ane=_no_ane(_GATHER_ANE), flops=flops_none, mil_inputs=("x", "indices"),
         from_mil=_idx_from_mil(("x", "indices")), torch=_t_gather_nd)


# ----------------------------------------------------------------------------------- scatters


def _scatter_into(mode: str, out: np.ndarray, index: tuple, upd: np.ndarray) -> np.ndarray:
    if mode == "update":
        out[index] = upd
    else:
        _UFUNC[mode].at(out, index, upd)
    return out


def _infer_scatter(in_types, attrs):
    data, idx, upd = in_types
    _check_indices(idx, "scatter")
    _mode(attrs)
    ax = _axis(attrs, data.rank)
    want = data.shape[:ax] + idx.shape + data.shape[ax + 1:]
    if idx.rank != 1 or upd.shape != want:
        raise IRError(f"scatter needs 1-D indices and updates of shape {list(want)}; got indices "
                      f"{list(idx.shape)}, updates {list(upd.shape)}")
    same_dtype([data, upd])
    return [data]


def _scatter(attrs, data, idx, upd):
    """MIL ``scatter`` (iOS15 scatter_gather.py): slices ``updates[..., i, ...]`` (along ``axis``)
    written (``mode`` update) or combined (add, sub, mul, div, max, min) into ``data`` at
    ``indices[i]``."""
    ax = attrs.get("axis", 0) % data.ndim
    out = np.array(data, copy=True)
    moved = np.moveaxis(out, ax, 0)  # a view: writes land in out
    _scatter_into(_mode(attrs), moved, (_wrap(idx, data.shape[ax]),), np.moveaxis(upd, ax, 0))
    return out


def _t_scatter(attrs, data, idx, upd):
    ax = attrs.get("axis", 0) % data.dim()
    idx = idx.long()
    idx = torch.where(idx < 0, idx + data.shape[ax], idx)
    shape = [1] * data.dim()
    shape[ax] = -1
    full = idx.reshape(shape).expand(upd.shape)
    return _t_scatter_along(_mode(attrs), data, ax, full, upd)


def _t_scatter_along(mode, data, ax, idx, upd):
    if mode == "update":
        return data.scatter(ax, idx, upd)
    if mode == "add":
        return data.scatter_add(ax, idx, upd)
    if mode == "sub":
        return data.scatter_add(ax, idx, -upd)
    if mode in _TORCH_REDUCE:
        return data.scatter_reduce(ax, idx, upd, _TORCH_REDUCE[mode])
    raise IRError(f"scatter mode {mode!r} has no torch kernel")


def _ca_scatter_along(ctx, data, idx, upd, axis: int, mode: str):
    """Core AI ``scatter_along_axis`` (every MIL mode; negative indices wrap, as in MIL)."""
    t = ctx.node.outputs[0].type
    from coreai.authoring import TensorType as CAType

    return ctx.ca.scatter_along_axis(CAType(tuple(t.shape), DTYPES[t.dtype]), data, idx, upd, int(axis),  # Core AI's index type
                                     scatter_mode=mode)


def _ca_scatter(ctx, a, ins, node):
    """IR ``scatter`` (1-D indices along ``axis``) as Core AI ``scatter_along_axis``: the indices
    reshaped onto ``axis`` and broadcast to the updates' shape."""
    rank = node.inputs[0].type.rank
    ax = a.get("axis", 0) % rank
    ushape = list(node.inputs[2].type.shape)
    idx = ctx.ca.reshape(ins[1], [1] * ax + [-1] + [1] * (rank - ax - 1))
    return _ca_scatter_along(ctx, ins[0], ctx.ca.broadcast_to(idx, ctx.u32(ushape)), ins[2], ax, _mode(a))


def _ca_scatter_nd(ctx, a, ins, node):
    """IR ``scatter_nd`` as Core AI ``scatter_along_axis`` over the flattened leading axes (Core
    AI's own ``scatter_nd`` has no combine mode): each index row becomes one linear index
    (negative entries wrapped), the updates one row each, as tlc's torch kernel does."""
    ca = ctx.ca
    dt, it = node.inputs[0].type, node.inputs[1].type
    k = it.shape[-1]
    lead, rest = list(dt.shape[:k]), list(dt.shape[k:])
    m = int(np.prod(it.shape[:-1], dtype=np.int64))
    strides = [int(np.prod(lead[j + 1:], dtype=np.int64)) for j in range(k)]
    idx = ins[1]
    neg = ca.cast(ca.broadcasting_greater(ctx.const(np.zeros((), np.int32)), idx), np.int32)
    idx = ca.broadcasting_add(idx, ca.broadcasting_mul(neg, ctx.const(np.asarray(lead, np.int32))))
    flat = ca.reduce_sum(ca.broadcasting_mul(idx, ctx.const(np.asarray(strides, np.int32))), [it.rank - 1])
    flat = ca.broadcast_to(ca.reshape(flat, [m] + [1] * len(rest)), ctx.u32([m] + rest))
    data = ca.reshape(ins[0], [int(np.prod(lead, dtype=np.int64))] + rest)
    upd = ca.reshape(ins[2], [m] + rest)
    from coreai.authoring import TensorType as CAType

    out = ca.scatter_along_axis(CAType((int(np.prod(lead, dtype=np.int64)), *rest), DTYPES[dt.dtype]), data, flat, upd,
                                0, scatter_mode=_mode(a))
    return ctx.reshaped(out)


def _emit_scatter(op):
    def emit(ctx, a, ins, nm):
        kw = {"axis": a.get("axis", 0)} if op != "scatter_nd" else {}
        return getattr(ctx.mb, op)(data=ins[0], indices=ins[1], updates=ins[2], mode=a.get("mode", "add"), name=nm,
                                   **kw)

    return emit


register("scatter", infer=_infer_scatter, numpy=_scatter, emit_mil=_emit_scatter("scatter"), emit_coreai=_ca_scatter,
         ane=_no_ane(_SCATTER_ANE), flops=lambda i, o, a: i[2].size, mil_inputs=("data", "indices", "updates"),
         from_mil=_idx_from_mil(("data", "indices", "updates")), torch=_t_scatter)


def _infer_scatter_along_axis(in_types, attrs):
    data, idx, upd = in_types
    _check_indices(idx, "scatter_along_axis")
    _mode(attrs)
    ax = _axis(attrs, data.rank)
    if idx.shape != upd.shape or idx.rank != data.rank or any(
            idx.shape[i] != data.shape[i] for i in range(data.rank) if i != ax):
        raise IRError(f"scatter_along_axis indices/updates {list(idx.shape)}/{list(upd.shape)} must match data "
                      f"{list(data.shape)} off axis {ax}")
    same_dtype([data, upd])
    return [data]


def _scatter_along_axis(attrs, data, idx, upd):
    """MIL ``scatter_along_axis`` (iOS15 scatter_gather.py): ``out[..., indices[..., i, ...], ...]``
    (along ``axis``) takes or is combined with ``updates[..., i, ...]`` per ``mode``."""
    ax = attrs.get("axis", 0) % data.ndim
    out = np.array(data, copy=True)
    grid = list(np.indices(idx.shape, sparse=True))
    grid[ax] = _wrap(idx, data.shape[ax])
    return _scatter_into(_mode(attrs), out, tuple(grid), upd)


def _t_scatter_along_axis(attrs, data, idx, upd):
    ax = attrs.get("axis", 0) % data.dim()
    idx = idx.long()
    return _t_scatter_along(_mode(attrs), data, ax, torch.where(idx < 0, idx + data.shape[ax], idx), upd)


register("scatter_along_axis", infer=_infer_scatter_along_axis, numpy=_scatter_along_axis,
         emit_mil=_emit_scatter("scatter_along_axis"), ane=_no_ane(_SCATTER_ANE), flops=lambda i, o, a: i[2].size,
         emit_coreai=lambda ctx, a, ins, node: _ca_scatter_along(ctx, *ins, a.get("axis", 0) % node.inputs[0].type.rank,
                                                                 _mode(a)),
         mil_inputs=("data", "indices", "updates"), from_mil=_idx_from_mil(("data", "indices", "updates")),
         torch=_t_scatter_along_axis)


def _infer_scatter_nd(in_types, attrs):
    data, idx, upd = in_types
    _check_indices(idx, "scatter_nd")
    _mode(attrs)
    k = idx.shape[-1] if idx.rank else 0
    want = idx.shape[:-1] + data.shape[k:]
    if idx.rank < 1 or k > data.rank or upd.shape != want:
        raise IRError(f"scatter_nd updates must be {list(want)} for indices {list(idx.shape)} into "
                      f"{list(data.shape)}, got {list(upd.shape)}")
    same_dtype([data, upd])
    return [data]


def _scatter_nd(attrs, data, idx, upd):
    """MIL ``scatter_nd`` (iOS15 scatter_gather.py): ``out[indices[i..., :]]`` takes or is combined
    with ``updates[i...]`` per ``mode``."""
    out = np.array(data, copy=True)
    k = idx.shape[-1]
    cols = tuple(_wrap(idx[..., j], data.shape[j]) for j in range(k))
    return _scatter_into(_mode(attrs), out, cols, upd)


def _t_scatter_nd(attrs, data, idx, upd):
    mode = _mode(attrs)
    k = idx.shape[-1]
    idx = idx.long()
    cols = tuple(torch.where(idx[..., j] < 0, idx[..., j] + data.shape[j], idx[..., j]) for j in range(k))
    if mode == "update":
        return data.index_put(cols, upd)
    if mode in ("add", "sub"):
        return data.index_put(cols, upd if mode == "add" else -upd, accumulate=True)
    flat = sum(c * int(np.prod(data.shape[j + 1:k], dtype=np.int64)) for j, c in enumerate(cols))
    d2 = data.reshape((-1,) + tuple(data.shape[k:]))
    f = flat.reshape(-1)
    u2 = upd.reshape((f.shape[0],) + tuple(data.shape[k:]))
    full = f.reshape((-1,) + (1,) * (d2.dim() - 1)).expand(u2.shape)
    return _t_scatter_along(mode, d2, 0, full, u2).reshape(data.shape)


register("scatter_nd", infer=_infer_scatter_nd, numpy=_scatter_nd, emit_mil=_emit_scatter("scatter_nd"),
         emit_coreai=_ca_scatter_nd,
         ane=_no_ane(_SCATTER_ANE), flops=lambda i, o, a: i[2].size, mil_inputs=("data", "indices", "updates"),
         from_mil=_idx_from_mil(("data", "indices", "updates")), torch=_t_scatter_nd)


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
         ane=_no_ane(_SCAN_ANE), torch=_t_cumsum)


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
