"""Convolution: ``conv`` and ``conv_transpose`` (1-D, 2-D and 3-D); pooling is in
:mod:`tlc.ops.pool`, which shares the window helpers here.

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
from .._lazy import F, torch

from ..errors import IRError
from ..ir import DTYPES, TensorType
from . import register
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
    from . import mil_attr

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
        return "dilated convolution is not run on the ANE (hollance/neural-engine unsupported-layers.md)"
    return None


def _flops_conv(i, o, a):
    w = i[1]
    return 2 * o[0].size * int(np.prod(w.shape[1:]))


register("conv", infer=_infer_conv, numpy=conv_kernel, emit_mil=_emit_conv, ane=_ane_conv, flops=_flops_conv,
         emit_coreai=_ca_conv, coreai_limit=lambda i, o, a: None if i[0].rank in (3, 4) else f"in {i[0].rank - 2}-D in tlc yet",
         mil_inputs=("x", "weight", "bias"),
         from_mil=lambda v: window_from_mil(v, v["weight"].shape[2:], ("x", "weight", "bias")),
         torch=_t_conv)


# ------------------------------------------------------------------------------ conv_transpose


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
    op = spatial_attr(attrs, nsp, "output_padding", 0)
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
    from . import mil_attr

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
         emit_coreai=_ca_conv_transpose, coreai_limit=_ca_conv_transpose_limit,
         flops=_flops_conv_transpose, mil_inputs=("x", "weight", "bias"), from_mil=_conv_transpose_from_mil,
         torch=_t_conv_transpose)
