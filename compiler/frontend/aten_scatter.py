"""ATen -> IR lowerings of indexed and sliced writes (registered into
:data:`tlc.frontend.common.LOWERINGS`): ``scatter`` / ``scatter_add`` / ``scatter_reduce`` -> MIL
``scatter_along_axis`` or ``scatter_nd``, ``index_put`` -> ``scatter_nd`` (a ``select`` for a
boolean mask), ``slice_scatter`` / ``select_scatter`` -> slices + ``concat`` or ``scatter``. The
reads (slicing, indexing, gathers) are in :mod:`tlc.frontend.aten_shape`."""
from __future__ import annotations

import numpy as np
import torch

from .. import dtypes
from ..errors import UnsupportedOpError
from .common import Const, broadcast_to, is_bool_tensor, lower, narrow, norm_axis, shape_of, wrapped_index


def _coords(L, index, ax: int, tag="coords"):
    """[*index.shape, rank] int32 coordinates of every element of a torch.gather/scatter style
    ``index`` (its value along ``ax``, its own position elsewhere)."""
    ishape = shape_of(index)
    r = len(ishape)
    grids = np.indices(ishape).astype(np.int32)
    cols = []
    for i in range(r):
        if i == ax:
            c = L.cast(index, "int32")
        else:
            c = Const(torch.from_numpy(np.ascontiguousarray(grids[i])), f"{L.node.name}_{tag}{i}")
        cols.append(L.add("expand_dims", [c], {"axes": (-1,)}, name=f"{L.node.name}_{tag}{i}_e"))
    return L.add("concat", cols, {"axis": r}, name=f"{L.node.name}_{tag}")


def _scatter_axis(L, x, dim, index, src, mode: str):
    """torch.scatter-style write along ``dim`` with ``mode`` (MIL ``scatter_along_axis`` when the
    index spans x on the other axes, else ``scatter_nd`` with explicit coordinates)."""
    xv = L.v(x)
    dt = xv.type.dtype
    r = xv.type.rank
    if r == 0:
        xv = L.add("reshape", [xv], {"shape": (1,)}, name=L.node.name + "_1d")
        index = L.add("reshape", [L.v(index)], {"shape": (1,)}, name=L.node.name + "_i1d")
        src = L.add("reshape", [L.v(src) if not isinstance(src, (int, float)) else L.scalar(src, dt)],
                    {"shape": (1,)}, name=L.node.name + "_s1d")
        y = _scatter_axis(L, xv, 0, index, src, mode)
        return L.add("reshape", [y], {"shape": ()})
    ax = norm_axis(dim, r)
    ishape = shape_of(index)
    if isinstance(src, (int, float, bool)):
        src = Const(torch.full(ishape, src, dtype=dtypes.TORCH[dt]), L.node.name + "_src")
    else:
        sshape = shape_of(src)
        if sshape != ishape:
            src = L.add("slice_by_index", [L.v(src)], {"begin": (0,) * r, "end": ishape, "stride": (1,) * r},
                        name=L.node.name + "_srccut")
    src = L.cast(src, dt)
    work = L.cast(xv, "int32") if dt == "bool" else xv
    src = L.cast(src, "int32") if dt == "bool" else src
    if all(ishape[i] == xv.type.shape[i] for i in range(r) if i != ax):
        y = L.add("scatter_along_axis", [work, wrapped_index(L, index, xv.type.shape[ax]), src], {"axis": ax, "mode": mode},
                  name=L.node.name + ("_int" if dt == "bool" else ""))
    else:
        y = L.add("scatter_nd", [work, _coords(L, wrapped_index(L, index, xv.type.shape[ax]), ax), src], {"mode": mode},
                  name=L.node.name + ("_int" if dt == "bool" else ""))
    return L.add("cast", [y], {"dtype": "bool"}) if dt == "bool" else y


_REDUCE_MODE = {"sum": "add", "add": "add", "prod": "mul", "multiply": "mul", "amax": "max", "amin": "min"}


