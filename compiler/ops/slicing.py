"""Slicing and reversal: ``slice_by_index`` and ``reverse``.

Semantics: coremltools MIL ``tensor_transformation.py`` (``slice_by_index``) and
``tensor_operation.py`` (``reverse``), iOS15 opset. tlc's ``slice_by_index`` holds a normalized
form (:func:`slice_from_mil`): non-negative ``begin`` <= ``end``, positive strides, the axes a
negative MIL stride walks backwards in ``flip``, then ``squeeze_mask``. Torch kernels return views
where torch can, as the NumPy kernels do.
"""
from __future__ import annotations

import numpy as np
from .._lazy import torch

from ..errors import IRError
from ..dtypes import TensorType
from .table import COMMUTES, flops_none, register
from .norm import norm_axes


def _ca_slice(ctx, a, ins, node):
    x = ins[0]
    y = ctx.ca.slice_(x, list(a["begin"]), list(a["end"]), list(a["stride"]))
    return ctx.reshaped(y)  # squeeze_mask


def _infer_slice(in_types, attrs):
    x = in_types[0]
    b, e, s = attrs["begin"], attrs["end"], attrs["stride"]
    if not len(b) == len(e) == len(s) == x.rank:
        raise IRError(f"slice begin/end/stride must have {x.rank} entries")
    shape = []
    for i in range(x.rank):
        if not (0 <= b[i] <= e[i] <= x.shape[i]) or s[i] < 1:
            raise IRError(f"slice [{b[i]}:{e[i]}:{s[i]}] out of range for axis {i} of size {x.shape[i]}")
        shape.append(len(range(b[i], e[i], s[i])))
    if any(not 0 <= a < x.rank for a in attrs.get("flip") or ()):
        raise IRError(f"slice flip axes {attrs.get('flip')} out of range for rank {x.rank}")
    sq = attrs.get("squeeze_mask")
    if sq:
        shape = [d for d, q in zip(shape, sq) if not q]
    return [TensorType(x.dtype, tuple(shape))]


def _slice(attrs, x):
    """MIL ``slice_by_index`` (tensor_transformation.py) in tlc's normalized form: non-negative,
    clamped ``begin`` <= ``end``, positive ``stride`` per axis, then the axes in ``flip`` reversed
    (a negative MIL stride), then ``squeeze_mask``."""
    y = x[tuple(slice(b, e, s) for b, e, s in zip(attrs["begin"], attrs["end"], attrs["stride"]))]
    if attrs.get("flip"):
        y = np.flip(y, axis=tuple(attrs["flip"]))
    sq = attrs.get("squeeze_mask")
    if sq:
        y = y.reshape([d for d, q in zip(y.shape, sq) if not q])
    return y


def _t_slice(attrs, x):
    y = x[tuple(slice(b, e, s) for b, e, s in zip(attrs["begin"], attrs["end"], attrs["stride"]))]
    if attrs.get("flip"):
        y = torch.flip(y, tuple(attrs["flip"]))
    sq = attrs.get("squeeze_mask")
    if sq:
        y = y.reshape([d for d, q in zip(y.shape, sq) if not q])
    return y


def _emit_slice(ctx, a, ins, nm):
    if a.get("flip"):
        y = ctx.mb.slice_by_index(x=ins[0], begin=list(a["begin"]), end=list(a["end"]), stride=list(a["stride"]),
                                  name=nm + "_fwd")
        y = ctx.mb.reverse(x=y, axes=list(a["flip"]), name=nm + "_rev" if a.get("squeeze_mask") else nm)
        if a.get("squeeze_mask"):
            y = ctx.mb.squeeze(x=y, axes=[i for i, q in enumerate(a["squeeze_mask"]) if q], name=nm)
        return y
    kw = {"squeeze_mask": list(a["squeeze_mask"])} if a.get("squeeze_mask") else {}
    return ctx.mb.slice_by_index(
        x=ins[0], begin=list(a["begin"]), end=list(a["end"]), stride=list(a["stride"]), name=nm, **kw
    )


