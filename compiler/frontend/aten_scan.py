"""ATen -> IR lowerings of scans, order statistics and binning (registered into
:data:`tlc.frontend.common.LOWERINGS`): ``cumprod``, ``cummax``/``cummin``, ``logcumsumexp``,
``median``/``kthvalue``, ``searchsorted``/``bucketize``, ``histc``.

MIL has only ``cumsum`` (iOS15 tensor_operation.py). Every associative scan is written as the
Hillis-Steele parallel prefix (W. D. Hillis, G. L. Steele, "Data parallel algorithms", CACM
29(12), 1986): ceil(log2 n) rounds, round k combining each element with the one 2^k before it
(an identity element shifted in at the front): O(n log n) work in O(log n) whole-tensor MIL ops,
exact for max/min and a reordering of the products/sums for the others (fp32 rounding only).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import UnsupportedOpError
from .common import Const, lower, narrow, norm_axis, sub_name


def _shifted(L, v, ax: int, d: int, fill, tag: str):
    """``v`` shifted by ``d`` along ``ax``: the first d entries are ``fill`` (a scalar), the rest
    v[..., :-d, ...] (slice + concat with a constant block)."""
    from ..ir import DTYPES
    shape = list(v.type.shape)
    n = shape[ax]
    shape[ax] = min(d, n)
    block = Const(torch.from_numpy(np.full(shape, fill, DTYPES[v.type.dtype])), sub_name(L, tag + "_fill"))
    if d >= n:
        return L.v(block)
    head = narrow(L, v, ax, 0, n - d, tag + "_head")
    return L.add("concat", [L.v(block), head], {"axis": ax}, name=sub_name(L, tag))


def scan(L, values: list, ax: int, combine, fills: list, tag="scan"):
    """Inclusive Hillis-Steele scan of the tuple ``values`` (IR values of one shape) along ``ax``:
    ``combine(L, earlier, later, k) -> tuple`` merges the state of the element 2^k before into each
    element; ``fills`` are the identity elements shifted in."""
    n = values[0].type.shape[ax]
    state = list(values)
    for k in range(max(0, math.ceil(math.log2(n))) if n > 1 else 0):
        d = 1 << k
        earlier = [_shifted(L, v, ax, d, f, f"{tag}{k}_{i}") for i, (v, f) in enumerate(zip(state, fills))]
        state = list(combine(L, earlier, state, k))
    return state


def _float_or_int(L, x):
    v = L.v(x)
    dt = L.out_type(0 if isinstance(L.node.meta.get("val"), (tuple, list)) else None).dtype
    if dt == "bool":
        dt = "int32"
    return L.cast(v, dt)


@lower("aten.cumprod.default")
def _cumprod(L, x, dim, *, dtype=None):
    """cumprod: the scan of ``mul`` (identity 1)."""
    v = _float_or_int(L, x)
    if v.type.rank == 0:
        return L.add("identity", [v])
    ax = norm_axis(dim, v.type.rank)
    (y,) = scan(L, [v], ax, lambda L, e, s, k: [L.add("mul", [e[0], s[0]], name=sub_name(L, f"mul{k}"))], [1])
    return y


def _cum_extreme(greater: bool):
    def fn(L, x, dim):
        """cummax / cummin with torch's indices: the scan of (value, index) pairs keeping the later
        element when it is at least as large (small), NaN winning once seen, as torch does."""
        v = L.v(x)
        dt = v.type.dtype
        if v.type.rank == 0:
            return (L.add("identity", [v]), Const(torch.zeros((), dtype=torch.int32), sub_name(L, "i0")))
        work = L.cast(v, "int32") if dt == "bool" else v
        ax = norm_axis(dim, v.type.rank)
        shape = work.type.shape
        idx = np.broadcast_to(np.arange(shape[ax]).reshape([-1 if i == ax else 1 for i in range(len(shape))]),
                              shape).astype(np.int32)
        iv = L.v(Const(torch.from_numpy(np.ascontiguousarray(idx)), sub_name(L, "pos")))
        is_float = work.type.dtype in ("fp32", "fp16")
        worst = (float("-inf") if greater else float("inf")) if is_float else (-2 ** 31 if greater else 2 ** 31 - 1)

        def combine(L, e, s, k):
            cmp = "greater_equal" if greater else "less_equal"
            take = L.add(cmp, [s[0], e[0]], name=sub_name(L, f"ge{k}"))
            if is_float:
                snan = L.add("not_equal", [s[0], s[0]], name=sub_name(L, f"snan{k}"))
                enan = L.add("not_equal", [e[0], e[0]], name=sub_name(L, f"enan{k}"))
                take = L.add("logical_or", [snan, L.add("logical_and", [take, L.add("logical_not", [enan], name=sub_name(L, f"en{k}"))],
                                                        name=sub_name(L, f"ok{k}"))], name=sub_name(L, f"take{k}"))
            return [L.add("select", [take, s[0], e[0]], name=sub_name(L, f"v{k}")),
                    L.add("select", [take, s[1], e[1]], name=sub_name(L, f"i{k}"))]

        val, ind = scan(L, [work, iv], ax, combine, [worst, 0])
        return (L.cast(val, dt), ind)

    return fn


lower("aten.cummax.default")(_cum_extreme(True))
lower("aten.cummin.default")(_cum_extreme(False))


@lower("aten.logcumsumexp.default")
def _logcumsumexp(L, x, dim):
    """logcumsumexp: the scan of log(e^a + e^b) = m + log(e^(a-m) + e^(b-m)), m = max(a, b)
    (-inf + -inf stays -inf)."""
    v = L.cast(x, L.out_type().dtype)
    if v.type.rank == 0:
        return L.add("identity", [v])
    dt = v.type.dtype
    ax = norm_axis(dim, v.type.rank)

    def combine(L, e, s, k):
        a, b = e[0], s[0]
        m = L.add("maximum", [a, b], name=sub_name(L, f"m{k}"))
        ea = L.add("exp", [L.add("sub", [a, m], name=sub_name(L, f"da{k}"))], name=sub_name(L, f"ea{k}"))
        eb = L.add("exp", [L.add("sub", [b, m], name=sub_name(L, f"db{k}"))], name=sub_name(L, f"eb{k}"))
        r = L.add("add", [m, L.add("log", [L.add("add", [ea, eb], name=sub_name(L, f"s{k}"))], {"epsilon": 0.0},
                                   name=sub_name(L, f"l{k}"))], name=sub_name(L, f"r{k}"))
        ninf = L.add("equal", [m, L.scalar(float("-inf"), dt)], name=sub_name(L, f"ninf{k}"))
        return [L.add("select", [ninf, m, r], name=sub_name(L, f"v{k}"))]

    (y,) = scan(L, [v], ax, combine, [float("-inf")])
    return y


# ------------------------------------------------------------------------- order statistics


def _kth(L, x, k: int, dim, keepdim: bool):
    """(values, int32 indices) of the k-th smallest (0-based) along ``dim``: MIL ``topk``
    ascending with k+1, the last kept."""
    v = L.v(x)
    if v.type.rank == 0:
        return L.add("identity", [v]), Const(torch.zeros((), dtype=torch.int32), sub_name(L, "i0"))
    work = L.cast(v, "int32") if v.type.dtype == "bool" else v
    ax = norm_axis(dim, v.type.rank)
    vals, idx = L.add("topk", [work], {"k": k + 1, "axis": ax, "ascending": True}, name=sub_name(L, "topk"))
    sv, si = narrow(L, vals, ax, k, 1, "kv"), narrow(L, idx, ax, k, 1, "ki")
    if not keepdim:
        sv = L.add("squeeze", [sv], {"axes": (ax,)}, name=sub_name(L, "vals"))
        si = L.add("squeeze", [si], {"axes": (ax,)}, name=sub_name(L, "idx"))
    return L.cast(sv, v.type.dtype), si


@lower("aten.median.default")
def _median(L, x):
    """torch's median: the lower median, (n - 1) // 2-th smallest of all elements (NaN: see MIL
    topk; torch returns NaN when any element is NaN)."""
    v = L.v(x)
    flat = L.add("reshape", [v], {"shape": (v.type.size,)}, name=sub_name(L, "flat")) if v.type.rank != 1 else v
    val, _ = _kth(L, flat, (v.type.size - 1) // 2, 0, False)
    return val


@lower("aten.median.dim")
def _median_dim(L, x, dim=0, keepdim=False):
    v = L.v(x)
    n = v.type.shape[norm_axis(dim, v.type.rank)] if v.type.rank else 1
    return _kth(L, v, (n - 1) // 2, dim, keepdim)


@lower("aten.nanmedian.default", "aten.nanmedian.dim")
def _nanmedian(L, x, dim=None, keepdim=False):
    """nanmedian: the lower median of the non-NaN values along ``dim`` (all: flattened). NaNs are
    sorted last as +inf; the median's position (count - 1) // 2 then differs per row, read with
    ``gather_along_axis`` (static shapes); an all-NaN row gives NaN, as torch."""
    v = L.v(x)
    whole = L.node.target == torch.ops.aten.nanmedian.default
    if whole or v.type.rank == 0:
        v = L.add("reshape", [v], {"shape": (max(v.type.size, 1),)}, name=sub_name(L, "flat"))
        dim = 0
    ax = norm_axis(dim, v.type.rank)
    dt = v.type.dtype
    nan = L.add("not_equal", [v, v], name=sub_name(L, "nan"))
    key = L.add("select", [nan, L.scalar(float("inf"), dt), v], name=sub_name(L, "key"))
    n = v.type.shape[ax]
    vals, idx = L.add("topk", [key], {"k": n, "axis": ax, "ascending": True}, name=sub_name(L, "sort"))
    cnt = L.add("reduce_sum", [L.cast(L.add("logical_not", [nan], name=sub_name(L, "ok")), "int32")],
                {"axes": (ax,), "keep_dims": True}, name=sub_name(L, "cnt"))
    k = L.add("floor_div", [L.add("maximum", [L.add("sub", [cnt, L.scalar(1, "int32")], name=sub_name(L, "c1")),
                                              L.scalar(0, "int32")], name=sub_name(L, "c0")), L.scalar(2, "int32")],
              name=sub_name(L, "k"))
    med = L.add("gather_along_axis", [vals, k], {"axis": ax}, name=sub_name(L, "med"))
    mi = L.add("gather_along_axis", [idx, k], {"axis": ax}, name=sub_name(L, "medi"))
    med = L.add("select", [L.add("equal", [cnt, L.scalar(0, "int32")], name=sub_name(L, "none")),
                           L.scalar(float("nan"), dt), med], name=sub_name(L, "value"))
    if whole:
        return L.add("reshape", [med], {"shape": ()})
    if not keepdim:
        med = L.add("squeeze", [med], {"axes": (ax,)}, name=sub_name(L, "values"))
        mi = L.add("squeeze", [mi], {"axes": (ax,)}, name=sub_name(L, "indices"))
    return (med, mi)


@lower("aten.kthvalue.default")
def _kthvalue(L, x, k, dim=-1, keepdim=False):
    return _kth(L, x, int(k) - 1, dim, keepdim)


# -------------------------------------------------------------------------------- binning


def _count_less(L, seq, vals, right: bool, tag: str):
    """For each value, how many entries of the sorted last axis of ``seq`` are < it (<= with
    ``right``): the insertion point, as an int32 sum of comparisons ([..., K, M] broadcast)."""
    s = L.add("expand_dims", [seq], {"axes": (-2,)}, name=sub_name(L, tag + "_s"))
    v = L.add("expand_dims", [vals], {"axes": (-1,)}, name=sub_name(L, tag + "_v"))
    c = L.add("less_equal" if right else "less", [s, v], name=sub_name(L, tag + "_cmp"))
    return L.add("reduce_sum", [L.cast(c, "int32")], {"axes": (-1,), "keep_dims": False}, name=sub_name(L, tag))


@lower("aten.searchsorted.Tensor", "aten.searchsorted.Scalar")
def _searchsorted(L, seq, values, *, out_int32=False, right=False, side=None, sorter=None):
    """searchsorted: the count of sequence entries below each value (static shapes: an
    [..., K, M] comparison)."""
    if sorter is not None:
        raise UnsupportedOpError("searchsorted with sorter")
    right = right or side == "right"
    s = L.v(seq)
    dt = s.type.dtype
    v = L.scalar(values, dt) if isinstance(values, (int, float)) else L.cast(values, dt)
    scalar = v.type.rank == 0
    if scalar:
        v = L.add("reshape", [v], {"shape": (1,)}, name=sub_name(L, "v1"))
    r = _count_less(L, s, v, right, "pos")
    return L.add("reshape", [r], {"shape": ()}) if scalar else r


@lower("aten.bucketize.Tensor", "aten.bucketize.Scalar")
def _bucketize(L, x, boundaries, *, out_int32=False, right=False):
    """bucketize(x, boundaries): boundaries[i-1] < x <= boundaries[i] -> i (right: <= ... <)."""
    b = L.v(boundaries)
    xv = L.scalar(x, b.type.dtype) if isinstance(x, (int, float)) else L.cast(x, b.type.dtype)
    shape = xv.type.shape
    flat = L.add("reshape", [xv], {"shape": (max(xv.type.size, 1),)}, name=sub_name(L, "flat"))
    r = _count_less(L, b, flat, right, "pos")
    return L.add("reshape", [r], {"shape": shape})


@lower("aten.histc.default")
def _histc(L, x, bins=100, min=0, max=0):
    """histc: counts in ``bins`` equal bins over [min, max] (the data's own min/max when both are
    0, as torch), the top edge in the last bin, values outside ignored. One-hot comparison of each
    element's bin with every bin index, summed: [N, bins] work."""
    v = L.v(x)
    dt = v.type.dtype
    flat = L.add("reshape", [v], {"shape": (max_(v.type.size, 1),)}, name=sub_name(L, "flat"))
    if min == 0 and max == 0:
        lo = L.add("reduce_min", [flat], {"axes": (0,), "keep_dims": False}, name=sub_name(L, "lo"))
        hi = L.add("reduce_max", [flat], {"axes": (0,), "keep_dims": False}, name=sub_name(L, "hi"))
    else:
        lo, hi = L.scalar(float(min), dt), L.scalar(float(max), dt)
    width = L.add("sub", [hi, lo], name=sub_name(L, "width"))
    same = L.add("equal", [width, L.scalar(0.0, dt)], name=sub_name(L, "same"))
    lo = L.add("select", [same, L.add("sub", [lo, L.scalar(1.0, dt)], name=sub_name(L, "lo1")), lo], name=sub_name(L, "lo_s"))
    hi = L.add("select", [same, L.add("add", [hi, L.scalar(1.0, dt)], name=sub_name(L, "hi1")), hi], name=sub_name(L, "hi_s"))
    width = L.add("sub", [hi, lo], name=sub_name(L, "w"))
    pos = L.add("mul", [L.add("sub", [flat, lo], name=sub_name(L, "off")),
                        L.add("real_div", [L.scalar(float(bins), dt), width], name=sub_name(L, "scale"))], name=sub_name(L, "pos"))
    b = L.cast(L.add("floor", [pos], name=sub_name(L, "fl")), "int32")
    top = L.add("equal", [flat, hi], name=sub_name(L, "top"))
    b = L.add("select", [top, L.scalar(bins - 1, "int32"), b], name=sub_name(L, "bin"))
    inside = L.add("logical_and", [L.add("greater_equal", [flat, lo], name=sub_name(L, "ge")),
                                   L.add("less_equal", [flat, hi], name=sub_name(L, "le"))], name=sub_name(L, "in"))
    b = L.add("select", [inside, b, L.scalar(-1, "int32")], name=sub_name(L, "binv"))
    grid = Const(torch.arange(bins, dtype=torch.int32).reshape(1, bins), sub_name(L, "bins"))
    hit = L.add("equal", [L.add("expand_dims", [b], {"axes": (-1,)}, name=sub_name(L, "be")), L.v(grid)], name=sub_name(L, "hit"))
    counts = L.add("reduce_sum", [L.cast(hit, "int32")], {"axes": (0,), "keep_dims": False}, name=sub_name(L, "counts"))
    return L.cast(counts, L.out_type().dtype)


def max_(a, b):
    return a if a > b else b


__all__ = ["scan"]
