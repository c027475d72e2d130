"""ATen -> IR lowerings of strided views, flat writes and mask-ordered writes (registered into
:data:`tlc.frontend.common.LOWERINGS`): ``as_strided`` (+ ``_copy``, ``_scatter``), ``put``,
``index_reduce``, ``masked_scatter``, ``nonzero_static``, ``diagonal_scatter``, and the ``*_copy``
spellings of views.

A strided view of a contiguous tensor reads the constant flat positions offset + sum_k i_k s_k:
one ``gather`` (or slices, :func:`tlc.frontend.common.take`) of the flattened input; its
scatter writes them with ``scatter_nd``. Writes whose positions follow a boolean mask in
row-major order (``masked_scatter``, ``nonzero_static``) have static shapes too: the running count
of the mask (``cumsum``) numbers the positions.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UnsupportedOpError
from .common import LOWERINGS, Const, broadcast_to, lower, norm_axis, sub_name, take, wrapped_index


def _strided_index(size, stride, offset) -> np.ndarray:
    """The flat positions an ``as_strided(size, stride, offset)`` view reads, shaped ``size``."""
    idx = np.full(tuple(size), int(offset or 0), np.int64)
    for k, (n, s) in enumerate(zip(size, stride)):
        shape = [1] * len(size)
        shape[k] = n
        idx = idx + (np.arange(n) * s).reshape(shape)
    return idx


def _flat(L, x, tag="flat"):
    v = L.v(x)
    return L.add("reshape", [v], {"shape": (max(v.type.size, 1),) if v.type.size else (0,)}, name=sub_name(L, tag))


@lower("aten.as_strided.default", "aten.as_strided_copy.default")
def _as_strided(L, x, size, stride, storage_offset=None):
    """Reads of a strided view (tlc's values are contiguous, so the view's storage is the input
    in row-major order): the constant flat positions, gathered."""
    v = L.v(x)
    idx = _strided_index(size, stride, storage_offset)
    if idx.size and (idx.max() >= max(v.type.size, 1) or idx.min() < 0):
        raise UnsupportedOpError("as_strided reads outside its input's storage")
    flat = _flat(L, v)
    if idx.size == 0:
        return Const(torch.zeros(tuple(size)), sub_name(L, "empty"))
    g = take(L, flat, 0, idx.reshape(-1), name=sub_name(L, "take"))
    return L.add("reshape", [g], {"shape": tuple(int(d) for d in size)})


def _scatter_flat(L, x, positions: np.ndarray, src, mode="update", tag="w"):
    """``x`` with the flat ``positions`` (constant, any shape) written (or combined, ``mode``) from
    ``src`` (same shape as positions): ``scatter_nd`` on the flattened x."""
    v = L.v(x)
    dt = v.type.dtype
    flat = _flat(L, v, tag + "_flat")
    pos = Const(torch.from_numpy(positions.reshape(-1, 1).astype(np.int32)), sub_name(L, tag + "_pos"))
    upd = L.add("reshape", [L.cast(src, dt)], {"shape": (positions.size,)}, name=sub_name(L, tag + "_src"))
    work, upd = (L.cast(flat, "int32"), L.cast(upd, "int32")) if dt == "bool" else (flat, upd)
    y = L.add("scatter_nd", [work, L.v(pos), upd], {"mode": mode}, name=sub_name(L, tag + "_nd"))
    y = L.cast(y, dt)
    return L.add("reshape", [y], {"shape": v.type.shape})


@lower("aten.as_strided_scatter.default")
def _as_strided_scatter(L, x, src, size, stride, storage_offset=None):
    idx = _strided_index(size, stride, storage_offset)
    if len(np.unique(idx)) != idx.size:
        raise UnsupportedOpError("as_strided_scatter onto overlapping positions")
    return _scatter_flat(L, x, idx, src)


@lower("aten.put.default")
def _put(L, x, index, source, accumulate=False):
    """``put``: writes at flat positions given by ``index`` (a tensor; negative counts from the
    end) -> scatter_nd on the flattened input."""
    v = L.v(x)
    dt = v.type.dtype
    n = v.type.size
    flat = _flat(L, v)
    iv = L.v(wrapped_index(L, index, n))
    idx = L.add("reshape", [iv], {"shape": (max(iv.type.size, 1), 1)}, name=sub_name(L, "idx"))
    upd = L.add("reshape", [L.cast(source, dt)], {"shape": (idx.type.shape[0],)}, name=sub_name(L, "src"))
    work, upd = (L.cast(flat, "int32"), L.cast(upd, "int32")) if dt == "bool" else (flat, upd)
    y = L.add("scatter_nd", [work, idx, upd], {"mode": "add" if accumulate else "update"}, name=sub_name(L, "nd"))
    return L.add("reshape", [L.cast(y, dt)], {"shape": v.type.shape})


@lower("aten.index_reduce.default")
def _index_reduce(L, x, dim, index, source, reduce, *, include_self=True):
    """``index_reduce`` along ``dim`` with a 1-D index: MIL ``scatter`` (prod -> mul, amax -> max,
    amin -> min; mean as a sum over counts), the reduction's identity written first when
    ``include_self`` is False."""
    v = L.v(x)
    dt = v.type.dtype
    if v.type.rank == 0:  # a scalar: as a 1-element vector
        one = L.add("reshape", [v], {"shape": (1,)}, name=sub_name(L, "x1"))
        s1 = L.add("reshape", [L.cast(source, dt)], {"shape": (1,)}, name=sub_name(L, "s1"))
        y = _index_reduce(L, one, 0, index, s1, reduce, include_self=include_self)
        return L.add("reshape", [y], {"shape": ()})
    ax = norm_axis(dim, v.type.rank)
    n = v.type.shape[ax]
    idx = L.v(wrapped_index(L, index, n))
    src = L.cast(source, dt)

    def scatter(data, upd, mode, tag):
        return L.add("scatter", [data, idx, upd], {"axis": ax, "mode": mode}, name=sub_name(L, tag))

    def fill(value, tag):
        shape = list(src.type.shape)
        block = Const(torch.full(shape, value, dtype=_TORCH[dt]), sub_name(L, tag + "_v"))
        return scatter(v, L.v(block), "update", tag)

    if reduce == "mean":
        base = v if include_self else fill(0, "zero")
        tot = scatter(base, src, "add", "sum")
        ones = L.v(Const(torch.ones(tuple(src.type.shape), dtype=_TORCH[dt]), sub_name(L, "ones")))
        cnt0 = L.v(Const((torch.ones if include_self else torch.zeros)(tuple(v.type.shape), dtype=_TORCH[dt]),
                         sub_name(L, "cnt0")))
        cnt = L.add("scatter", [cnt0, idx, ones], {"axis": ax, "mode": "add"}, name=sub_name(L, "cnt"))
        cnt = L.add("maximum", [cnt, L.scalar(1, dt)], name=sub_name(L, "cnt1"))
        if dt in ("fp32", "fp16"):
            return L.add("real_div", [tot, cnt])
        return L.add("floor_div", [tot, cnt])
    mode = {"prod": "mul", "amax": "max", "amin": "min"}.get(reduce)
    if mode is None:
        raise UnsupportedOpError(f"index_reduce {reduce!r}")
    base = v
    if not include_self:
        f = dt in ("fp32", "fp16")
        ident = {"mul": 1, "max": float("-inf") if f else -2 ** 31, "min": float("inf") if f else 2 ** 31 - 1}[mode]
        base = fill(ident, "ident")
    return scatter(base, src, mode, "out")


_TORCH = {"fp32": torch.float32, "fp16": torch.float16, "int32": torch.int32, "bool": torch.bool}


@lower("aten.masked_scatter.default")
def _masked_scatter(L, x, mask, source):
    """``masked_scatter``: the i-th True of the mask (row-major) takes source.flatten()[i]. The
    running count of the mask numbers them (``cumsum``), a gather reads the source, a select
    writes: static shapes throughout."""
    v = L.v(x)
    dt = v.type.dtype
    m = L.cast(mask, "bool")
    if m.type.shape != v.type.shape:
        m = broadcast_to(L, m, v.type.shape, "mask")
    mflat = L.add("reshape", [m], {"shape": (v.type.size,)}, name=sub_name(L, "mflat"))
    rank = L.add("cumsum", [L.cast(mflat, "int32")], {"axis": 0}, name=sub_name(L, "rank"))
    pos = L.add("sub", [rank, L.scalar(1, "int32")], name=sub_name(L, "pos"))
    pos = L.add("maximum", [pos, L.scalar(0, "int32")], name=sub_name(L, "pos0"))
    s = L.v(source)
    sflat = L.add("reshape", [L.cast(s, dt if dt != "bool" else "int32")], {"shape": (s.type.size,)}, name=sub_name(L, "sflat"))
    if s.type.size < v.type.size:
        pos = L.add("minimum", [pos, L.scalar(s.type.size - 1, "int32")], name=sub_name(L, "posc"))
    g = L.add("gather", [sflat, pos], {"axis": 0}, name=sub_name(L, "take"))
    g = L.add("reshape", [L.cast(g, dt)], {"shape": v.type.shape}, name=sub_name(L, "vals"))
    return L.add("select", [m, g, v])


@lower("aten.nonzero_static.default")
def _nonzero_static(L, x, *, size, fill_value=-1):
    """``nonzero_static``: the coordinates of the first ``size`` non-zeros (row-major), padded with
    ``fill_value``. Each non-zero's running count is its output row; the others write to a spare
    row past the end, sliced off (``scatter_nd`` into a [size + 1, rank] buffer)."""
    v = L.v(x)
    r = max(v.type.rank, 1)
    n = v.type.size
    nz = L.add("not_equal", [v, L.scalar(0, v.type.dtype)], name=sub_name(L, "nz")) if v.type.dtype != "bool" else v
    nzf = L.add("reshape", [nz], {"shape": (n,)}, name=sub_name(L, "nzf"))
    rank = L.add("sub", [L.add("cumsum", [L.cast(nzf, "int32")], {"axis": 0}, name=sub_name(L, "cnt")),
                         L.scalar(1, "int32")], name=sub_name(L, "row"))
    ok = L.add("logical_and", [nzf, L.add("less", [rank, L.scalar(int(size), "int32")], name=sub_name(L, "fits"))],
               name=sub_name(L, "ok"))
    row = L.add("select", [ok, rank, L.scalar(int(size), "int32")], name=sub_name(L, "dest"))
    coords = np.stack(np.unravel_index(np.arange(n), v.type.shape or (1,)), -1).astype(np.int32).reshape(n, r)
    buf = Const(torch.full((int(size) + 1, r), int(fill_value), dtype=torch.int32), sub_name(L, "buf"))
    upd = Const(torch.from_numpy(coords), sub_name(L, "coords"))
    y = L.add("scatter_nd", [L.v(buf), L.add("expand_dims", [row], {"axes": (-1,)}, name=sub_name(L, "dest2")), L.v(upd)],
              {"mode": "update"}, name=sub_name(L, "nd"))
    return L.add("slice_by_index", [y], {"begin": (0, 0), "end": (int(size), r), "stride": (1, 1)})


@lower("aten.diagonal_scatter.default")
def _diagonal_scatter(L, x, src, offset=0, dim1=0, dim2=1):
    """``diagonal_scatter``: the diagonal's flat positions (constant) written with ``scatter_nd``."""
    v = L.v(x)
    shape = v.type.shape
    r = len(shape)
    a, b = dim1 % r, dim2 % r
    rows, cols = shape[a], shape[b]
    length = max(0, min(rows, cols - offset) if offset >= 0 else min(rows + offset, cols))
    if length == 0:
        return L.add("identity", [v])
    base = np.arange(int(np.prod(shape))).reshape(shape)
    i = np.arange(length)
    ii, jj = (i, i + offset) if offset >= 0 else (i - offset, i)
    moved = np.moveaxis(base, (a, b), (r - 2, r - 1))[..., ii, jj]  # [..., length] like torch's diagonal
    return _scatter_flat(L, v, moved, src)


