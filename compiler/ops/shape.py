"""Constants and data movement: ``const``, ``identity``, ``reshape``, ``transpose``, ``concat``,
``split``, ``slice_by_index``, ``expand_dims``, ``squeeze``, ``gather``, ``tile``, ``pad``.

Semantics: coremltools MIL ``tensor_transformation.py``, ``tensor_operation.py`` and
``scatter_gather.py`` (iOS15 opset; iOS17 adds ``validate_indices`` to ``gather``). All shapes
and indices are static attributes in tlc's IR. Torch kernels return views where torch can (reshape,
permute, slicing), as the NumPy kernels do.
"""
from __future__ import annotations

import numpy as np
from .._lazy import F, torch

from ..errors import IRError
from ..ir import DTYPES, TensorType, dtype_of
from . import flops_none, mil_attr, register
from .norm import norm_axes


def _no_ane(reason):
    return lambda i, o, a: reason


# ---------------------------------------------------------------------------------------- const


def _const(attrs):
    """MIL ``const``: the value stored in ``val``."""
    return attrs["val"]



# ------------------------------------------------------------------ Core AI forms (tlc.coreai_emit)


def _ca_reshape(ctx, a, ins, node):
    return ctx.reshaped(ins[0])


def _ca_concat(ctx, a, ins, node):
    return ctx.ca.concat(a["axis"] % node.out.type.rank, list(ins))


def _ca_split(ctx, a, ins, node):
    return ctx.ca.split(ins[0], ctx.u32(a["split_sizes"]), a["axis"] % node.inputs[0].type.rank)


def _ca_slice(ctx, a, ins, node):
    x = ins[0]
    y = ctx.ca.slice_(x, list(a["begin"]), list(a["end"]), list(a["stride"]))
    return ctx.reshaped(y)  # squeeze_mask


