"""Convolution: ``conv`` (1-D, 2-D and 3-D) and the window helpers (padding, output sizes, taps)
that :mod:`tlc.ops.conv_transpose` and the pools (:mod:`tlc.ops.pool`) share.

Semantics: coremltools MIL ``conv.py`` and ``pool.py`` (iOS15 opset) with ``pad_type="custom"``:
``pad`` lists (before, after) per spatial axis, flattened: ``[h_before, h_after, w_before, w_after]``.
Layout is channels-first: x[N, C, *spatial], weight[C_out, C_in / groups, *kernel].

Kernels (all accumulate in fp32 through BLAS sgemm or NumPy's fp32 loops):

* ``conv``, dense or grouped: im2col — one copy of the strided window view into a contiguous
  ``[N, groups, Cin/groups * prod(kernel), prod(out)]`` buffer, then one batched GEMM with the
  weights ``[groups, Cout/groups, Cin/groups * prod(kernel)]``, which yields NCHW directly (no
  transpose of the result). A 1x1 conv with stride 1 skips the copy: its input already is the
  column matrix.
* ``conv``, depthwise (groups == Cin == Cout): the padded input split into stride phases once,
  then one multiply and one add per kernel tap over contiguous slices of those planes; channel
  blocks spread over threads (:func:`tlc.ops.parallel.parallel_for`).

Torch kernels call ``F.conv{1,2}d`` (1-D as 2-D with a unit height), padding natively where the
padding is symmetric (torch's limit); otherwise they pad explicitly first.
"""
from __future__ import annotations

import math

import numpy as np
from .._lazy import F

from ..errors import IRError
from ..dtypes import DTYPES, TensorType
from .table import PositiveScale, Reason, register
from .common import FLOAT, same_dtype
from .parallel import parallel_for



