"""Matrix ops: ``linear``, ``matmul``, ``einsum``, ``scaled_dot_product_attention``.

Semantics: coremltools MIL ``linear.py`` (iOS15 ``linear``, ``matmul``) and
``transformers.py`` (iOS18 ``scaled_dot_product_attention``). Accumulation: NumPy's matmul calls
BLAS sgemm for fp32, which accumulates in fp32.
"""
from __future__ import annotations

import numpy as np
from .._lazy import F, torch

from ..errors import IRError
from ..dtypes import DTYPES, TensorType
from .table import APPLE, PositiveScale, Reason, mil_attr, register
from .common import FLOAT, broadcast_shape, same_dtype
from .parallel import map_rows

#: Additive mask value for a masked attention score. Apple's rules for the Neural Engine ask for a
#: finite value, -40000, instead of -inf (neural_engine_rules.md L366-370, ../shared/ane-rules.md);
#: tlc uses -30000, the fp16-safe value ``precision`` accepts: -40000 is above its headroom rule
#: (:data:`tlc.passes.precision.SAFE_MAX`, 32768) and would keep every masked softmax in fp32, while
#: exp(-30000 - m) underflows to exactly 0 in fp16 and fp32 as exp(-40000 - m) does, so the two
#: give the same softmax. Used when a boolean mask is lowered to MIL ops (iOS17 has no
#: ``scaled_dot_product_attention``), by ``layout::ane_transformer``, and by ``precision`` for
#: fp32-only mask sentinels. It matches torch's -inf except on fully masked rows (torch: NaN).
MASK_FILL = -30000.0


def _infer_linear(in_types, attrs):
    x, w = in_types[0], in_types[1]
    same_dtype(in_types, FLOAT)
    if w.rank != 2 or x.rank < 1 or x.shape[-1] != w.shape[1]:
        raise IRError(f"linear needs x[..., K] and weight[N, K]; got x{list(x.shape)}, weight{list(w.shape)}")
    if len(in_types) == 3 and in_types[2].shape != (w.shape[0],):
        raise IRError(f"linear bias must be [{w.shape[0]}], got {list(in_types[2].shape)}")
    return [TensorType(x.dtype, x.shape[:-1] + (w.shape[0],))]


#: Below this many rows of x, ``linear`` computes ``(weight @ x^T)^T``: OpenBLAS 0.3.31's sgemm is
#: 25-40% faster in that operand order for short x (32x384 @ 384x1536: 0.52 vs 0.85 ms on one
#: core, measured), and equal from ~128 rows on, where the extra transpose copy would not pay.
LINEAR_SHORT_ROWS = 64


def _linear(attrs, x, w, b=None):
    """MIL ``linear`` (iOS15 linear.py): ``x @ weight.T + bias``; x[..., K], weight[N, K], bias[N].
    One BLAS sgemm (fp32 accumulation) in the faster operand order (:data:`LINEAR_SHORT_ROWS`)."""
    rows = x.size // max(x.shape[-1], 1)
    if x.ndim >= 1 and 0 < rows < LINEAR_SHORT_ROWS and x.flags.c_contiguous:
        y = np.ascontiguousarray(np.matmul(w, x.reshape(rows, -1).T).T).reshape(x.shape[:-1] + (w.shape[0],))
    else:
        y = np.matmul(x, w.T)
    if b is not None:
        y += b
    return y


def _emit_linear(ctx, attrs, ins, nm):
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) == 3 else None
    if w.val is not None and (b is None or b.val is not None):
        kw = {"bias": b} if b is not None else {}
        return ctx.mb.linear(x=x, weight=w, name=nm, **kw)
    # MIL linear takes only const weights; a computed weight becomes matmul (+ add).
    y = ctx.mb.matmul(x=x, y=w, transpose_y=True, name=nm if b is None else nm + "_mm")
    return y if b is None else ctx.mb.add(x=y, y=b, name=nm)


def _flops_linear(i, o, a):
    return 2 * o[0].size * i[0].shape[-1]