for _copy, _view in [("aten.narrow_copy.default", "aten.narrow.default"), ("aten.view_copy.default", "aten.view.default"),
                     ("aten.permute_copy.default", "aten.permute.default"), ("aten.unbind_copy.int", "aten.unbind.int"),
                     ("aten.t_copy.default", "aten.t.default"), ("aten.transpose_copy.int", "aten.transpose.int"),
                     ("aten.unsqueeze_copy.default", "aten.unsqueeze.default"),
                     ("aten.squeeze_copy.dims", "aten.squeeze.dims"), ("aten.squeeze_copy.dim", "aten.squeeze.dim"),
                     ("aten.squeeze_copy.default", "aten.squeeze.default"), ("aten.alias_copy.default", "aten.alias.default"),
                     ("aten.split_copy.Tensor", "aten.split.Tensor"),
                     ("aten.split_with_sizes_copy.default", "aten.split_with_sizes.default")]:
    if _view in LOWERINGS:
        lower(_copy)(LOWERINGS[_view])


@lower("aten.narrow.default", "aten.narrow_copy.default")
def _narrow_op(L, x, dim, start, length):
    from .aten_shape import lower_slice

    n = L.v(x).type.shape[norm_axis(dim, L.v(x).type.rank)]
    start = start % n if start < 0 else start
    return lower_slice(L, x, dim, start, start + length, 1)

