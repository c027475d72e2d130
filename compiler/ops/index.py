"""Indexed reads and writes: ``gather``, ``gather_along_axis``, ``gather_nd``, ``scatter``,
``scatter_along_axis``, ``scatter_nd``. Scans and sorting are in :mod:`tlc.ops.sort`.

Semantics: coremltools MIL ``scatter_gather.py`` (iOS15; iOS17 adds ``validate_indices`` and
requires non-negative scatter indices). Indices are int32; the front-end wraps negative ones
before they reach these ops (tlc.frontend), and the kernels also accept them (NumPy's
convention), so loaded programs that rely on the iOS15 rule run too.
Scatter ``mode`` is one of ``update``, ``add``, ``sub``, ``mul``, ``div``, ``max``, ``min``;
duplicate indices with ``update`` keep the last write here (MIL leaves it unspecified, as torch
does for ``scatter``/``index_put`` without accumulation).
"""
from __future__ import annotations

import numpy as np
from .._lazy import torch

from ..errors import IRError
from ..dtypes import DTYPES, TensorType
from .table import COMMUTES, Reason, flops_none, mil_attr, register
from .common import same_dtype
from .norm import norm_axes

_GATHER_ANE = Reason("gather is not run on the ANE (hollance/neural-engine unsupported-layers.md)", "gather")
_SCATTER_ANE = Reason("scatter writes are indexed memory updates, the gather family the ANE does not run "
                      "(hollance/neural-engine unsupported-layers.md lists gather)", "gather")

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


def ca_take(ctx, x, idx, axis: int, rank: int, idx_rank: int):
    """Core AI ``x.take(idx, axis)`` (x of ``rank``, idx a Core AI value or array of ``idx_rank``):
    ``gather_nd`` over the axis moved first, then the gathered axes moved back into place."""
    ca = ctx.ca
    if axis:
        x = ca.transpose(x, ctx.u32([axis] + [i for i in range(rank) if i != axis]))
    y = ca.gather_nd(x, ca.expand_dims(idx, [idx_rank]))  # idx.shape + the other axes
    if axis:
        ir = idx_rank
        y = ca.transpose(y, ctx.u32(list(range(ir, ir + axis)) + list(range(ir)) + list(range(ir + axis, ir + rank - 1))))
    return y


def _ca_gather(ctx, a, ins, node):
    """IR ``gather(x, indices, axis)`` as Core AI ``gather_nd`` (:func:`ca_take`)."""
    rank = node.inputs[0].type.rank
    return ca_take(ctx, ins[0], ins[1], a.get("axis", 0) % rank, rank, node.inputs[1].type.rank)


def _infer_gather(in_types, attrs):
    x, idx = in_types
    ax = norm_axes([attrs.get("axis", 0)], x.rank)[0]
    if idx.dtype != "int32":
        raise IRError(f"gather indices must be int32, got {idx.dtype}")
    if x.dtype == "bool":
        raise IRError("gather cannot read bool tensors (MIL gather's type domain); cast to int32 first")
    return [TensorType(x.dtype, x.shape[:ax] + idx.shape + x.shape[ax + 1:])]


def _gather(attrs, x, idx):
    """MIL ``gather`` (iOS17 scatter_gather.py): ``take(x, indices, axis)``; negative indices
    count from the end; out-of-range indices raise IndexError (``validate_indices``). With
    ``batch_dims`` b > 0 (iOS16+, MIL programs only) the first b axes of ``x`` and ``indices`` are
    batch: out[i...] = take(x[i...], indices[i...], axis - b)."""
    ax = attrs.get("axis", 0) % x.ndim
    bd = int(attrs.get("batch_dims", 0) or 0)
    if not bd:
        return np.take(x, idx, axis=ax)
    batch = x.shape[:bd]
    xb, ib = x.reshape((-1,) + x.shape[bd:]), idx.reshape((-1,) + idx.shape[bd:])
    out = np.stack([np.take(xb[i], ib[i], axis=ax - bd) for i in range(xb.shape[0])])
    return out.reshape(batch + out.shape[1:])


def _t_gather(attrs, x, idx):
    """Torch kernel of ``gather``: ``index_select`` on the flattened indices, negative indices
    wrapped on the device. Out-of-range indices are not checked (CUDA asserts, CPU raises)."""
    ax = attrs.get("axis", 0) % x.dim()
    flat = idx.reshape(-1)
    flat = torch.where(flat < 0, flat + x.shape[ax], flat)
    return x.index_select(ax, flat).reshape(x.shape[:ax] + idx.shape + x.shape[ax + 1:])


register(
    "gather",
    emit_coreai=_ca_gather,
    torch=_t_gather,
    infer=_infer_gather,
    numpy=_gather,
    emit_mil=lambda ctx, a, ins, nm: ctx.mb.gather(x=ins[0], indices=ins[1], axis=a.get("axis", 0), name=nm),
    ane=_no_ane(_GATHER_ANE), scale=COMMUTES,
    flops=flops_none,
    mil_inputs=("x", "indices"),
    from_mil=lambda v: _gather_from_mil(v),
)


def _gather_from_mil(v):
    """MIL ``gather``: indices of any integer dtype (fp16 programs use int16/uint16 after
    ``add_int16_cast``), ``batch_dims`` (iOS16+)."""
    attrs = {"axis": int(v.get("axis", 0))}
    if int(v.get("batch_dims", 0) or 0):
        attrs["batch_dims"] = int(v["batch_dims"])
    return [v["x"], np.asarray(v["indices"]).astype(np.int32)], attrs


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
         ane=_no_ane(_GATHER_ANE), scale=COMMUTES, flops=flops_none, mil_inputs=("x", "indices"),
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
         ane=_no_ane(_GATHER_ANE), scale=COMMUTES, flops=flops_none, mil_inputs=("x", "indices"),
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