def _ca_pad(ctx, a, ins, node):
    x = node.inputs[0].type
    p = list(a["pad"])
    spec = [0] * (2 * (x.rank - len(p) // 2)) + p
    val = np.asarray(a.get("constant_val", 0.0), DTYPES[x.dtype])
    return ctx.ca.pad(ins[0], np.asarray(spec, np.uint32), ctx.const(val))


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

register(
    "const",
    infer=lambda i, a: [TensorType(dtype_of(a["val"]), a["val"].shape)],
    numpy=_const,
    emit_mil=lambda ctx, a, ins, nm: ctx.mb.const(val=a["val"], name=nm),
    flops=flops_none,
    torch=lambda a: torch.from_numpy(np.array(a["val"])),  # host tensor; executors move it once
)

register(
    "identity",
    emit_coreai=lambda ctx, a, ins, node: ins[0],
    is_noop=lambda a, t: True,
    elementwise="unary",
    doc="MIL ``identity`` (tensor_operation.py): returns x.",
    infer=lambda i, a: [i[0]],
    numpy=lambda a, x: x,
    emit_mil=lambda ctx, a, ins, nm: ctx.mb.identity(x=ins[0], name=nm),
    flops=flops_none,
    torch=lambda a, x: x,
)


# ------------------------------------------------------------------------------ reshape & co.


def _infer_reshape(in_types, attrs):
    x = in_types[0]
    shape = tuple(attrs["shape"])
    if any(d < 0 for d in shape) or int(np.prod(shape, dtype=np.int64)) != x.size:
        raise IRError(f"cannot reshape {list(x.shape)} to {list(shape)} (static, non-negative sizes required)")
    return [TensorType(x.dtype, shape)]


def _reshape_from_mil(v):
    """MIL ``reshape`` shape entries: -1 is inferred, 0 copies the input's dimension at the same
    position counted from the right, 1 past the input's rank (iOS17 ``replace_zeros_in_shape``;
    iOS15/16 allow a 0 only when the ranks match, where both rules agree)."""
    x = v["x"]
    shape = [int(d) for d in v["shape"]]
    if 0 in shape:
        n = len(shape)
        shape = [(x.shape[x.ndim - n + i] if x.ndim - n + i >= 0 else 1) if d == 0 else d for i, d in enumerate(shape)]
    if -1 in shape:
        rest = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
        shape[shape.index(-1)] = x.size // max(rest, 1)
    return [x], {"shape": tuple(shape)}


register(
    "reshape",
    emit_coreai=_ca_reshape,
    is_noop=lambda a, t: tuple(a["shape"]) == t[0].shape,
    from_mil=_reshape_from_mil,
    doc="MIL ``reshape`` (tensor_transformation.py): row-major reshape to the static ``shape``.",
    infer=_infer_reshape,
    numpy=lambda a, x: x.reshape(a["shape"]),
    emit_mil=lambda ctx, a, ins, nm: ctx.mb.reshape(x=ins[0], shape=np.array(a["shape"], np.int32), name=nm),
    flops=flops_none,
    torch=lambda a, x: x.reshape(a["shape"]),
)


def _infer_transpose(in_types, attrs):
    x = in_types[0]
    perm = tuple(attrs["perm"])
    if sorted(perm) != list(range(x.rank)):
        raise IRError(f"perm {list(perm)} is not a permutation of {x.rank} axes")
    return [TensorType(x.dtype, tuple(x.shape[p] for p in perm))]


register(
    "transpose",
    emit_coreai=lambda ctx, a, ins, node: ctx.ca.transpose(ins[0], ctx.u32(a["perm"])),
    is_noop=lambda a, t: tuple(a["perm"]) == tuple(range(t[0].rank)),
    doc="MIL ``transpose`` (tensor_transformation.py): permute axes by ``perm``.",
    infer=_infer_transpose,
    numpy=lambda a, x: np.transpose(x, a["perm"]),
    emit_mil=lambda ctx, a, ins, nm: ctx.mb.transpose(x=ins[0], perm=list(a["perm"]), name=nm),
    flops=flops_none,
    torch=lambda a, x: x.permute(a["perm"]),
)


def _expanded_shape(shape: tuple, axes) -> tuple:
    """``shape`` with size-1 axes inserted at ``axes`` (positions in the output)."""
    out = list(shape)
    for a in norm_axes(axes, len(shape) + len(axes)):
        out.insert(a, 1)
    return tuple(out)


def _infer_expand_dims(in_types, attrs):
    x = in_types[0]
    return [TensorType(x.dtype, _expanded_shape(x.shape, attrs["axes"]))]


register(
    "expand_dims",
    emit_coreai=_ca_reshape,
    is_noop=lambda a, t: not a["axes"],
    doc="MIL ``expand_dims`` (tensor_transformation.py): insert size-1 axes at ``axes`` (output positions).",
    infer=_infer_expand_dims,
    numpy=lambda a, x: np.expand_dims(x, tuple(norm_axes(a["axes"], x.ndim + len(a["axes"])))),
    emit_mil=lambda ctx, a, ins, nm: ctx.mb.expand_dims(x=ins[0], axes=list(a["axes"]), name=nm),
    flops=flops_none,
    torch=lambda a, x: x.reshape(_expanded_shape(tuple(x.shape), a["axes"])),
)


def _infer_squeeze(in_types, attrs):
    x = in_types[0]
    axes = norm_axes(attrs["axes"], x.rank)
    if any(x.shape[a] != 1 for a in axes):
        raise IRError(f"squeeze axes {list(axes)} of {list(x.shape)} are not all 1")
    return [TensorType(x.dtype, tuple(d for i, d in enumerate(x.shape) if i not in axes))]


register(
    "squeeze",
    emit_coreai=_ca_reshape,
    is_noop=lambda a, t: not a["axes"],
    from_mil=lambda v: ([v["x"]], {"axes": mil_attr(v.get("axes")) if v.get("axes") is not None
                                   else tuple(i for i, d in enumerate(v["x"].shape) if d == 1)}),
    doc="MIL ``squeeze`` (tensor_transformation.py): drop the size-1 ``axes``.",
    infer=_infer_squeeze,
    numpy=lambda a, x: np.squeeze(x, axis=norm_axes(a["axes"], x.ndim)),
    emit_mil=lambda ctx, a, ins, nm: ctx.mb.squeeze(x=ins[0], axes=list(a["axes"]), name=nm),
    flops=flops_none,
    torch=lambda a, x: x.reshape([d for i, d in enumerate(x.shape) if i not in norm_axes(a["axes"], x.dim())]),
)


def _infer_concat(in_types, attrs):
    x = in_types[0]
    ax = norm_axes([attrs["axis"]], x.rank)[0]
    dts = {t.dtype for t in in_types}
    if len(dts) != 1:
        raise IRError(f"concat operands have different dtypes {sorted(dts)}")
    if attrs.get("interleave") and len({t.shape[ax] for t in in_types}) != 1:
        raise IRError("concat with interleave needs equal sizes along the axis")
    for t in in_types:
        if t.rank != x.rank or any(t.shape[i] != x.shape[i] for i in range(x.rank) if i != ax):
            raise IRError(f"concat shapes differ off axis {ax}: {[list(t.shape) for t in in_types]}")
    shape = list(x.shape)
    shape[ax] = sum(t.shape[ax] for t in in_types)
    return [TensorType(x.dtype, tuple(shape))]


def _concat(attrs, *xs):
    """MIL ``concat`` (tensor_operation.py): join ``values`` along ``axis``; with ``interleave``
    the inputs' slices alternate (A0, B0, A1, B1, ...; all inputs equally long on ``axis``)."""
    ax = attrs["axis"] % xs[0].ndim
    if not attrs.get("interleave", False):
        return np.concatenate(xs, axis=ax)
    st = np.stack(xs, axis=ax + 1)
    return st.reshape(xs[0].shape[:ax] + (-1,) + xs[0].shape[ax + 1:])


def _t_concat(attrs, *xs):
    ax = attrs["axis"] % xs[0].dim()
    if not attrs.get("interleave", False):
        return torch.cat(xs, ax)
    return torch.stack(xs, ax + 1).reshape(xs[0].shape[:ax] + (-1,) + xs[0].shape[ax + 1:])


register(
    "concat",
    emit_coreai=_ca_concat,
    is_noop=lambda a, t: len(t) == 1,
    infer=_infer_concat,
    numpy=_concat,
    mil_inputs=("values",),
    from_mil=lambda v: (list(v["values"]), {"axis": int(v["axis"]), "interleave": bool(v.get("interleave", False))}),
    emit_mil=lambda ctx, a, ins, nm: ctx.mb.concat(values=list(ins), axis=a["axis"], interleave=a.get("interleave", False), name=nm),
    flops=flops_none,
    torch=_t_concat,
)


def _infer_split(in_types, attrs):
    x = in_types[0]
    ax = norm_axes([attrs["axis"]], x.rank)[0]
    sizes = tuple(attrs["split_sizes"])
    if sum(sizes) != x.shape[ax]:
        raise IRError(f"split sizes {list(sizes)} do not sum to {x.shape[ax]}")
    return [TensorType(x.dtype, x.shape[:ax] + (s,) + x.shape[ax + 1:]) for s in sizes]


def _split(attrs, x):
    """MIL ``split`` (tensor_operation.py) into ``split_sizes`` along ``axis``."""
    return tuple(np.split(x, np.cumsum(attrs["split_sizes"])[:-1], axis=attrs["axis"]))


def _emit_split(ctx, a, ins, nm):
    return tuple(ctx.mb.split(x=ins[0], split_sizes=list(a["split_sizes"]), axis=a["axis"], name=nm))


def _split_from_mil(v):
    """MIL ``split``: ``split_sizes``, or ``num_splits`` equal parts."""
    x = v["x"]
    ax = int(v["axis"]) % x.ndim
    sizes = v.get("split_sizes")
    if sizes is None:
        n = int(v["num_splits"])
        sizes = [x.shape[ax] // n] * n
    return [x], {"axis": ax, "split_sizes": tuple(int(s) for s in sizes)}


register("split", emit_coreai=_ca_split, infer=_infer_split, numpy=_split, emit_mil=_emit_split, flops=flops_none, from_mil=_split_from_mil,
         torch=lambda a, x: tuple(torch.split(x, list(a["split_sizes"]), a["axis"])))


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


register("slice_by_index", emit_coreai=_ca_slice, coreai_limit=lambda i, o, a: "with flipped axes" if a.get("flip") else None,
         is_noop=_slice_is_noop, infer=_infer_slice, numpy=_slice, emit_mil=_emit_slice, flops=flops_none,
         from_mil=slice_from_mil,
         torch=_t_slice)


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
    ane=_no_ane("gather is not run on the ANE (hollance/neural-engine unsupported-layers.md)"),
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


def _infer_tile(in_types, attrs):
    x = in_types[0]
    reps = tuple(attrs["reps"])
    if len(reps) != x.rank or any(r < 1 for r in reps):
        raise IRError(f"tile reps {list(reps)} must be {x.rank} positive ints")
    return [TensorType(x.dtype, tuple(d * r for d, r in zip(x.shape, reps)))]


register(
    "tile",
    emit_coreai=lambda ctx, a, ins, node: ctx.ca.tile(ins[0], ctx.u32(a["reps"])),
    is_noop=lambda a, t: set(a["reps"]) <= {1},
    doc="MIL ``tile`` (tensor_operation.py): repeat x ``reps[i]`` times along axis i.",
    infer=_infer_tile,
    numpy=lambda a, x: np.tile(x, a["reps"]),
    emit_mil=lambda ctx, a, ins, nm: ctx.mb.tile(x=ins[0], reps=np.array(a["reps"], np.int32), name=nm),
    flops=flops_none,
    torch=lambda a, x: x.repeat(a["reps"]),
)


def _infer_pad(in_types, attrs):
    x = in_types[0]
    p = tuple(attrs["pad"])
    if len(p) % 2 or len(p) // 2 > x.rank or any(v < 0 for v in p):
        raise IRError(f"pad {list(p)} must be non-negative (before, after) pairs for the last axes of {list(x.shape)}")
    n = len(p) // 2
    shape = list(x.shape)
    for i in range(n):
        shape[x.rank - n + i] += p[2 * i] + p[2 * i + 1]
    return [TensorType(x.dtype, tuple(shape))]


def _pad(attrs, x):
    """MIL ``pad`` (tensor_operation.py): ``pad`` holds (before, after) pairs for the last
    len(pad)/2 axes; ``mode`` constant / reflect / replicate; ``constant_val``."""
    p = attrs["pad"]
    n = len(p) // 2
    widths = [(0, 0)] * (x.ndim - n) + [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    mode = attrs.get("mode", "constant")
    if mode == "constant":
        return np.pad(x, widths, constant_values=np.asarray(attrs.get("constant_val", 0.0), x.dtype))
    return np.pad(x, widths, mode={"reflect": "reflect", "replicate": "edge"}[mode])


def _t_pad(attrs, x):
    """Torch kernel of ``pad``: ``F.pad`` for constant mode; reflect/replicate built per axis from
    slices (``F.pad``'s own modes cover only some ranks), so any rank works."""
    p = attrs["pad"]
    n = len(p) // 2
    mode = attrs.get("mode", "constant")
    if mode == "constant":
        return F.pad(x, [v for i in reversed(range(n)) for v in (p[2 * i], p[2 * i + 1])],
                     value=float(attrs.get("constant_val", 0.0)))
    for i in range(n):
        ax, (b, e) = x.dim() - n + i, (p[2 * i], p[2 * i + 1])
        size = x.shape[ax]
        if mode == "reflect":
            left, right = x.narrow(ax, 1, b).flip(ax), x.narrow(ax, size - 1 - e, e).flip(ax)
        else:  # replicate
            left = x.narrow(ax, 0, 1).expand(*x.shape[:ax], b, *x.shape[ax + 1:])
            right = x.narrow(ax, size - 1, 1).expand(*x.shape[:ax], e, *x.shape[ax + 1:])
        x = torch.cat([left, x, right], ax)
    return x


register(
    "pad",
    emit_coreai=_ca_pad,
    coreai_limit=lambda i, o, a: None if a.get("mode", "constant") == "constant" else f"in mode {a['mode']!r} in tlc yet",
    is_noop=lambda a, t: not any(a["pad"]),
    torch=_t_pad,
    infer=_infer_pad,
    numpy=_pad,
    emit_mil=lambda ctx, a, ins, nm: ctx.mb.pad(
        x=ins[0], pad=np.array(a["pad"], np.int32), mode=a.get("mode", "constant"),
        constant_val=np.float32(a.get("constant_val", 0.0)), name=nm,
    ),
    flops=flops_none,
)
