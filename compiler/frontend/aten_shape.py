"""ATen -> IR lowerings for shapes, slicing, indexing and gathers (registered into
:data:`tlc.frontend.common.LOWERINGS`); scatters and the other indexed writes:
:mod:`tlc.frontend.aten_scatter`; ``cumsum`` and sorting: :mod:`tlc.frontend.aten_sort`."""
from __future__ import annotations

import numpy as np
import torch

from .. import dtypes
from ..errors import UnsupportedOpError
from .common import Const, broadcast_to, is_bool_tensor, lower, norm_axis, rank_of, shape_of, take, wrapped_index

# ------------------------------------------------------------------------------------- shapes


@lower("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default")
def _view(L, x, shape):
    return L.add("reshape", [x], {"shape": L.out_type().shape})


@lower("aten.permute.default")
def _permute(L, x, dims):
    r = rank_of(x)
    return L.add("transpose", [x], {"perm": tuple(norm_axis(d, r) for d in dims)})


@lower("aten.t.default")
def _t(L, x):
    return x if rank_of(x) < 2 else L.add("transpose", [x], {"perm": (1, 0)})


@lower("aten.transpose.int")
def _transpose(L, x, a, b):
    r = rank_of(x)
    perm = list(range(r))
    perm[norm_axis(a, r)], perm[norm_axis(b, r)] = perm[norm_axis(b, r)], perm[norm_axis(a, r)]
    return L.add("transpose", [x], {"perm": tuple(perm)})


@lower("aten.unsqueeze.default")
def _unsqueeze(L, x, dim):
    r = rank_of(x) + 1
    return L.add("expand_dims", [x], {"axes": (norm_axis(dim, r),)})


@lower("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default")
def _squeeze(L, x, dims=None):
    shape = shape_of(x)
    r = len(shape)
    if dims is None:
        axes = tuple(i for i, d in enumerate(shape) if d == 1)
    else:
        axes = tuple(a for a in (norm_axis(d, r) for d in (dims if isinstance(dims, (list, tuple)) else [dims])) if shape[a] == 1)
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
    if not repeats or all(r == 1 for r in repeats):
        return L.add("identity", [x])
    return L.add("tile", [x], {"reps": tuple(repeats)})


@lower("aten.cat.default")
def _cat(L, tensors, dim=0):
    vals = [t for t in tensors if int(np.prod(shape_of(t))) != 0]  # empty operands add nothing
    dt = L.out_type().dtype
    vals = [L.cast(t, dt) for t in vals]
    if len(vals) == 1:
        return vals[0]
    return L.add("concat", vals, {"axis": norm_axis(dim, rank_of(vals[0]))})


@lower("aten.split_with_sizes.default", "aten.split.Tensor")
def _split(L, x, sizes, dim=0):
    shape = shape_of(x)
    ax = norm_axis(dim, len(shape))
    if isinstance(sizes, int):
        n = shape[ax]
        sizes = [min(sizes, n - i) for i in range(0, n, sizes)]
    outs = L.add("split", [x], {"split_sizes": tuple(sizes), "axis": ax})
    return outs if isinstance(outs, tuple) else (outs,)


@lower("aten.unbind.int")
def _unbind(L, x, dim=0):
    shape = shape_of(x)
    ax = norm_axis(dim, len(shape))
    parts = _split(L, x, [1] * shape[ax], ax)
    return tuple(L.add("squeeze", [p], {"axes": (ax,)}, name=f"{L.node.name}_{i}") for i, p in enumerate(parts))


@lower("aten.slice.Tensor", "aten.slice_copy.Tensor")
def lower_slice(L, x, dim=0, start=None, end=None, step=1):
    shape = shape_of(x)
    r = len(shape)
    ax = norm_axis(dim, r)
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
    r = rank_of(x)
    return L.add("reverse", [x], {"axes": tuple(sorted({norm_axis(d, r) for d in dims}))})


@lower("aten.select.int", "aten.select_copy.int")
def lower_select(L, x, dim, index):
    shape = shape_of(x)
    r = len(shape)
    ax = norm_axis(dim, r)
    i = index % shape[ax]
    begin, endv = [0] * r, list(shape)
    begin[ax], endv[ax] = i, i + 1
    mask = [False] * r
    mask[ax] = True
    return L.add("slice_by_index", [x], {"begin": tuple(begin), "end": tuple(endv), "stride": (1,) * r, "squeeze_mask": tuple(mask)})


