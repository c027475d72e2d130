"""Convolution and pooling: ``conv``, ``max_pool``, ``avg_pool`` (1-D and 2-D).

Semantics: coremltools MIL ``conv.py`` and ``pool.py`` (iOS15 opset) with ``pad_type="custom"``:
``pad`` lists (before, after) per spatial axis, flattened: ``[h_before, h_after, w_before, w_after]``.
Layout is channels-first: x[N, C, *spatial], weight[C_out, C_in / groups, *kernel].

Kernels: im2col (a strided window view, contracted with the weights by BLAS ``tensordot``);
1x1 stride-1 convs are a single matmul; depthwise convs accumulate one shifted multiply-add per
kernel tap, which avoids the im2col copy. Torch kernels call ``F.conv{1,2}d`` / ``F.{max,avg}_pool2d``
(1-D as 2-D with a unit height), padding natively where the padding is symmetric and, for pools,
at most half the kernel (torch's limits); otherwise they pad explicitly first.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import IRError
from ..ir import TensorType
from . import register
from .elementwise import FLOAT, _same_dtype

POOL_MAX_KERNEL = 13  # hollance/neural-engine unsupported-layers.md; issues #1, #2
POOL_MAX_STRIDE = 2


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


def _window_from_mil(vals, kernel, tensor_names):
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


def _spatial(attrs, nsp, key, default):
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


def _window_shapes(x: TensorType, kernel, attrs, ceil_mode=False):
    nsp = len(kernel)
    strides = _spatial(attrs, nsp, "strides", 1)
    dil = _spatial(attrs, nsp, "dilations", 1)
    pad = tuple(attrs.get("pad") or (0,) * (2 * nsp))
    if len(pad) != 2 * nsp or len(strides) != nsp or len(dil) != nsp:
        raise IRError(f"strides/dilations/pad do not match {nsp} spatial axes")
    return tuple(
        out_size(x.shape[2 + i], kernel[i], strides[i], dil[i], pad[2 * i], pad[2 * i + 1], ceil_mode)
        for i in range(nsp)
    )


def _infer_conv(in_types, attrs):
    x, w = in_types[0], in_types[1]
    _same_dtype(in_types, FLOAT)
    g = attrs.get("groups", 1)
    if x.rank not in (3, 4) or w.rank != x.rank:
        raise IRError(f"conv supports 1-D/2-D: x{list(x.shape)}, weight{list(w.shape)}")
    if x.shape[1] != w.shape[1] * g or w.shape[0] % g:
        raise IRError(f"conv channels: x has {x.shape[1]}, weight{list(w.shape)} with groups={g}")
    if len(in_types) == 3 and in_types[2].shape != (w.shape[0],):
        raise IRError(f"conv bias must be [{w.shape[0]}], got {list(in_types[2].shape)}")
    sp = _window_shapes(x, w.shape[2:], attrs)
    return [TensorType(x.dtype, (x.shape[0], w.shape[0]) + sp)]


def _pad_array(x, pad, value=0.0):
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


def _conv(attrs, x, w, b=None):
    """MIL ``conv`` (iOS15 conv.py): x[N, Cin, *sp] * weight[Cout, Cin/groups, *k] + bias[Cout],
    with ``strides``, ``dilations``, custom ``pad`` and ``groups``."""
    nsp = x.ndim - 2
    kernel = w.shape[2:]
    strides = _spatial(attrs, nsp, "strides", 1)
    dil = _spatial(attrs, nsp, "dilations", 1)
    pad = tuple(attrs.get("pad") or (0,) * (2 * nsp))
    g = attrs.get("groups", 1)
    n, cin = x.shape[:2]
    cout = w.shape[0]
    out_sp = tuple(
        out_size(x.shape[2 + i], kernel[i], strides[i], dil[i], pad[2 * i], pad[2 * i + 1]) for i in range(nsp)
    )
    xp = _pad_array(x, pad)
    if g == 1 and all(k == 1 for k in kernel) and all(s == 1 for s in strides):
        y = np.matmul(w.reshape(cout, cin), xp.reshape(n, cin, -1)).reshape((n, cout) + out_sp)
    elif g == cin and w.shape[1] == 1 and cout == cin:
        # depthwise: one shifted multiply-add per kernel tap
        y = np.zeros((n, cout) + out_sp, dtype=x.dtype)
        for tap in np.ndindex(*kernel):
            sl = (slice(None), slice(None)) + tuple(
                slice(t * d, t * d + (o - 1) * s + 1, s) for t, d, o, s in zip(tap, dil, out_sp, strides)
            )
            wt = w[(slice(None), 0) + tap].reshape((1, cout) + (1,) * nsp)
            y += xp[sl] * wt
    else:
        win = _windows(xp, kernel, strides, dil, out_sp)  # [N, Cin, *out, *k]
        cg, og = cin // g, cout // g
        outs = []
        kaxes = tuple(range(2 + nsp, 2 + 2 * nsp))
        for gi in range(g):
            wg = w[gi * og:(gi + 1) * og]  # [og, cg, *k]
            wi = win[:, gi * cg:(gi + 1) * cg]
            yg = np.tensordot(wi, wg, axes=((1,) + kaxes, (1,) + tuple(range(2, 2 + nsp))))  # [N, *out, og]
            outs.append(np.moveaxis(yg, -1, 1))
        y = outs[0] if g == 1 else np.concatenate(outs, axis=1)
    if b is not None:
        y = y + b.reshape((1, cout) + (1,) * nsp)
    return np.ascontiguousarray(y, dtype=x.dtype)


def _t_pads(pad, nsp) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Split IR ``pad`` into torch's symmetric ``padding`` and, when asymmetric, an ``F.pad`` list
    (last axis first) with zero native padding."""
    pad = tuple(pad or (0,) * (2 * nsp))
    if all(pad[2 * i] == pad[2 * i + 1] for i in range(nsp)):
        return pad[0::2], None
    return (0,) * nsp, tuple(p for i in reversed(range(nsp)) for p in (pad[2 * i], pad[2 * i + 1]))