@lower("aten.scatter.src", "aten.scatter.value")
def _scatter(L, x, dim, index, src):
    return _scatter_axis(L, x, dim, index, src, "update")


@lower("aten.scatter.reduce", "aten.scatter.value_reduce")
def _scatter_reduce_legacy(L, x, dim, index, src, *, reduce):
    return _scatter_axis(L, x, dim, index, src, _REDUCE_MODE[reduce])


@lower("aten.scatter_add.default")
def _scatter_add(L, x, dim, index, src):
    return _scatter_axis(L, x, dim, index, src, "add")


@lower("aten.scatter_reduce.two")
def _scatter_reduce(L, x, dim, index, src, reduce, *, include_self=True):
    """``scatter_reduce``: sum/prod/amax/amin as MIL scatter modes; ``include_self=False`` first
    writes the reduction's identity where anything lands; ``mean`` is the sum over the count."""
    dt = L.v(x).type.dtype
    if reduce == "mean":
        if dt not in ("fp32", "fp16"):
            raise UnsupportedOpError("scatter_reduce mean of an integer tensor (torch floors it) is not lowered")
        ones = Const(torch.ones(shape_of(index), dtype=dtypes.TORCH[dt]), L.node.name + "_ones")
        base = L.v(x) if include_self else _scatter_axis(L, x, dim, index, 0.0, "update")
        tot = _scatter_axis(L, base, dim, index, src, "add")
        cnt0 = Const(torch.ones(shape_of(x), dtype=dtypes.TORCH[dt]) if include_self else torch.zeros(shape_of(x), dtype=dtypes.TORCH[dt]),
                     L.node.name + "_cnt0")
        cnt = _scatter_axis(L, cnt0, dim, index, ones, "add")
        safe = L.add("maximum", [cnt, L.scalar(1.0, dt)], name=L.node.name + "_cnt")
        return L.add("real_div", [tot, safe])
    mode = _REDUCE_MODE.get(reduce)
    if mode is None:
        raise UnsupportedOpError(f"scatter_reduce {reduce!r} unknown")
    base = x
    if not include_self:
        ident = {"add": 0, "mul": 1, "max": float("-inf") if dt in ("fp32", "fp16") else -2 ** 31,
                 "min": float("inf") if dt in ("fp32", "fp16") else 2 ** 31 - 1}[mode]
        base = _scatter_axis(L, x, dim, index, ident, "update")
    return _scatter_axis(L, base, dim, index, src, mode)


