"""Transposed convolution: ``conv_transpose`` (1-D, 2-D and 3-D), on the window helpers of
:mod:`tlc.ops.conv`.

Semantics: coremltools MIL ``conv_transpose`` (iOS15 ``conv.py``; iOS17 takes a non-constant
weight), with ``pad`` as for ``conv``: (before, after) pairs per spatial axis, cropped from the
full result, and ``output_padding`` zeros added at the end. Layout: x[N, Cin, *spatial],
weight[Cin, Cout / groups, *kernel], as in torch.

The NumPy kernel is one batched GEMM ``weight^T @ x`` per group, then col2im, accumulating in
fp32; the torch kernel calls ``F.conv_transpose{1,2,3}d``.
"""
from __future__ import annotations

import numpy as np
from .._lazy import F, torch

from ..errors import IRError
from ..dtypes import TensorType
from .table import PositiveScale, register
from .common import FLOAT, same_dtype
from .conv import spatial_attr


def _infer_conv_transpose(in_types, attrs):
    x, w = in_types[0], in_types[1]
    same_dtype(in_types, FLOAT)
    g = attrs.get("groups", 1)
    nsp = x.rank - 2
    if x.rank not in (3, 4, 5) or w.rank != x.rank or x.shape[1] != w.shape[0] or w.shape[0] % g:
        raise IRError(f"conv_transpose needs x[N, Cin, *sp] and weight[Cin, Cout/groups, *k]: x{list(x.shape)}, "
                      f"weight{list(w.shape)}, groups={g}")
    cout = w.shape[1] * g
    if len(in_types) == 3 and in_types[2].shape != (cout,):
        raise IRError(f"conv_transpose bias must be [{cout}], got {list(in_types[2].shape)}")
    strides, dil = spatial_attr(attrs, nsp, "strides", 1), spatial_attr(attrs, nsp, "dilations", 1)
    pad = tuple(attrs.get("pad") or (0,) * (2 * nsp))
    op = spatial_attr(attrs, nsp, "output_padding", 0)
    sp = []
    for i in range(nsp):
        full = (x.shape[2 + i] - 1) * strides[i] + dil[i] * (w.shape[2 + i] - 1) + 1
        o = full - pad[2 * i] - pad[2 * i + 1] + op[i]
        if o < 1 or min(pad) < 0 or op[i] < 0:
            raise IRError(f"conv_transpose output size {o} along spatial axis {i} (pad {list(pad)}, output_padding "
                          f"{list(op)}) is not positive")
        sp.append(o)
    return [TensorType(x.dtype, (x.shape[0], cout) + tuple(sp))]


