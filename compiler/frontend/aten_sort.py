"""ATen -> IR lowerings of ``cumsum`` and sorting (``sort``, ``argsort``, ``topk``, ...), registered into
:data:`tlc.frontend.common.LOWERINGS`; the other scans are in :mod:`tlc.frontend.aten_scan`.
"""
from __future__ import annotations

import torch
from .common import Const, lower, norm_axis


# ------------------------------------------------------------------------------- scans, sorting


@lower("aten.cumsum.default")
def _cumsum(L, x, dim, *, dtype=None):
    out = L.out_type()
    xv = L.cast(x, out.dtype if out.dtype != "bool" else "int32")
    if xv.type.rank == 0:
        return xv
    return L.add("cumsum", [xv], {"axis": norm_axis(dim, xv.type.rank)})


def _sortable(L, x):
    xv = L.v(x)
    return L.cast(xv, "int32") if xv.type.dtype == "bool" else xv


@lower("aten.sort.default", "aten.sort.stable")
def _sort(L, x, dim=-1, descending=False, *, stable=None):
    """``sort`` -> MIL ``topk`` with k = the axis length (values and int32 indices). Ties: MIL
    does not specify their order (tlc's kernels sort stably, torch's ``stable=True``)."""
    xv = _sortable(L, x)
    if xv.type.rank == 0:
        return (L.v(x), Const(torch.zeros((), dtype=torch.int32), L.node.name + "_i"))
    ax = norm_axis(dim, xv.type.rank)
    v, i = L.add("topk", [xv], {"k": xv.type.shape[ax], "axis": ax, "ascending": not descending})
    return (L.cast(v, L.out_type(0).dtype), i)


@lower("aten.topk.default")
def _topk(L, x, k, dim=-1, largest=True, sorted=True):
    xv = _sortable(L, x)
    if xv.type.rank == 0:
        return (L.v(x), Const(torch.zeros((), dtype=torch.int32), L.node.name + "_i"))
    v, i = L.add("topk", [xv], {"k": int(k), "axis": norm_axis(dim, xv.type.rank), "ascending": not largest})
    return (L.cast(v, L.out_type(0).dtype), i)


def _arg(op):
    def fn(L, x, dim=None, keepdim=False):
        xv = _sortable(L, x)
        if xv.type.rank == 0:
            return Const(torch.zeros((), dtype=torch.int32), L.node.name + "_zero")
        if dim is None:
            flat = L.add("reshape", [xv], {"shape": (xv.type.size,)}, name=L.node.name + "_flat")
            r = L.add(op, [flat], {"axis": 0, "keep_dims": False}, name=L.node.name + ("_r" if keepdim else ""))
            return L.add("reshape", [r], {"shape": (1,) * xv.type.rank}) if keepdim else r
        return L.add(op, [xv], {"axis": norm_axis(dim, xv.type.rank), "keep_dims": bool(keepdim)})

    return fn


lower("aten.argmax.default")(_arg("reduce_argmax"))
lower("aten.argmin.default")(_arg("reduce_argmin"))


def _max_dim(red, arg):
    def fn(L, x, dim, keepdim=False):
        xv = L.v(x)
        if xv.type.rank == 0:
            return (xv, Const(torch.zeros((), dtype=torch.int32), L.node.name + "_i"))
        ax = norm_axis(dim, xv.type.rank)
        work = L.cast(xv, "int32") if xv.type.dtype == "bool" else xv
        v = L.add(red, [work], {"axes": (ax,), "keep_dims": bool(keepdim)}, name=L.node.name + "_values")
        i = L.add(arg, [work], {"axis": ax, "keep_dims": bool(keepdim)}, name=L.node.name + "_indices")
        return (L.cast(v, xv.type.dtype), i)

    return fn


lower("aten.max.dim")(_max_dim("reduce_max", "reduce_argmax"))
lower("aten.min.dim")(_max_dim("reduce_min", "reduce_argmin"))