def _t_conv(attrs, x, w, b=None):
    """Torch kernel of ``conv``: ``F.conv1d`` / ``F.conv2d`` (cuDNN on CUDA)."""
    nsp = x.dim() - 2
    padding, explicit = _t_pads(attrs.get("pad"), nsp)
    if explicit is not None:
        x = F.pad(x, explicit)
    conv = F.conv1d if nsp == 1 else F.conv2d
    return conv(x, w, b, stride=_spatial(attrs, nsp, "strides", 1), padding=padding,
                dilation=_spatial(attrs, nsp, "dilations", 1), groups=attrs.get("groups", 1))


def _emit_conv(ctx, attrs, ins, nm):
    nsp = ins[0].rank - 2
    kw = {"bias": ins[2]} if len(ins) == 3 else {}
    return ctx.mb.conv(
        x=ins[0], weight=ins[1], strides=list(_spatial(attrs, nsp, "strides", 1)), pad_type="custom",
        pad=list(attrs.get("pad") or (0,) * (2 * nsp)), dilations=list(_spatial(attrs, nsp, "dilations", 1)),
        groups=attrs.get("groups", 1), name=nm, **kw,
    )


def _ane_conv(i, o, a):
    if any(d != 1 for d in a.get("dilations") or ()):
        return "dilated convolution is not run on the ANE (hollance/neural-engine unsupported-layers.md)"
    return None


def _flops_conv(i, o, a):
    w = i[1]
    return 2 * o[0].size * int(np.prod(w.shape[1:]))


register("conv", infer=_infer_conv, numpy=_conv, emit_mil=_emit_conv, ane=_ane_conv, flops=_flops_conv,
         mil_inputs=("x", "weight", "bias"),
         from_mil=lambda v: _window_from_mil(v, v["weight"].shape[2:], ("x", "weight", "bias")),
         torch=_t_conv)