def _ca_linear(ctx, a, ins, node):
    """``x @ weight.T + bias``: Core AI's broadcasting batch matmul with the transposed weight
    (a constant, transposed here) and an add."""
    ca = ctx.ca
    w = ctx.array(1)
    wt = ctx.const(np.ascontiguousarray(w.T)) if w is not None else ca.transpose(ins[1], ctx.u32([1, 0]))
    x = ins[0]
    r = node.inputs[0].type.rank
    y = ca.broadcasting_batch_matmul(ca.reshape(x, [1, node.inputs[0].type.shape[0]]) if r == 1 else x, wt)
    if r == 1:
        y = ctx.reshaped(y)
    return ca.broadcasting_add(y, ins[2]) if len(ins) == 3 else y


def _ca_swap_last(ca, x, rank):
    return ca.transpose(x, np.asarray(list(range(rank - 2)) + [rank - 1, rank - 2], np.uint32))


def _ca_matmul(ctx, a, ins, node):
    x, y = ins
    rx, ry = (v.type.rank for v in node.inputs)
    if a.get("transpose_x"):
        x = _ca_swap_last(ctx.ca, x, rx)
    if a.get("transpose_y"):
        y = _ca_swap_last(ctx.ca, y, ry)
    return ctx.ca.broadcasting_batch_matmul(x, y)


def _linear_efficiency(i, o, a):
    """Apple's rule (neural_engine_rules.md L353): a projection over channels is a 1x1 Conv2d on
    channels-first (B, C, 1, S) data, not a Linear over the last axis of (B, S, C) tokens;
    ``layout::ane_transformer`` rewrites it."""
    if i[0].rank >= 2:
        return Reason(f"linear over the last axis of {list(i[0].shape)}: the ANE prefers a 1x1 conv on (B, C, 1, S) "
                      f"({APPLE} L353; apple/ml-ane-transformers)", "linear_bsc")
    return None


register("linear", infer=_infer_linear, numpy=_linear, emit_mil=_emit_linear, flops=_flops_linear,
         scale=PositiveScale("product", (0, 1), bias=2),
         mil_inputs=("x", "weight", "bias"), efficiency=_linear_efficiency, emit_coreai=_ca_linear,
         torch=lambda a, x, w, b=None: F.linear(x, w, b))


def _mm_dims(t: TensorType, transpose: bool) -> tuple[int, int]:
    m, k = t.shape[-2], t.shape[-1]
    return (k, m) if transpose else (m, k)


def _infer_matmul(in_types, attrs):
    x, y = in_types
    dt = same_dtype(in_types, FLOAT)
    if x.rank < 2 or y.rank < 2:
        raise IRError(f"matmul operands must have rank >= 2, got {x.rank} and {y.rank}")
    m, k = _mm_dims(x, attrs.get("transpose_x", False))
    k2, n = _mm_dims(y, attrs.get("transpose_y", False))
    if k != k2:
        raise IRError(f"matmul inner dimensions differ: {list(x.shape)} @ {list(y.shape)}")
    batch = broadcast_shape([TensorType(dt, x.shape[:-2]), TensorType(dt, y.shape[:-2])])
    return [TensorType(dt, batch + (m, n))]


def _matmul(attrs, x, y):
    """MIL ``matmul`` (iOS15 linear.py): batched ``x @ y`` with broadcasting batch dims and
    optional ``transpose_x`` / ``transpose_y`` of the last two axes."""
    if attrs.get("transpose_x", False):
        x = np.swapaxes(x, -1, -2)
    if attrs.get("transpose_y", False):
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


def _t_matmul(attrs, x, y):
    if attrs.get("transpose_x", False):
        x = x.transpose(-1, -2)
    if attrs.get("transpose_y", False):
        y = y.transpose(-1, -2)
    return torch.matmul(x, y)


def _emit_matmul(ctx, attrs, ins, nm):
    return ctx.mb.matmul(
        x=ins[0], y=ins[1], transpose_x=attrs.get("transpose_x", False),
        transpose_y=attrs.get("transpose_y", False), name=nm,
    )