def slice_from_mil(v):
    """MIL ``slice_by_index`` (iOS15 tensor_transformation.py) to the IR's normalized form.

    ``begin_mask``/``end_mask`` take the full range; a ``squeeze_mask`` axis keeps only ``begin``;
    a negative index i becomes max(0, i + n) — coremltools' type inference
    (``solve_slice_by_index_shape`` in mil/ops/defs/_utils.py), which fixes the declared output
    shape, so ``end=-8`` on a size-7 axis with a negative stride stops *before* element 0 (NumPy
    would include it). A negative stride walks from ``begin`` down to ``end`` (exclusive); the IR
    slices forwards and records the axis in ``flip``.
    """
    x = v["x"]
    r = x.ndim
    begin = [int(b) for b in v["begin"]]
    end = [int(e) for e in v["end"]]
    stride = [int(s) for s in v["stride"]] if v.get("stride") is not None else [1] * r
    bm = v.get("begin_mask") if v.get("begin_mask") is not None else [False] * r
    em = v.get("end_mask") if v.get("end_mask") is not None else [False] * r
    sq = v.get("squeeze_mask") if v.get("squeeze_mask") is not None else [False] * r
    b2, e2, s2, flip = [], [], [], []
    for i in range(r):
        n, st = x.shape[i], stride[i]
        b = None if bm[i] else (max(0, begin[i] + n) if begin[i] < 0 else begin[i])
        e = None if em[i] else (max(0, end[i] + n) if end[i] < 0 else end[i])
        if sq[i]:
            lo = b or 0
            b2.append(lo), e2.append(lo + 1), s2.append(1)
            continue
        if st > 0:
            idx = range(0 if b is None else min(b, n), n if e is None else min(e, n), st)
        else:
            idx = range(n - 1 if b is None else min(b, n - 1), -1 if e is None else e, st)
        if st > 0:
            b2.append(idx.start if idx else 0), e2.append(idx[-1] + 1 if idx else 0), s2.append(st)
        else:  # walk the same elements forwards, then reverse the axis
            b2.append(idx[-1] if idx else 0), e2.append(idx[0] + 1 if idx else 0), s2.append(-st)
            flip.append(i)
    attrs = {"begin": tuple(b2), "end": tuple(e2), "stride": tuple(s2)}
    if flip:
        attrs["flip"] = tuple(flip)
    if any(sq):
        attrs["squeeze_mask"] = tuple(bool(q) for q in sq)
    return [x], attrs


def _slice_is_noop(a, t) -> bool:
    """A full, forward, stride-1 slice that squeezes nothing returns its input."""
    return (tuple(a["begin"]) == (0,) * t[0].rank and tuple(a["end"]) == t[0].shape and set(a["stride"]) <= {1}
            and not a.get("flip") and not any(a.get("squeeze_mask") or ()))


register("slice_by_index", scale=COMMUTES, emit_coreai=_ca_slice, coreai_limit=lambda i, o, a: "with flipped axes" if a.get("flip") else None,
         is_noop=_slice_is_noop, infer=_infer_slice, numpy=_slice, emit_mil=_emit_slice, flops=flops_none,
         from_mil=slice_from_mil,
         torch=_t_slice)


def _infer_reverse(in_types, attrs):
    x = in_types[0]
    norm_axes(attrs["axes"], x.rank) if attrs.get("axes") is not None else None
    return [x]


def _reverse(attrs, x):
    """MIL ``reverse`` (tensor_operation.py): reverse the order along ``axes`` (all if None)."""
    axes = attrs.get("axes")
    return np.flip(x, axis=None if axes is None else tuple(axes))


register(
    "reverse",
    scale=COMMUTES,
    infer=_infer_reverse,
    numpy=_reverse,
    emit_mil=lambda ctx, a, ins, nm: ctx.mb.reverse(x=ins[0], axes=list(a["axes"]) if a.get("axes") is not None else None,
                                                    name=nm),
    # Core AI's dims are its index type: a Python list (or int32) builds it, uint32 does not
    emit_coreai=lambda ctx, a, ins, node: ctx.ca.reverse(ins[0], list(range(node.inputs[0].type.rank)) if a.get("axes") is None
                                                         else [int(v) for v in norm_axes(a["axes"], node.inputs[0].type.rank)]),
    flops=flops_none,
    torch=lambda a, x: torch.flip(x, tuple(range(x.dim())) if a.get("axes") is None else tuple(a["axes"])),
)