@lower("aten.index.Tensor", "aten._unsafe_index.Tensor")
def _index(L, x, indices):
    """Advanced indexing with integer index tensors in any layout (torch's rule: adjacent index
    tensors keep their place, separated ones move the broadcast index dims first): the indexed
    axes are transposed to the front when separated, flattened into one, and read with one
    ``gather`` of the linearized (wrapped) index; constant 1-D indices become slices
    (:func:`take`). Boolean masks have data-dependent shapes: declined, so the node stays a torch
    op in the fallback runtime."""
    xv = L.v(x)
    shape = xv.type.shape
    if any(isinstance(t, Const) and is_bool_tensor(t) for t in indices):  # a constant mask: its positions are known
        expanded = []
        for t in indices:
            if isinstance(t, Const) and is_bool_tensor(t):
                expanded += [Const(c.to(torch.int32), f"{L.node.name}_mask{len(expanded)}")
                             for c in torch.nonzero(t.tensor, as_tuple=True)]
            else:
                expanded.append(t)
        indices = expanded
    pos = [i for i, t in enumerate(indices) if t is not None]
    idx = [indices[i] for i in pos]
    if any(is_bool_tensor(t) for t in idx):
        raise UnsupportedOpError(  # the front-end keeps it as a fallback op (tlc.ops.fallback)
            "boolean-mask indexing produces a data-dependent shape, which a static mlprogram cannot hold")
    if pos != list(range(pos[0], pos[-1] + 1)):  # separated: indexed axes first, as torch orders the result
        others = [i for i in range(len(shape)) if i not in pos]
        xv = L.add("transpose", [xv], {"perm": tuple(pos + others)}, name=L.node.name + "_front")
        shape = xv.type.shape
        pos = list(range(len(pos)))
    k, m = pos[0], len(pos)
    dims = shape[k:k + m]
    if all(isinstance(t, Const) for t in idx):
        ts = torch.broadcast_tensors(*[t.tensor.long() for t in idx])
        lin = torch.zeros_like(ts[0])
        for t, d in zip(ts, dims):
            lin = lin * d + torch.where(t < 0, t + d, t)
        lin_np = lin.numpy()
        if m > 1:
            xv = L.add("reshape", [xv], {"shape": shape[:k] + (int(np.prod(dims)),) + shape[k + m:]},
                       name=L.node.name + "_flat")
        return take(L, xv, k, lin_np)
    lin_v = None
    for j, (t, d) in enumerate(zip(idx, dims)):
        t = wrapped_index(L, t, d, f"wrap{j}")
        lin_v = t if lin_v is None else L.add(
            "add", [L.add("mul", [lin_v, L.scalar(d, "int32")], name=L.node.name + "_lin"), L.v(t)],
            name=L.node.name + "_lin")
    if m > 1:
        xv = L.add("reshape", [xv], {"shape": shape[:k] + (int(np.prod(dims)),) + shape[k + m:]}, name=L.node.name + "_flat")
    is_bool = xv.type.dtype == "bool"
    if is_bool:  # MIL gather has no bool domain
        xv = L.cast(xv, "int32")
    g = L.add("gather", [xv, L.v(lin_v)], {"axis": k}, name=L.node.name + ("_int" if is_bool else ""))
    return L.add("cast", [g], {"dtype": "bool"}) if is_bool else g


@lower("aten.sym_size.int")
def _sym_size(L, x, dim):
    """``x.shape[dim]`` of a value whose shape the lowering resolved (a constant mask)."""
    v = L.v(x)
    d = v.type.shape[norm_axis(dim, v.type.rank)]
    if not isinstance(d, int):
        raise UnsupportedOpError("a data-dependent size")
    return d


@lower("aten.masked_select.default")
def _masked_select(L, x, mask):
    """``masked_select`` with a constant mask: the selected flat positions are known, one
    gather (a computed mask has a data-dependent count: declined)."""
    if not isinstance(mask, Const):
        raise UnsupportedOpError("masked_select with a computed mask has a data-dependent output size")
    xv = L.v(x)
    shape = tuple(torch.broadcast_shapes(tuple(xv.type.shape), tuple(mask.tensor.shape)))
    m = mask.tensor.broadcast_to(shape).reshape(-1)
    full = broadcast_to(L, xv, shape, "x")
    flat = L.add("reshape", [full], {"shape": (int(np.prod(shape)),)}, name=L.node.name + "_flat")
    return take(L, flat, 0, torch.nonzero(m).reshape(-1).numpy())


@lower("aten.index_select.default")
def _index_select(L, x, dim, index):
    if rank_of(x) == 0:  # a scalar: index 0 (or -1) of its one element
        return L.add("reshape", [L.v(x)], {"shape": L.out_type().shape})
    ax = norm_axis(dim, rank_of(x))
    n = shape_of(x)[ax]
    if isinstance(index, Const):
        v = index.tensor.long().reshape(-1)
        return take(L, x, ax, torch.where(v < 0, v + n, v).numpy())
    return _index(L, x, [None] * ax + [index])