def _flops_matmul(i, o, a):
    k = _mm_dims(i[0], a.get("transpose_x", False))[1]
    return 2 * o[0].size * k


def _matmul_efficiency(i, o, a):
    """A matmul batched over more than the batch axis (rank >= 4 with (B, h, S, d) heads: traced
    attention, or iOS17's lowering of fused SDPA) breaks Apple's per-head attention rule
    (neural_engine_rules.md L366-370); ``layout::ane_transformer`` computes it per head."""
    if o[0].rank >= 4 and int(np.prod(o[0].shape[1:-2])) > 1:
        return Reason(f"matmul batched over heads {list(o[0].shape)}: compute attention per head on (B, C/h, 1, S) "
                      f"slices ({APPLE} L366-370)", "head_batched_matmul")
    return None


register("matmul", infer=_infer_matmul, numpy=_matmul, emit_mil=_emit_matmul, flops=_flops_matmul, mil_inputs=("x", "y"),
         scale=PositiveScale("product", (0, 1)),
         torch=_t_matmul, efficiency=_matmul_efficiency, emit_coreai=_ca_matmul)


# ------------------------------------------------------------------------------------- einsum


def _einsum_form(equation: str):
    """coremltools' ``parse_einsum_equation`` (defs/_utils.py): each letter numbered in order of
    first appearance over input 1, input 2, output; returns the three index vectors."""
    io = equation.split("->")
    if len(io) != 2:
        raise IRError(f"unsupported einsum equation {equation!r}")
    seen: dict[str, int] = {}
    vecs = []
    for part in io[0].split(",") + [io[1]]:
        vecs.append(tuple(seen.setdefault(c, len(seen)) for c in part))
    return tuple(vecs)


_EINSUM_4D = ((0, 1, 2, 3), (0, 3, 2, 4), (0, 1, 2, 4))  # "nchw,nwhu->nchu"
_EINSUM_3D = ((0, 1, 2), (2, 1, 3), (0, 1, 3))  # "chw,whr->chr"


def _einsum(attrs, x, y):
    """iOS15 linear.py ``einsum``: the two forms its ``type_inference`` accepts, in any letters:
    ``"nchw,nwhu->nchu"`` (x[B, C, H, W1], y[B, W1, H, W2] -> [B, C, H, W2]) and ``"chw,whr->chr"``
    (x[C, H, W1], y[W1, H, W2] -> [C, H, W2]): out[.., c, h, u] = sum_w x[.., c, h, w] * y[.., w, h, u],
    B and H broadcast where one input has 1 (``value_inference``). Runs as one batched matmul over
    (B, H), accumulating in float32."""
    form = _einsum_form(str(attrs["equation"]))
    if x.ndim != y.ndim:
        raise IRError(f"einsum inputs must have the same rank: {list(x.shape)}, {list(y.shape)}")
    if form == _EINSUM_4D and x.ndim == 4:
        return np.ascontiguousarray(np.matmul(x.transpose(0, 2, 1, 3), y.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3))
    if form == _EINSUM_3D and x.ndim == 3:
        return np.ascontiguousarray(np.matmul(x.transpose(1, 0, 2), y.transpose(1, 0, 2)).transpose(1, 0, 2))
    raise IRError(f"unsupported einsum equation {attrs['equation']!r} for rank {x.ndim} (MIL einsum takes only "
                  f"'nchw,nwhu->nchu' and 'chw,whr->chr' and their renamings)")


def _einsum_from_mil(vals):
    x, y = vals["values"]
    return [x, y], {"equation": str(mil_attr(vals["equation"]))}