def explicit_pad(pad_type: str, pad, in_sp, kernel, strides, dilations) -> tuple[int, ...]:
    """MIL ``pad_type`` (iOS15 conv.py / pool.py) as explicit (before, after) pairs.

    ``valid``: none; ``custom``: ``pad``; ``same`` / ``same_lower``: output = ceil(in / stride),
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - in, 0), split with the odd unit
    after (``same``) or before (``same_lower``).
    """
    nsp = len(in_sp)
    if pad_type == "valid":
        return (0,) * (2 * nsp)
    if pad_type == "custom":
        return tuple(int(p) for p in pad) if pad is not None else (0,) * (2 * nsp)
    if pad_type not in ("same", "same_lower"):
        raise IRError(f"unknown pad_type {pad_type!r}")
    out = []
    for i in range(nsp):
        o = -(-in_sp[i] // strides[i])
        total = max((o - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_sp[i], 0)
        small, big = total // 2, total - total // 2
        out += [big, small] if pad_type == "same_lower" else [small, big]
    return tuple(out)


def window_from_mil(vals, kernel, tensor_names):
    """Shared adapter for conv and pools: resolve pad_type into ``pad``; ints to tuples."""
    from .table import mil_attr

    x = vals["x"]
    nsp = x.ndim - 2
    strides = mil_attr(vals.get("strides")) or (1,) * nsp
    dil = mil_attr(vals.get("dilations")) or (1,) * nsp
    attrs = {k: mil_attr(v) for k, v in vals.items() if k not in tensor_names and v is not None and k != "pad_type"}
    attrs["pad"] = explicit_pad(vals.get("pad_type", "valid"), vals.get("pad"), x.shape[2:], kernel, strides, dil)
    attrs["strides"], attrs["dilations"] = tuple(strides), tuple(dil)
    return [vals[n] for n in tensor_names if vals.get(n) is not None], attrs


def spatial_attr(attrs, nsp, key, default):
    v = attrs.get(key)
    return tuple(v) if v is not None else (default,) * nsp


def out_size(size: int, k: int, s: int, d: int, pb: int, pa: int, ceil_mode: bool = False) -> int:
    """Output length of a window op along one axis (torch/MIL rule, including ceil_mode's rule
    that the last window must start inside the input or the leading padding)."""
    span = size + pb + pa - d * (k - 1) - 1
    if span < 0:
        raise IRError(f"window (kernel {k}, dilation {d}) is larger than the padded input {size + pb + pa}")
    n = (math.ceil(span / s) if ceil_mode else span // s) + 1
    if ceil_mode and (n - 1) * s >= size + pb:
        n -= 1
    return n


def window_shapes(x: TensorType, kernel, attrs, ceil_mode=False):
    nsp = len(kernel)
    strides = spatial_attr(attrs, nsp, "strides", 1)
    dil = spatial_attr(attrs, nsp, "dilations", 1)
    pad = tuple(attrs.get("pad") or (0,) * (2 * nsp))
    if len(pad) != 2 * nsp or len(strides) != nsp or len(dil) != nsp:
        raise IRError(f"strides/dilations/pad do not match {nsp} spatial axes")
    return tuple(
        out_size(x.shape[2 + i], kernel[i], strides[i], dil[i], pad[2 * i], pad[2 * i + 1], ceil_mode)
        for i in range(nsp)
    )


def _infer_conv(in_types, attrs):
    x, w = in_types[0], in_types[1]
    same_dtype(in_types, FLOAT)
    g = attrs.get("groups", 1)
    if x.rank not in (3, 4, 5) or w.rank != x.rank:
        raise IRError(f"conv supports 1-D/2-D/3-D: x{list(x.shape)}, weight{list(w.shape)}")
    if x.shape[1] != w.shape[1] * g or w.shape[0] % g:
        raise IRError(f"conv channels: x has {x.shape[1]}, weight{list(w.shape)} with groups={g}")
    if len(in_types) == 3 and in_types[2].shape != (w.shape[0],):
        raise IRError(f"conv bias must be [{w.shape[0]}], got {list(in_types[2].shape)}")
    sp = window_shapes(x, w.shape[2:], attrs)
    return [TensorType(x.dtype, (x.shape[0], w.shape[0]) + sp)]


def pad_array(x, pad, value=0.0):
    if not any(pad):
        return x
    widths = [(0, 0), (0, 0)] + [(pad[2 * i], pad[2 * i + 1]) for i in range(x.ndim - 2)]
    return np.pad(x, widths, constant_values=value)


def _windows(xp, kernel, strides, dil, out_sp):
    """View xp[N, C, *sp] as [N, C, *out_sp, *kernel] (no copy)."""
    eff = [d * (k - 1) + 1 for k, d in zip(kernel, dil)]
    axes = tuple(range(2, xp.ndim))
    win = np.lib.stride_tricks.sliding_window_view(xp, eff, axis=axes)
    idx = (slice(None), slice(None))
    idx += tuple(slice(0, o * s, s) for o, s in zip(out_sp, strides))
    idx += tuple(slice(None, None, d) for d in dil)
    return win[idx]


def conv_taps(kernel, strides, dil, out_sp):
    """For each kernel tap: the index of the tap and the spatial slices of the padded input that
    the tap reads for every output position (``[N, C, *out_sp]`` views)."""
    for tap in np.ndindex(*kernel):
        yield tap, (slice(None), slice(None)) + tuple(
            slice(t * d, t * d + (o - 1) * s + 1, s) for t, d, o, s in zip(tap, dil, out_sp, strides))


def _conv_gemm(xp, w, g, strides, dil, out_sp):
    """Dense/grouped conv as im2col + one batched GEMM; returns [N, Cout, *out_sp]."""
    n, cin = xp.shape[:2]
    cout, cg = w.shape[:2]
    kernel = w.shape[2:]
    taps = int(np.prod(kernel))
    cols = np.ascontiguousarray(  # [N, Cin, *k, *out]: rows ordered (c, *k) like the weights
        np.moveaxis(_windows(xp, kernel, strides, dil, out_sp), tuple(range(-len(kernel), 0)),
                    tuple(range(2, 2 + len(kernel)))))
    cols = cols.reshape(n, g, cg * taps, -1)
    wm = w.reshape(g, cout // g, cg * taps)
    if g == 1 and n == 1:
        return np.matmul(wm[0], cols[0, 0]).reshape((n, cout) + out_sp)
    return np.matmul(wm, cols).reshape((n, cout) + out_sp)


def _phase_planes(x, pad, strides, out_sp, reach):
    """The zero-padded input split into stride phases, flattened: [s_h, s_w, N, C, Hq * Wq] with
    plane (p, q)[a, b] = padded_x[a * s_h + p, b * s_w + q]. A kernel tap at padded offset
    (i, j) = (u * s_h + p, v * s_w + q) then reads plane (p, q) at flat offset u * Wq + v for every
    output position (row pitch Wq), a contiguous slice. Hq = oh + reach_h + 1 (the extra row keeps
    every tap's slice inside the plane), Wq = ow + reach_w, where reach = max tap offset in
    phase units. x is [N, C, H, W]; pad (top, bottom, left, right)."""
    n, c, h, wd = x.shape
    (sh, sw), (oh, ow), (rh, rw) = strides, out_sp, reach
    hq, wq = oh + rh + 1, ow + rw
    planes = np.zeros((sh, sw, n, c, hq, wq), x.dtype)
    for p in range(sh):
        a0 = max(0, -(-(pad[0] - p) // sh))  # first plane row holding real data
        a1 = min(hq, -(-(h + pad[0] - p) // sh))
        for q in range(sw):
            b0 = max(0, -(-(pad[2] - q) // sw))
            b1 = min(wq, -(-(wd + pad[2] - q) // sw))
            if a1 > a0 and b1 > b0:
                r0, c0 = a0 * sh + p - pad[0], b0 * sw + q - pad[2]
                planes[p, q, :, :, a0:a1, b0:b1] = x[:, :, r0:r0 + (a1 - a0 - 1) * sh + 1:sh,
                                                     c0:c0 + (b1 - b0 - 1) * sw + 1:sw]
    return planes.reshape(sh, sw, n, c, hq * wq), wq


def _conv_depthwise(x, w, strides, dil, pad, out_sp):
    """Depthwise 2-D conv (one filter per channel, x unpadded [N, C, H, W]): per kernel tap one
    multiply and one add over a contiguous slice of the stride-phase plane (:func:`_phase_planes`;
    NumPy's inner loops then run over whole planes instead of one output row), accumulating in
    fp32 in tap order; channel blocks of about one tile run on threads."""
    n, c = x.shape[:2]
    kh, kw = w.shape[2:]
    (sh, sw), (dh, dw), (oh, ow) = strides, dil, out_sp
    taps = [(ti, tj) + divmod(ti * dh, sh) + divmod(tj * dw, sw) for ti in range(kh) for tj in range(kw)]
    reach = (max(t[2] for t in taps), max(t[4] for t in taps))
    planes, wq = _phase_planes(x, pad, strides, out_sp, reach)
    length = oh * wq
    y = np.empty((n, c, oh, ow), x.dtype)

    def block(a, b):
        step = max(1, (1 << 15) // max(1, n * length))
        for c0 in range(a, b, step):
            c1 = min(b, c0 + step)
            acc = np.empty((n, c1 - c0, length), x.dtype)
            tmp = np.empty_like(acc)
            for k, (ti, tj, u, p, v, q) in enumerate(taps):
                off = u * wq + v
                src = planes[p, q, :, c0:c1, off:off + length]
                wk = w[c0:c1, 0, ti, tj].reshape(-1, 1)
                if k == 0:
                    np.multiply(src, wk, out=acc)
                else:
                    np.multiply(src, wk, out=tmp)
                    acc += tmp
            y[:, c0:c1] = acc.reshape(n, c1 - c0, oh, wq)[..., :ow]

    parallel_for(block, c, grain=max(1, (1 << 15) // max(1, n * length)))
    return y


def conv_kernel(attrs, x, w, b=None):
    """MIL ``conv`` (iOS15 conv.py): x[N, Cin, *sp] * weight[Cout, Cin/groups, *k] + bias[Cout],
    with ``strides``, ``dilations``, custom ``pad`` and ``groups``; 1 to 3 spatial axes (3-D and
    depthwise 3-D run as im2col + GEMM)."""
    nsp = x.ndim - 2
    kernel = w.shape[2:]
    strides = spatial_attr(attrs, nsp, "strides", 1)
    dil = spatial_attr(attrs, nsp, "dilations", 1)
    pad = tuple(attrs.get("pad") or (0,) * (2 * nsp))
    g = attrs.get("groups", 1)
    cin, cout = x.shape[1], w.shape[0]
    out_sp = tuple(
        out_size(x.shape[2 + i], kernel[i], strides[i], dil[i], pad[2 * i], pad[2 * i + 1]) for i in range(nsp)
    )
    if g == cin and w.shape[1] == 1 and cout == cin and g > 1 and nsp <= 2:
        if nsp == 1:  # as a 2-D conv over a [1, L] image
            y = _conv_depthwise(x[:, :, None], w[:, :, None], (1,) + strides, (1,) + dil, (0, 0) + pad,
                                (1,) + out_sp)[:, :, 0]
        else:
            y = _conv_depthwise(x, w, strides, dil, pad, out_sp)
    else:
        y = _conv_gemm(pad_array(x, pad), w, g, strides, dil, out_sp)
    if b is not None:
        y += b.reshape((1, cout) + (1,) * nsp).astype(y.dtype, copy=False)
    return np.ascontiguousarray(y, dtype=x.dtype)


def _t_pads(pad, nsp) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Split IR ``pad`` into torch's symmetric ``padding`` and, when asymmetric, an ``F.pad`` list
    (last axis first) with zero native padding."""
    pad = tuple(pad or (0,) * (2 * nsp))
    if all(pad[2 * i] == pad[2 * i + 1] for i in range(nsp)):
        return pad[0::2], None
    return (0,) * nsp, tuple(p for i in reversed(range(nsp)) for p in (pad[2 * i], pad[2 * i + 1]))


def _t_conv(attrs, x, w, b=None):
    """Torch kernel of ``conv``: ``F.conv1d`` / ``F.conv2d`` / ``F.conv3d`` (cuDNN on CUDA)."""
    nsp = x.dim() - 2
    padding, explicit = _t_pads(attrs.get("pad"), nsp)
    if explicit is not None:
        x = F.pad(x, explicit)
    conv = (F.conv1d, F.conv2d, F.conv3d)[nsp - 1]
    return conv(x, w, b, stride=spatial_attr(attrs, nsp, "strides", 1), padding=padding,
                dilation=spatial_attr(attrs, nsp, "dilations", 1), groups=attrs.get("groups", 1))


def _emit_conv(ctx, attrs, ins, nm):
    nsp = ins[0].rank - 2
    kw = {"bias": ins[2]} if len(ins) == 3 else {}
    return ctx.mb.conv(
        x=ins[0], weight=ins[1], strides=list(spatial_attr(attrs, nsp, "strides", 1)), pad_type="custom",
        pad=list(attrs.get("pad") or (0,) * (2 * nsp)), dilations=list(spatial_attr(attrs, nsp, "dilations", 1)),
        groups=attrs.get("groups", 1), name=nm, **kw,
    )


def _ca_conv(ctx, a, ins, node):
    """``conv`` in Core AI ops: explicit zero padding (``pad``), ``conv2d`` (1-D convs as 2-D
    with a unit height), the bias added. 3-D convs have no Core AI form in tlc yet."""
    ca = ctx.ca
    xt = node.inputs[0].type
    nsp = xt.rank - 2
    x, w = ins[0], ins[1]
    strides = list(spatial_attr(a, nsp, "strides", 1))
    dil = list(spatial_attr(a, nsp, "dilations", 1))
    pad = list(a.get("pad") or (0,) * (2 * nsp))
    if any(pad):
        x = ca.pad(x, np.asarray([0, 0, 0, 0] + pad, np.uint32), ctx.const(np.asarray(0, DTYPES[xt.dtype])))
    if nsp == 1:
        wt = node.inputs[1].type
        x = ca.expand_dims(x, [2])
        w = ca.reshape(w, [wt.shape[0], wt.shape[1], 1, wt.shape[2]])
        strides, dil = [1] + strides, [1] + dil
    y = ca.conv2d(x, w, strides, dil, a.get("groups", 1))
    if nsp == 1:
        y = ctx.reshaped(y)
    if len(ins) == 3:
        y = ca.broadcasting_add(y, ca.reshape(ins[2], [1, node.out.type.shape[1]] + [1] * nsp))
    return y


def _ane_conv(i, o, a):
    if any(d != 1 for d in a.get("dilations") or ()):
        return Reason("dilated convolution is not run on the ANE (hollance/neural-engine unsupported-layers.md, marked "
                      "\"possibly wrong\")", "dilated_conv")
    return None


def _flops_conv(i, o, a):
    w = i[1]
    return 2 * o[0].size * int(np.prod(w.shape[1:]))


register("conv", infer=_infer_conv, numpy=conv_kernel, emit_mil=_emit_conv, ane=_ane_conv, flops=_flops_conv,
         scale=PositiveScale("product", (0, 1), bias=2),
         emit_coreai=_ca_conv, coreai_limit=lambda i, o, a: None if i[0].rank in (3, 4) else f"in {i[0].rank - 2}-D in tlc yet",
         mil_inputs=("x", "weight", "bias"),
         from_mil=lambda v: window_from_mil(v, v["weight"].shape[2:], ("x", "weight", "bias")),
         torch=_t_conv)