def _conv_transpose(attrs, x, w, b=None):
    """Transposed convolution as torch computes it (``F.conv_transpose1d/2d/3d``; MIL
    ``conv_transpose``, iOS15 conv.py): x[N, Cin, *sp], weight[Cin, Cout/groups, *k]. The full
    result ((L-1) * stride + dilation * (k-1) + 1 per axis) is cropped by ``pad`` (before, after)
    pairs and extended by ``output_padding`` zeros (plus bias) at the end.

    Kernel: one batched GEMM ``weight^T @ x`` per group ([Cout/g * prod(k), L_in] columns), then
    each kernel tap's columns added into the strided output (col2im), accumulating in fp32."""
    nsp = x.ndim - 2
    n, cin = x.shape[:2]
    g = attrs.get("groups", 1)
    cog, k = w.shape[1], w.shape[2:]
    strides, dil = spatial_attr(attrs, nsp, "strides", 1), spatial_attr(attrs, nsp, "dilations", 1)
    pad = tuple(attrs.get("pad") or (0,) * (2 * nsp))
    taps = int(np.prod(k))
    xs = x.reshape(n, g, cin // g, -1).astype(np.float32, copy=False)
    wm = w.reshape(g, cin // g, cog * taps).astype(np.float32, copy=False)
    cols = np.matmul(np.swapaxes(wm, 1, 2), xs)  # [N, g, Cout/g * taps, L_in]
    cols = cols.reshape((n, g * cog) + tuple(k) + x.shape[2:])  # memory order [N][g][Cout/g][taps][L_in]
    full = tuple((x.shape[2 + i] - 1) * strides[i] + dil[i] * (k[i] - 1) + 1 for i in range(nsp))
    y = np.zeros((n, g * cog) + full, np.float32)
    for tap in np.ndindex(*k):
        sl = (slice(None), slice(None)) + tuple(
            slice(t * d, t * d + (L - 1) * s + 1, s) for t, d, L, s in zip(tap, dil, x.shape[2:], strides))
        y[sl] += cols[(slice(None), slice(None)) + tap]
    out = _infer_conv_transpose([TensorType("fp32", x.shape), TensorType("fp32", w.shape)], attrs)[0].shape
    res = np.zeros(out, np.float32)
    keep = tuple(slice(0, min(out[2 + i], full[i] - pad[2 * i])) for i in range(nsp))
    src = tuple(slice(pad[2 * i], pad[2 * i] + (keep[i].stop - keep[i].start)) for i in range(nsp))
    res[(slice(None), slice(None)) + keep] = y[(slice(None), slice(None)) + src]
    if b is not None:
        res += b.reshape((1, -1) + (1,) * nsp)
    return res.astype(x.dtype, copy=False)


def _t_conv_transpose(attrs, x, w, b=None):
    """Torch kernel of ``conv_transpose``: ``F.conv_transpose1d/2d/3d`` with torch's own padding
    when ``pad`` is symmetric, else the full result cropped (and ``output_padding`` zeros added)."""
    nsp = x.dim() - 2
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nsp - 1]
    strides, dil = spatial_attr(attrs, nsp, "strides", 1), spatial_attr(attrs, nsp, "dilations", 1)
    pad = tuple(attrs.get("pad") or (0,) * (2 * nsp))
    op = spatial_attr(attrs, nsp, "output_padding", 0)
    g = attrs.get("groups", 1)
    if all(pad[2 * i] == pad[2 * i + 1] and op[i] < max(strides[i], dil[i]) for i in range(nsp)):
        return fn(x, w, b, strides, pad[0::2], op, g, dil)
    y = fn(x, w, None, strides, 0, 0, g, dil)
    for i in range(nsp):
        ax = 2 + i
        y = y.narrow(ax, pad[2 * i], max(0, min(y.shape[ax] - pad[2 * i], y.shape[ax] - pad[2 * i] - pad[2 * i + 1] + op[i])))
        want = (x.shape[ax] - 1) * strides[i] + dil[i] * (w.shape[ax] - 1) + 1 - pad[2 * i] - pad[2 * i + 1] + op[i]
        if y.shape[ax] < want:
            y = torch.cat([y, y.new_zeros(y.shape[:ax] + (want - y.shape[ax],) + y.shape[ax + 1:])], ax)
    return y if b is None else y + b.reshape((1, -1) + (1,) * nsp)


def _emit_conv_transpose(ctx, attrs, ins, nm):
    """One MIL ``conv_transpose`` (custom pad, bias) when there is no ``output_padding``; else the
    valid (full) result, sliced, zero-padded at the end and the bias added (4 ops)."""
    mb = ctx.mb
    x, w = ins[0], ins[1]
    nsp = x.rank - 2
    strides, dil = spatial_attr(attrs, nsp, "strides", 1), spatial_attr(attrs, nsp, "dilations", 1)
    pad = list(attrs.get("pad") or (0,) * (2 * nsp))
    op = spatial_attr(attrs, nsp, "output_padding", 0)
    if w.val is None and ctx.opset < _ct_target().iOS17:
        from ..errors import EmitError

        raise EmitError("conv_transpose with a computed (non-constant) weight needs minimum_deployment_target "
                        "iOS17 or newer (MIL conv_transpose takes a non-constant weight from iOS17)")
    kw = dict(x=x, weight=w, strides=list(strides), dilations=list(dil), groups=attrs.get("groups", 1))
    if not any(op) and (len(ins) < 3 or ins[2].val is not None):
        if len(ins) == 3:
            kw["bias"] = ins[2]
        return mb.conv_transpose(pad_type="custom", pad=pad, name=nm, **kw)
    y = mb.conv_transpose(pad_type="valid", name=nm + "_full", **kw)
    out = ctx.node.out.type.shape
    full = tuple(int(d) for d in y.shape)
    end = [full[0], full[1]] + [min(full[2 + i], pad[2 * i] + out[2 + i]) for i in range(nsp)]
    y = mb.slice_by_index(x=y, begin=[0, 0] + [pad[2 * i] for i in range(nsp)], end=end, name=nm + "_crop")
    extra = [out[2 + i] - (end[2 + i] - pad[2 * i]) for i in range(nsp)]
    if any(extra):
        y = mb.pad(x=y, pad=np.array([v for e in extra for v in (0, e)], np.int32), mode="constant",
                   constant_val=0.0, name=nm + "_pad" if len(ins) == 3 else nm)
    if len(ins) == 3:
        bias = ins[2].val.reshape((-1,) + (1,) * nsp) if ins[2].val is not None else \
            mb.reshape(x=ins[2], shape=np.array((-1,) + (1,) * nsp, np.int32), name=nm + "_bias")
        y = mb.add(x=y, y=bias, name=nm)
    elif not any(extra):
        y = mb.identity(x=y, name=nm)
    return y


def _ct_target():
    from .._coreml import quiet_coremltools

    return quiet_coremltools().target


def _flops_conv_transpose(i, o, a):
    return 2 * i[0].size * int(np.prod(i[1].shape[1:]))


def _ca_conv_transpose_limit(i, o, a):
    nsp = i[0].rank - 2
    pad = tuple(a.get("pad") or (0,) * (2 * nsp))
    if nsp not in (1, 2):
        return f"in {nsp}-D in tlc yet"
    if any(pad[2 * k] != pad[2 * k + 1] for k in range(nsp)):
        return f"with asymmetric padding {list(pad)} (Core AI conv_transpose2d pads each axis symmetrically)"
    return None


def _ca_conv_transpose(ctx, a, ins, node):
    """``conv_transpose`` as Core AI ``conv_transpose2d`` (weight [Cin, Cout/groups, kh, kw] as in
    torch; symmetric padding per axis, ``output_padding`` at the end; checked against
    ``F.conv_transpose2d`` on coreai-core 1.0.0b3); 1-D as 2-D with a unit height; bias added."""
    ca = ctx.ca
    nsp = node.inputs[0].type.rank - 2
    x, w = ins[0], ins[1]
    strides = list(spatial_attr(a, nsp, "strides", 1))
    dil = list(spatial_attr(a, nsp, "dilations", 1))
    pad = list(a.get("pad") or (0,) * (2 * nsp))[::2]
    op = list(spatial_attr(a, nsp, "output_padding", 0))
    if nsp == 1:
        wt = node.inputs[1].type
        x = ca.expand_dims(x, [2])
        w = ca.reshape(w, [wt.shape[0], wt.shape[1], 1, wt.shape[2]])
        strides, dil, pad, op = [1] + strides, [1] + dil, [0] + pad, [0] + op
    y = ca.conv_transpose2d(x, w, ctx.u32(strides), ctx.u32(pad), ctx.u32(dil), ctx.u32(op), np.uint32(a.get("groups", 1)))
    if nsp == 1:
        y = ctx.reshaped(y)
    if len(ins) == 3:
        y = ca.broadcasting_add(y, ca.reshape(ins[2], [1, node.out.type.shape[1]] + [1] * nsp))
    return y


def _conv_transpose_from_mil(v):
    """MIL ``conv_transpose``: ``pad_type`` valid / custom (``same`` and ``output_shape`` are
    resolved to the declared output shape by cropping at the end)."""
    from .table import mil_attr

    x, w = v["x"], v["weight"]
    nsp = x.ndim - 2
    attrs = {"strides": tuple(mil_attr(v.get("strides")) or (1,) * nsp),
             "dilations": tuple(mil_attr(v.get("dilations")) or (1,) * nsp),
             "groups": int(v.get("groups", 1) or 1)}
    pt = v.get("pad_type", "valid")
    attrs["pad"] = tuple(int(p) for p in v["pad"]) if pt == "custom" and v.get("pad") is not None else (0,) * (2 * nsp)
    if pt == "same" or v.get("output_shape") is not None:
        want = ([x.shape[2 + i] * attrs["strides"][i] for i in range(nsp)] if v.get("output_shape") is None
                else [int(d) for d in v["output_shape"]][-nsp:])
        full = [(x.shape[2 + i] - 1) * attrs["strides"][i] + attrs["dilations"][i] * (w.shape[2 + i] - 1) + 1
                for i in range(nsp)]
        attrs["pad"] = tuple(p for i in range(nsp) for p in (0, max(0, full[i] - want[i])))
        attrs["output_padding"] = tuple(max(0, want[i] - full[i]) for i in range(nsp))
    return [a for a in (x, w, v.get("bias")) if a is not None], attrs


register("conv_transpose", infer=_infer_conv_transpose, numpy=_conv_transpose, emit_mil=_emit_conv_transpose,
         scale=PositiveScale("product", (0, 1), bias=2),
         emit_coreai=_ca_conv_transpose, coreai_limit=_ca_conv_transpose_limit,
         flops=_flops_conv_transpose, mil_inputs=("x", "weight", "bias"), from_mil=_conv_transpose_from_mil,
         torch=_t_conv_transpose)