# ---------------------------------------------------------------------------------------- pools


def _infer_pool(in_types, attrs):
    x = in_types[0]
    k = tuple(attrs["kernel_sizes"])
    if x.rank != 2 + len(k):
        raise IRError(f"pool kernel {list(k)} does not fit input {list(x.shape)}")
    sp = _window_shapes(x, k, attrs, attrs.get("ceil_mode", False))
    return [TensorType(x.dtype, x.shape[:2] + sp)]


def _pool_windows(attrs, x, fill):
    k = tuple(attrs["kernel_sizes"])
    nsp = len(k)
    strides = _spatial(attrs, nsp, "strides", 1)
    pad = list(attrs.get("pad") or (0,) * (2 * nsp))
    ceil_mode = attrs.get("ceil_mode", False)
    out_sp = tuple(
        out_size(x.shape[2 + i], k[i], strides[i], 1, pad[2 * i], pad[2 * i + 1], ceil_mode) for i in range(nsp)
    )
    for i in range(nsp):  # ceil_mode windows may run past the right padding: pad further
        need = (out_sp[i] - 1) * strides[i] + k[i] - (x.shape[2 + i] + pad[2 * i] + pad[2 * i + 1])
        if need > 0:
            pad[2 * i + 1] += need
    xp = _pad_array(x, pad, fill)
    return _windows(xp, k, strides, (1,) * nsp, out_sp), pad, out_sp, strides


def _max_pool(attrs, x):
    """MIL ``max_pool`` (iOS15 pool.py): window max; padding never wins (filled with -inf)."""
    win, *_ = _pool_windows(attrs, x, -np.inf)
    nsp = x.ndim - 2
    return np.ascontiguousarray(win.max(axis=tuple(range(-nsp, 0))))


def _avg_pool(attrs, x):
    """MIL ``avg_pool`` (iOS15 pool.py): window mean; ``exclude_padding_from_average`` divides by
    the count of real (unpadded) elements, as torch's ``count_include_pad=False``."""
    win, pad, out_sp, strides = _pool_windows(attrs, x, 0.0)
    nsp = x.ndim - 2
    axes = tuple(range(-nsp, 0))
    s = win.sum(axis=axes)
    k = tuple(attrs["kernel_sizes"])
    if attrs.get("exclude_padding_from_average", False):
        ones = _pad_array(np.ones((1, 1) + x.shape[2:], x.dtype), pad, 0.0)
        cnt = _windows(ones, k, strides, (1,) * nsp, out_sp).sum(axis=axes)
        return (s / cnt).astype(x.dtype)
    # torch (count_include_pad=True) counts explicit padding but not ceil_mode overhang
    orig = list(attrs.get("pad") or (0,) * (2 * nsp))
    ones = _pad_array(np.ones((1, 1) + x.shape[2:], x.dtype), orig, 1.0)
    ones = _pad_array(ones, [0 if j % 2 == 0 else pad[j] - orig[j] for j in range(2 * nsp)], 0.0)
    cnt = _windows(ones, k, strides, (1,) * nsp, out_sp).sum(axis=axes)
    return (s / cnt).astype(x.dtype)