def _infer_einsum(in_types, attrs):
    x, y = in_types
    dt = same_dtype(in_types, FLOAT)
    if _einsum_form(str(attrs["equation"])) != _EINSUM_4D or x.rank != 4 or y.rank != 4:
        raise IRError(f"einsum in tlc's IR is MIL's rank-4 form 'nchw,nwhu->nchu' (any letters); got "
                      f"{attrs['equation']!r} on {list(x.shape)}, {list(y.shape)}")
    if x.shape[3] != y.shape[1]:
        raise IRError(f"einsum contracts x's last axis with y's axis 1: {list(x.shape)}, {list(y.shape)}")
    for d in (0, 2):
        if x.shape[d] != y.shape[d] and 1 not in (x.shape[d], y.shape[d]):
            raise IRError(f"einsum axis {d} must match or be 1: {list(x.shape)}, {list(y.shape)}")
    return [TensorType(dt, (max(x.shape[0], y.shape[0]), x.shape[1], max(x.shape[2], y.shape[2]), y.shape[3]))]


def _t_einsum(attrs, x, y):
    return torch.matmul(x.permute(0, 2, 1, 3), y.permute(0, 2, 1, 3)).permute(0, 2, 1, 3).contiguous()


def _emit_einsum(ctx, attrs, ins, nm):
    return ctx.mb.einsum(values=(ins[0], ins[1]), equation="nchw,nwhu->nchu", name=nm)


def _flops_einsum(i, o, a):
    return 2 * o[0].size * i[0].shape[3]


def _ca_einsum(ctx, a, ins, node):
    ca = ctx.ca
    p = ctx.u32([0, 2, 1, 3])
    x, y = (ca.transpose(v, p) for v in ins)
    return ca.transpose(ca.broadcasting_batch_matmul(x, y), p)


register("einsum", infer=_infer_einsum, numpy=_einsum, emit_mil=_emit_einsum, flops=_flops_einsum, emit_coreai=_ca_einsum,
         mil_inputs=("values",), from_mil=_einsum_from_mil, torch=_t_einsum,
         doc="MIL einsum 'nchw,nwhu->nchu' (iOS15 linear.py): the per-head attention matmul of Apple's (B, C, 1, S) "
             "transformer layout (apple/ml-ane-transformers), x[B, C, H, W] y[B, W, H, U] -> [B, C, H, U].")


# ------------------------------------------------------------------------------------ attention


def _infer_sdpa(in_types, attrs):
    q, k, v = in_types[:3]
    dt = same_dtype([q, k, v], FLOAT)
    if q.rank < 3 or k.shape[-1] != q.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise IRError(f"attention shapes q{list(q.shape)} k{list(k.shape)} v{list(v.shape)} do not fit")
    out = TensorType(dt, q.shape[:-1] + (v.shape[-1],))
    if len(in_types) == 4:
        m = in_types[3]
        if m.dtype not in ("bool", dt):
            raise IRError(f"attention mask must be bool or {dt}, got {m.dtype}")
        broadcast_shape([m, TensorType(dt, q.shape[:-1] + (k.shape[-2],))])
    return [out]