@lower("aten.index_put.default", "aten._unsafe_index_put.default")
def _index_put(L, x, indices, values, accumulate=False):
    """``x[indices] = values`` (``+=`` with ``accumulate``) -> MIL ``scatter_nd`` over the indexed
    axes (moved to the front when they are not), the values laid out as torch broadcasts them. A
    boolean mask with a broadcastable value (``x[mask] = v``) is a ``select``."""
    xv = L.v(x)
    shape = xv.type.shape
    dt = xv.type.dtype
    pos = [i for i, t in enumerate(indices) if t is not None]
    idx = [indices[i] for i in pos]
    if len(idx) == 1 and is_bool_tensor(idx[0]):
        mask = L.v(idx[0])
        vshape = shape_of(values)
        if int(np.prod(vshape)) != 1:
            raise UnsupportedOpError("x[mask] = tensor writes a data-dependent number of values")
        mshape = mask.type.shape
        m = mask
        if pos[0] or len(mshape) < len(shape):
            m = L.add("reshape", [mask], {"shape": (1,) * pos[0] + mshape + (1,) * (len(shape) - pos[0] - len(mshape))},
                      name=L.node.name + "_mask")
        v = L.add("reshape", [L.cast(values, dt)], {"shape": ()}, name=L.node.name + "_v")
        if accumulate:
            v = L.add("add", [xv, v], name=L.node.name + "_acc")
        return L.add("select", [m, v if accumulate else broadcast_to(L, v, shape, "v"), xv])
    if any(is_bool_tensor(t) for t in idx):
        raise UnsupportedOpError("index_put with boolean masks among several indices")
    B = tuple(torch.broadcast_shapes(*[shape_of(t) for t in idx]))
    nb, m = len(B), len(pos)
    others = [i for i in range(len(shape)) if i not in pos]
    adjacent = pos == list(range(pos[0], pos[-1] + 1))
    k = pos[0] if adjacent else 0
    vshape = (shape[:k] + B + shape[k + m:]) if adjacent else (B + tuple(shape[o] for o in others))
    v = broadcast_to(L, L.cast(values, dt), vshape, "values")
    if adjacent and k:
        v = L.add("transpose", [v], {"perm": tuple(range(k, k + nb)) + tuple(range(k)) + tuple(range(k + nb, len(vshape)))},
                  name=L.node.name + "_vfront")
    data = xv
    perm = tuple(pos + others)
    moved = perm != tuple(range(len(shape)))
    if moved:
        data = L.add("transpose", [data], {"perm": perm}, name=L.node.name + "_front")
    cols = [L.add("expand_dims", [broadcast_to(L, wrapped_index(L, t, shape[p], f"w{j}"), B, f"i{j}")], {"axes": (-1,)},
                  name=f"{L.node.name}_c{j}") for j, (t, p) in enumerate(zip(idx, pos))]
    coords = cols[0] if len(cols) == 1 else L.add("concat", cols, {"axis": nb}, name=L.node.name + "_coords")
    is_bool = dt == "bool"
    if is_bool:
        data, v = L.cast(data, "int32"), L.cast(v, "int32")
    y = L.add("scatter_nd", [data, coords, v], {"mode": "add" if accumulate else "update"},
              name=L.node.name + ("_nd" if moved or is_bool else ""))
    if is_bool:
        y = L.add("cast", [y], {"dtype": "bool"}, name=L.node.name + ("_b" if moved else ""))
    if moved:
        y = L.add("transpose", [y], {"perm": tuple(int(i) for i in np.argsort(perm))})
    return y


@lower("aten.slice_scatter.default")
def _slice_scatter(L, x, src, dim=0, start=None, end=None, step=1):
    """``x[..., start:end:step, ...] = src``: slices + ``concat`` for step 1 (ANE-friendly), MIL
    ``scatter`` with constant indices otherwise (``slice_update`` needs iOS18)."""
    xv = L.v(x)
    shape = xv.type.shape
    ax = norm_axis(dim, len(shape))
    n = shape[ax]
    s, e, st = slice(start, end, step).indices(n)
    idx = np.arange(s, max(e, s), st)
    src = L.cast(src, xv.type.dtype)
    if idx.size == 0:
        return xv
    if st == 1:
        parts = ([narrow(L, xv, ax, 0, s, "head")] if s else []) + [L.v(src)] + \
                ([narrow(L, xv, ax, int(idx[-1]) + 1, n - int(idx[-1]) - 1, "tail")] if idx[-1] + 1 < n else [])
        return parts[0] if len(parts) == 1 else L.add("concat", parts, {"axis": ax})
    dt = xv.type.dtype
    work, upd = (L.cast(xv, "int32"), L.cast(src, "int32")) if dt == "bool" else (xv, L.v(src))
    y = L.add("scatter", [work, Const(torch.from_numpy(idx.astype(np.int32)), L.node.name + "_idx"), upd],
              {"axis": ax, "mode": "update"}, name=L.node.name + ("_int" if dt == "bool" else ""))
    return L.add("cast", [y], {"dtype": "bool"}) if dt == "bool" else y


@lower("aten.select_scatter.default")
def _select_scatter(L, x, src, dim, index):
    xv = L.v(x)
    ax = norm_axis(dim, xv.type.rank)
    i = index % xv.type.shape[ax]
    s = L.add("expand_dims", [L.cast(src, xv.type.dtype)], {"axes": (ax,)}, name=L.node.name + "_src")
    return _slice_scatter(L, xv, s, ax, i, i + 1, 1)