def _t_pool(kind):
    """Torch kernel of ``max_pool`` / ``avg_pool`` (1-D pools run as 2-D with a unit height).

    Native ``F.*_pool2d`` padding when it is symmetric and at most half the kernel (torch's rule;
    ``count_include_pad`` = not ``exclude_padding_from_average``, which counts explicit padding and
    not ``ceil_mode`` overhang, as the NumPy kernel). Otherwise the input is padded explicitly
    (with -inf for max; the right side also by the ``ceil_mode`` overhang) and the average divides
    window sums by the count of counted elements, pooled from a ones tensor made on the device.
    """

    def kernel(attrs, x):
        k = tuple(attrs["kernel_sizes"])
        nsp = len(k)
        strides = _spatial(attrs, nsp, "strides", 1)
        pad = tuple(attrs.get("pad") or (0,) * (2 * nsp))
        ceil_mode = bool(attrs.get("ceil_mode", False))
        if nsp == 1:
            x, k, strides, pad = x.unsqueeze(2), (1,) + k, (1,) + strides, (0, 0) + pad
        half = pad[0::2]
        if all(pad[2 * i] == pad[2 * i + 1] and pad[2 * i] <= k[i] // 2 for i in range(2)):
            if kind == "max_pool":
                y = F.max_pool2d(x, k, strides, half, ceil_mode=ceil_mode)
            else:
                y = F.avg_pool2d(x, k, strides, half, ceil_mode=ceil_mode,
                                 count_include_pad=not attrs.get("exclude_padding_from_average", False))
            return y.squeeze(2) if nsp == 1 else y
        sp = x.shape[2:]
        out = [out_size(sp[i], k[i], strides[i], 1, pad[2 * i], pad[2 * i + 1], ceil_mode) for i in range(2)]
        extra = [max((out[i] - 1) * strides[i] + k[i] - (sp[i] + pad[2 * i] + pad[2 * i + 1]), 0) for i in range(2)]
        full = (pad[2], pad[3] + extra[1], pad[0], pad[1] + extra[0])  # F.pad order: last axis first
        if kind == "max_pool":
            y = F.max_pool2d(F.pad(x, full, value=-float("inf")), k, strides)
        else:
            s = F.avg_pool2d(F.pad(x, full), k, strides, divisor_override=1)
            ones = torch.ones((1, 1) + tuple(sp), dtype=x.dtype, device=x.device)
            if attrs.get("exclude_padding_from_average", False):
                cnt = F.pad(ones, full)
            else:  # explicit padding counts, ceil_mode overhang does not
                cnt = F.pad(F.pad(ones, (pad[2], pad[3], pad[0], pad[1]), value=1.0), (0, extra[1], 0, extra[0]))
            y = s / F.avg_pool2d(cnt, k, strides, divisor_override=1)
        y = y[:, :, :out[0], :out[1]]
        return y.squeeze(2) if nsp == 1 else y

    return kernel


def _emit_pool(kind):
    def emit(ctx, attrs, ins, nm):
        nsp = ins[0].rank - 2
        kw = dict(
            x=ins[0], kernel_sizes=list(attrs["kernel_sizes"]), strides=list(_spatial(attrs, nsp, "strides", 1)),
            pad_type="custom", pad=list(attrs.get("pad") or (0,) * (2 * nsp)),
            ceil_mode=attrs.get("ceil_mode", False), name=nm,
        )
        if kind == "avg_pool":
            kw["exclude_padding_from_average"] = attrs.get("exclude_padding_from_average", False)
        return getattr(ctx.mb, kind)(**kw)

    return emit


def _ane_pool(i, o, a):
    if max(a["kernel_sizes"]) > POOL_MAX_KERNEL:
        return f"pool kernel {max(a['kernel_sizes'])} > {POOL_MAX_KERNEL} is not run on the ANE (hollance/neural-engine #1, #2)"
    if max(a.get("strides") or (1,)) > POOL_MAX_STRIDE:
        return f"pool stride > {POOL_MAX_STRIDE} is not run on the ANE (hollance/neural-engine unsupported-layers.md)"
    return None


def _flops_pool(i, o, a):
    return o[0].size * int(np.prod(a["kernel_sizes"]))


def _pool_from_mil(v):
    arrays, attrs = _window_from_mil(v, tuple(int(k) for k in v["kernel_sizes"]), ("x",))
    attrs.pop("dilations")
    return arrays, attrs


for _kind, _fn in (("max_pool", _max_pool), ("avg_pool", _avg_pool)):
    register(_kind, infer=_infer_pool, numpy=_fn, emit_mil=_emit_pool(_kind), ane=_ane_pool, flops=_flops_pool,
             from_mil=_pool_from_mil,
             torch=_t_pool(_kind))