def _softmax_rows(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = x - np.max(x, axis=axis, keepdims=True)
    np.exp(e, out=e)
    e /= np.sum(e, axis=axis, keepdims=True)
    return e


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """Numerically stable softmax along ``axis`` (max subtracted first), same dtype as ``x``;
    along the last axis it runs on row tiles over threads (:func:`tlc.ops.parallel.map_rows`)."""
    if axis % max(x.ndim, 1) == x.ndim - 1 and x.ndim:
        return map_rows(_softmax_rows, x, x.shape[-1])
    return _softmax_rows(x, axis)


def _sdpa(attrs, q, k, v, mask=None):
    """MIL ``scaled_dot_product_attention`` (iOS18 transformers.py):
    ``softmax(q @ k^T * scale + mask) @ v``; q[..., L, E], k[..., S, E], v[..., S, Ev]; a bool mask
    keeps positions where it is True (others get -inf, as in torch); ``scale`` defaults to
    1/sqrt(E)."""
    scale = attrs.get("scale") or 1.0 / np.sqrt(q.shape[-1])
    s = np.matmul(q, np.swapaxes(k, -1, -2))
    s *= np.asarray(scale, q.dtype)
    if mask is not None:
        if mask.dtype == np.bool_:
            s = np.where(mask, s, np.asarray(-np.inf, s.dtype))
        else:
            s = s + mask
    return np.matmul(softmax(s, -1), v)


def _t_sdpa(attrs, q, k, v, mask=None):
    """Torch kernel of ``scaled_dot_product_attention``: ``F.scaled_dot_product_attention`` (same
    bool-mask convention: True keeps). Unlike the NumPy kernel, a fully masked row may give 0
    instead of NaN, depending on the backend torch picks."""
    scale = attrs.get("scale") or 1.0 / float(np.sqrt(q.shape[-1]))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _emit_sdpa(ctx, attrs, ins, nm):
    q, k, v = ins[:3]
    mask = ins[3] if len(ins) == 4 else None
    e = q.shape[-1]
    scale = attrs.get("scale")
    default = 1.0 / np.sqrt(e)
    mb = ctx.mb
    if ctx.has_sdpa:
        if scale is not None and not np.isclose(scale, default, rtol=1e-6):
            # MIL's op has a fixed 1/sqrt(E) scale: fold the ratio into q.
            q = mb.mul(x=q, y=np.float32(scale / default), name=nm + "_qscale")
        kw = {"attn_mask": mask} if mask is not None else {}
        return mb.scaled_dot_product_attention(query=q, key=k, value=v, name=nm, **kw)
    # iOS17 and older: matmul -> scale -> mask -> softmax -> matmul; q is scaled first so that the
    # scores stay in fp16 range.
    qs = mb.mul(x=q, y=np.float32(scale if scale is not None else default), name=nm + "_qscale")
    s = mb.matmul(x=qs, y=k, transpose_y=True, name=nm + "_scores")
    if mask is not None:
        s = mb.add(x=s, y=ctx.additive_mask(mask, ctx.node.out.type.dtype), name=nm + "_masked")
    p = mb.softmax(x=s, axis=-1, name=nm + "_probs")
    return mb.matmul(x=p, y=v, name=nm)


def _ca_sdpa(ctx, a, ins, node):
    """softmax(q * scale @ k^T + mask) @ v in Core AI ops; a bool mask keeps where True (-inf
    elsewhere, as torch)."""
    ca = ctx.ca
    q, k, v = ins[:3]
    qt = node.inputs[0].type
    dt = DTYPES[qt.dtype]
    scale = a.get("scale") or 1.0 / np.sqrt(qt.shape[-1])
    s = ca.broadcasting_batch_matmul(ca.broadcasting_mul(q, ctx.const(np.asarray(scale, dt))),
                                     _ca_swap_last(ca, k, node.inputs[1].type.rank))
    if len(ins) == 4:
        if node.inputs[3].type.dtype == "bool":
            s = ca.broadcasting_where(ins[3], s, ctx.const(np.asarray(-np.inf, dt)))
        else:
            s = ca.broadcasting_add(s, ins[3])
    return ca.broadcasting_batch_matmul(ca.softmax(s, qt.rank - 1), v)


def _flops_sdpa(i, o, a):
    q, k, v = i[:3]
    lead = int(np.prod(o[0].shape[:-2], dtype=np.int64))
    L, S, E, Ev = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    return lead * (2 * L * S * E + 2 * L * S * Ev + 5 * L * S)


register(
    "scaled_dot_product_attention", infer=_infer_sdpa, numpy=_sdpa, emit_mil=_emit_sdpa, flops=_flops_sdpa,
    emit_coreai=_ca_sdpa,
    mil_inputs=("query", "key", "value", "attn_mask"),
    efficiency=lambda i, o, a: Reason(f"fused scaled_dot_product_attention on {list(i[0].shape)}: the ANE has no fused "
                                      f"SDPA path; compute attention per head ({APPLE} L366-370)", "fused_sdpa"),
    ane_dtype_exempt=(3,),  # a bool mask is emitted as an fp16 additive mask (EmitContext.additive_mask)
    torch=_t_sdpa,
)