@lower("aten.gather.default")
def _gather(L, x, dim, index, *, sparse_grad=False):
    """torch.gather -> MIL ``gather_along_axis`` (x first cut to the index's extent on the other
    axes: torch allows a smaller index there, MIL does not)."""
    xv = L.v(x)
    r = xv.type.rank
    if r == 0:
        return L.add("identity", [xv])
    ax = norm_axis(dim, r)
    ishape = shape_of(index)
    if any(ishape[i] != xv.type.shape[i] for i in range(r) if i != ax):
        end = [ishape[i] if i != ax else xv.type.shape[i] for i in range(r)]
        xv = L.add("slice_by_index", [xv], {"begin": (0,) * r, "end": tuple(end), "stride": (1,) * r},
                   name=L.node.name + "_cut")
    is_bool = xv.type.dtype == "bool"
    if is_bool:
        xv = L.cast(xv, "int32")
    g = L.add("gather_along_axis", [xv, wrapped_index(L, index, xv.type.shape[ax])], {"axis": ax},
              name=L.node.name + ("_int" if is_bool else ""))
    return L.add("cast", [g], {"dtype": "bool"}) if is_bool else g


@lower("aten.copy.default", "aten.copy_.default")
def _copy(L, x, src, non_blocking=False):
    """``x.copy_(src)`` functionalized: src broadcast to x's shape, in x's dtype."""
    out = L.out_type()
    return broadcast_to(L, L.cast(src, out.dtype), out.shape, "copy")


@lower("aten.diagonal.default", "aten.diagonal_copy.default")
def _diagonal(L, x, offset=0, dim1=0, dim2=1):
    """The diagonal as one strided slice: dim1/dim2 moved last and flattened, then every
    (cols + 1)-th element from the offset's start (exact, no gather)."""
    xv = L.v(x)
    r = xv.type.rank
    a, b = norm_axis(dim1, r), norm_axis(dim2, r)
    rest = [i for i in range(r) if i not in (a, b)]
    if (a, b) != (r - 2, r - 1):
        xv = L.add("transpose", [xv], {"perm": tuple(rest + [a, b])}, name=L.node.name + "_last")
    shape = xv.type.shape
    rows, cols = shape[-2:]
    length = L.out_type().shape[-1]
    lead = shape[:-2]
    if length == 0:
        return Const(torch.zeros(L.out_type().shape, dtype=dtypes.TORCH[xv.type.dtype]), L.node.name + "_empty")
    flat = L.add("reshape", [xv], {"shape": lead + (rows * cols,)}, name=L.node.name + "_flat")
    start = offset if offset >= 0 else -offset * cols
    end = start + (length - 1) * (cols + 1) + 1
    return L.add("slice_by_index", [flat], {"begin": (0,) * len(lead) + (start,), "end": lead + (end,),
                                           "stride": (1,) * len(lead) + (cols + 1,)})


@lower("aten.unfold.default", "aten.unfold_copy.default")
def _unfold(L, x, dim, size, step):
    """``Tensor.unfold``: windows of ``size`` every ``step`` along ``dim`` -> one ``gather`` with
    a constant [windows, size] index, the window axis then moved last."""
    xv = L.v(x)
    r = xv.type.rank
    if r == 0:
        return L.add("reshape", [xv], {"shape": (1,)})
    ax = norm_axis(dim, r)
    n = xv.type.shape[ax]
    nwin = (n - size) // step + 1
    idx = (np.arange(nwin)[:, None] * step + np.arange(size)[None, :]).astype(np.int32)
    g = take(L, xv, ax, idx, name=L.node.name + "_win")
    perm = tuple(i for i in range(r + 1) if i != ax + 1) + (ax + 1,)
    return L.add("transpose", [g], {"perm": perm})


@lower("aten.full_like.default", "aten.zeros_like.default", "aten.ones_like.default", "aten.empty_like.default",
       "aten.new_zeros.default", "aten.new_ones.default", "aten.new_full.default", "aten.new_empty.default",
       "aten.new_empty_strided.default", "aten.empty_strided.default", "aten.empty.memory_format")
def _full_like(L, x, *args, **kwargs):
    """Tensors whose values do not depend on the input: a constant of torch's result type (the
    ``empty`` family as zeros)."""
    out = L.out_type()
    name = str(L.node.target)
    fill = 0
    if "full" in name:
        fill = args[-1] if "new_full" in name else args[0]
    elif "ones" in name:
        fill = 1
    return Const(torch.full(out.shape, fill, dtype=dtypes.TORCH[out.dtype]), L.node.name)


@lower("aten.flatten.using_ints")
def _flatten(L, x, start_dim=0, end_dim=-1):
    return L.add("reshape", [x], {"shape": L.out_type().shape})
