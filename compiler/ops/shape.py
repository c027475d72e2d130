"""Constants and data movement: ``const``, ``identity``, ``reshape``, ``transpose``, ``concat``,
``split``, ``expand_dims``, ``squeeze``, ``tile``, ``pad``. Slicing and reversal are in
:mod:`tlc.ops.slicing`, ``gather`` with the other indexed reads in :mod:`tlc.ops.index`.

Semantics: coremltools MIL ``tensor_transformation.py`` and ``tensor_operation.py`` (iOS15
opset). All shapes are static attributes in tlc's IR. Torch kernels return views where torch can
(reshape, permute), as the NumPy kernels do.
"""
from __future__ import annotations

import numpy as np
from .._lazy import F, torch

from ..errors import IRError
from ..dtypes import DTYPES, TensorType, dtype_of
from .table import COMMUTES, PositiveScale, flops_none, mil_attr, register
from .norm import norm_axes


# ---------------------------------------------------------------------------------------- const


def _const(attrs):
    """MIL ``const``: the value stored in ``val``."""
    return attrs["val"]



# ------------------------------------------------------- Core AI forms (tlc.backends.coreai.emit)


def _ca_reshape(ctx, a, ins, node):
    return ctx.reshaped(ins[0])


def _ca_concat(ctx, a, ins, node):
    return ctx.ca.concat(a["axis"] % node.out.type.rank, list(ins))


def _ca_split(ctx, a, ins, node):
    return ctx.ca.split(ins[0], ctx.u32(a["split_sizes"]), a["axis"] % node.inputs[0].type.rank)


def _ca_pad(ctx, a, ins, node):
    x = node.inputs[0].type
    p = list(a["pad"])
    spec = [0] * (2 * (x.rank - len(p) // 2)) + p
    val = np.asarray(a.get("constant_val", 0.0), DTYPES[x.dtype])
    return ctx.ca.pad(ins[0], np.asarray(spec, np.uint32), ctx.const(val))


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
    scale=COMMUTES,
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
    scale=COMMUTES,
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
    scale=COMMUTES,
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
    scale=COMMUTES,
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
    scale=COMMUTES,
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
    scale=COMMUTES,
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


register("split", scale=COMMUTES, emit_coreai=_ca_split, infer=_infer_split, numpy=_split, emit_mil=_emit_split, flops=flops_none, from_mil=_split_from_mil,
         torch=lambda a, x: tuple(torch.split(x, list(a["split_sizes"]), a["axis"])))


def _infer_tile(in_types, attrs):
    x = in_types[0]
    reps = tuple(attrs["reps"])
    if len(reps) != x.rank or any(r < 1 for r in reps):
        raise IRError(f"tile reps {list(reps)} must be {x.rank} positive ints")
    return [TensorType(x.dtype, tuple(d * r for d, r in zip(x.shape, reps)))]


register(
    "tile",
    scale=COMMUTES,
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
    scale=PositiveScale("commutes", attrs=("constant_val",)),
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
