"""Pooling: ``max_pool`` and ``avg_pool`` (1-D, 2-D and 3-D).

Semantics: coremltools MIL ``pool.py`` (iOS15 opset) with ``pad_type="custom"`` as for ``conv``
(:mod:`tlc.ops.conv`, whose window helpers these rows share). The NumPy kernels are the conv
kernels' tap loop with ``maximum`` / ``add`` over the padded input; channel blocks spread over
threads. Torch kernels call ``F.{max,avg}_pool{2,3}d`` (1-D as 2-D with a unit height), padding
natively where the padding is symmetric and at most half the kernel (torch's limits); otherwise
they pad explicitly first.
"""
from __future__ import annotations

import numpy as np
from .._lazy import F, torch

from ..errors import IRError
from ..dtypes import DTYPES, TensorType
from .table import COMMUTES, Reason, register
from .conv import conv_taps, out_size, pad_array, spatial_attr, window_from_mil, window_shapes
from .parallel import parallel_for

POOL_MAX_KERNEL = 13  # hollance/neural-engine unsupported-layers.md; issues #1, #2
POOL_MAX_STRIDE = 2


# ---------------------------------------------------------------------------------------- pools


def _infer_pool(in_types, attrs):
    x = in_types[0]
    k = tuple(attrs["kernel_sizes"])
    if x.rank != 2 + len(k):
        raise IRError(f"pool kernel {list(k)} does not fit input {list(x.shape)}")
    sp = window_shapes(x, k, attrs, attrs.get("ceil_mode", False))
    return [TensorType(x.dtype, x.shape[:2] + sp)]


def pool_pads(attrs, shape) -> tuple[list[int], tuple[int, ...]]:
    """(padding per spatial side, output size) of a pool over an input of ``shape``: the
    explicit ``pad`` plus, on the right, what ``ceil_mode`` windows run past it."""
    k = tuple(attrs["kernel_sizes"])
    nsp = len(k)
    strides = spatial_attr(attrs, nsp, "strides", 1)
    pad = list(attrs.get("pad") or (0,) * (2 * nsp))
    ceil_mode = attrs.get("ceil_mode", False)
    out_sp = tuple(
        out_size(shape[2 + i], k[i], strides[i], 1, pad[2 * i], pad[2 * i + 1], ceil_mode) for i in range(nsp)
    )
    for i in range(nsp):  # ceil_mode windows may run past the right padding: pad further
        need = (out_sp[i] - 1) * strides[i] + k[i] - (shape[2 + i] + pad[2 * i] + pad[2 * i + 1])
        if need > 0:
            pad[2 * i + 1] += need
    return pad, out_sp


def _pool_input(attrs, x, fill):
    """Padded input, the padding used, output size, strides and taps of a pool."""
    k = tuple(attrs["kernel_sizes"])
    nsp = len(k)
    strides = spatial_attr(attrs, nsp, "strides", 1)
    pad, out_sp = pool_pads(attrs, x.shape)
    xp = pad_array(x, pad, fill)
    return xp, pad, out_sp, list(conv_taps(k, strides, (1,) * nsp, out_sp))


def tap_reduce(op, xp, taps, out_sp):
    """``op``-reduce (``np.maximum`` / ``np.add``) the taps' views of xp[N, C, ...] into a new
    [N, C, *out_sp] array, in tap order; channel blocks run on threads."""
    n, c = xp.shape[:2]
    y = np.empty((n, c) + out_sp, xp.dtype)

    def block(a, b):
        yb = y[:, a:b]
        for i, (_, sl) in enumerate(taps):
            src = xp[(slice(None), slice(a, b)) + sl[2:]]
            if i == 0:
                yb[...] = src
            else:
                op(yb, src, out=yb)

    parallel_for(block, c, grain=max(1, (1 << 15) // max(1, n * int(np.prod(out_sp)))))
    return y


def _max_pool(attrs, x):
    """MIL ``max_pool`` (iOS15 pool.py): window max; padding never wins (filled with -inf)."""
    xp, _, out_sp, taps = _pool_input(attrs, x, -np.inf)
    return tap_reduce(np.maximum, xp, taps, out_sp)


def _avg_pool(attrs, x):
    """MIL ``avg_pool`` (iOS15 pool.py): window mean; ``exclude_padding_from_average`` divides by
    the count of real (unpadded) elements, as torch's ``count_include_pad=False``."""
    xp, pad, out_sp, taps = _pool_input(attrs, x, 0.0)
    s = tap_reduce(np.add, xp, taps, out_sp)
    nsp = x.ndim - 2
    if attrs.get("exclude_padding_from_average", False):
        ones = pad_array(np.ones((1, 1) + x.shape[2:], x.dtype), pad, 0.0)
    else:  # torch (count_include_pad=True) counts explicit padding but not ceil_mode overhang
        orig = list(attrs.get("pad") or (0,) * (2 * nsp))
        ones = pad_array(np.ones((1, 1) + x.shape[2:], x.dtype), orig, 1.0)
        ones = pad_array(ones, [0 if j % 2 == 0 else pad[j] - orig[j] for j in range(2 * nsp)], 0.0)
    s /= tap_reduce(np.add, ones, taps, out_sp)
    return s


def _t_pool(kind):
    """Torch kernel of ``max_pool`` / ``avg_pool`` (1-D pools run as 2-D with a unit height; 3-D
    with ``F.*_pool3d``).

    Native ``F.*_pool{2,3}d`` padding when it is symmetric and at most half the kernel (torch's
    rule; ``count_include_pad`` = not ``exclude_padding_from_average``, which counts explicit
    padding and not ``ceil_mode`` overhang, as the NumPy kernel). Otherwise the input is padded
    explicitly (with -inf for max; the right side also by the ``ceil_mode`` overhang) and the
    average divides window sums by the count of counted elements, pooled from a ones tensor made on
    the device.
    """

    def kernel(attrs, x):
        k = tuple(attrs["kernel_sizes"])
        nsp = len(k)
        strides = spatial_attr(attrs, nsp, "strides", 1)
        pad = tuple(attrs.get("pad") or (0,) * (2 * nsp))
        ceil_mode = bool(attrs.get("ceil_mode", False))
        one_d = nsp == 1
        if one_d:
            x, k, strides, pad = x.unsqueeze(2), (1,) + k, (1,) + strides, (0, 0) + pad
        m = len(k)
        mp, ap = (F.max_pool2d, F.avg_pool2d) if m == 2 else (F.max_pool3d, F.avg_pool3d)
        half = pad[0::2]
        if all(pad[2 * i] == pad[2 * i + 1] and pad[2 * i] <= k[i] // 2 for i in range(m)):
            if kind == "max_pool":
                y = mp(x, k, strides, half, ceil_mode=ceil_mode)
            else:
                y = ap(x, k, strides, half, ceil_mode=ceil_mode,
                       count_include_pad=not attrs.get("exclude_padding_from_average", False))
            return y.squeeze(2) if one_d else y
        sp = x.shape[2:]
        out = [out_size(sp[i], k[i], strides[i], 1, pad[2 * i], pad[2 * i + 1], ceil_mode) for i in range(m)]
        extra = [max((out[i] - 1) * strides[i] + k[i] - (sp[i] + pad[2 * i] + pad[2 * i + 1]), 0) for i in range(m)]
        full = tuple(v for i in reversed(range(m)) for v in (pad[2 * i], pad[2 * i + 1] + extra[i]))  # last axis first
        if kind == "max_pool":
            y = mp(F.pad(x, full, value=-float("inf")), k, strides)
        else:
            s = ap(F.pad(x, full), k, strides, divisor_override=1)
            ones = torch.ones((1, 1) + tuple(sp), dtype=x.dtype, device=x.device)
            if attrs.get("exclude_padding_from_average", False):
                cnt = F.pad(ones, full)
            else:  # explicit padding counts, ceil_mode overhang does not
                explicit = tuple(v for i in reversed(range(m)) for v in (pad[2 * i], pad[2 * i + 1]))
                cnt = F.pad(F.pad(ones, explicit, value=1.0), tuple(v for i in reversed(range(m)) for v in (0, extra[i])))
            y = s / ap(cnt, k, strides, divisor_override=1)
        y = y[(slice(None), slice(None)) + tuple(slice(0, o) for o in out)]
        return y.squeeze(2) if one_d else y

    return kernel


def _emit_pool(kind):
    def emit(ctx, attrs, ins, nm):
        nsp = ins[0].rank - 2
        kw = dict(
            x=ins[0], kernel_sizes=list(attrs["kernel_sizes"]), strides=list(spatial_attr(attrs, nsp, "strides", 1)),
            pad_type="custom", pad=list(attrs.get("pad") or (0,) * (2 * nsp)),
            ceil_mode=attrs.get("ceil_mode", False), name=nm,
        )
        if kind == "avg_pool":
            kw["exclude_padding_from_average"] = attrs.get("exclude_padding_from_average", False)
        return getattr(ctx.mb, kind)(**kw)

    return emit


def _coreai_pool(kind):
    """max_pool / avg_pool in Core AI ops: explicit padding (-inf / the lowest finite value for max,
    0 for avg; the ``ceil_mode`` overhang included), then ``maxpool2d`` or ``sumpool2d`` divided by
    each window's count (explicit padding counted unless ``exclude_padding_from_average``, the
    overhang never, as the NumPy kernel). 1-D pools run as 2-D with a unit height."""
    def emit(ctx, attrs, ins, node):
        ca = ctx.ca
        xt = node.inputs[0].type
        nsp = xt.rank - 2
        pads, out_sp = pool_pads(attrs, xt.shape)
        k = list(attrs["kernel_sizes"])
        st = list(spatial_attr(attrs, nsp, "strides", 1))
        dt = DTYPES[xt.dtype]
        fill = np.finfo(dt).min if kind == "max_pool" else 0
        x = ins[0]
        if any(pads):
            x = ca.pad(x, ctx.u32([0, 0, 0, 0] + pads), ctx.const(np.asarray(fill, dt)))
        if nsp == 1:
            x, k, st, pads = ca.expand_dims(x, [2]), [1] + k, [1] + st, [0, 0] + pads
        out2 = tuple(xt.shape[:2]) + ((1,) if nsp == 1 else ()) + tuple(out_sp)
        if kind == "max_pool":
            from coreai.authoring import TensorType as CATensorType

            y = ca.maxpool2d(CATensorType(out2, dt), x, ctx.u32(k), ctx.u32(st), ctx.u32([1, 1]), False)
        else:
            y = ca.sumpool2d(x, ctx.u32(k), ctx.u32(st), ctx.u32([1, 1]))
            orig = (xt.shape[2:] if nsp == 2 else (1,) + tuple(xt.shape[2:]))
            explicit = list(attrs.get("pad") or (0,) * (2 * nsp))
            explicit = explicit if nsp == 2 else [0, 0] + explicit
            inside = np.pad(np.ones((1, 1) + tuple(orig), np.float32),
                            [(0, 0), (0, 0)] + [(explicit[2 * i], explicit[2 * i + 1]) for i in range(2)],
                            constant_values=0.0 if attrs.get("exclude_padding_from_average", False) else 1.0)
            inside = np.pad(inside, [(0, 0), (0, 0)] + [(0, pads[2 * i] + pads[2 * i + 1] - explicit[2 * i]
                                                         - explicit[2 * i + 1]) for i in range(2)])
            taps = list(conv_taps(tuple(k), tuple(st), (1, 1), out2[2:]))
            count = tap_reduce(np.add, inside, taps, out2[2:])
            y = ca.broadcasting_divide(y, ctx.const(count.astype(dt)))
        return ctx.reshaped(y) if nsp == 1 else y

    return emit


def _ane_pool(i, o, a):
    if max(a["kernel_sizes"]) > POOL_MAX_KERNEL:
        return Reason(f"pool kernel {max(a['kernel_sizes'])} > {POOL_MAX_KERNEL} is not run on the ANE "
                      f"(hollance/neural-engine #1, #2)", "pool_window")
    if max(a.get("strides") or (1,)) > POOL_MAX_STRIDE:
        return Reason(f"pool stride > {POOL_MAX_STRIDE} is not run on the ANE (hollance/neural-engine "
                      f"unsupported-layers.md)", "pool_window")
    return None


def _flops_pool(i, o, a):
    return o[0].size * int(np.prod(a["kernel_sizes"]))


def _pool_from_mil(v):
    arrays, attrs = window_from_mil(v, tuple(int(k) for k in v["kernel_sizes"]), ("x",))
    attrs.pop("dilations")
    return arrays, attrs


for _kind, _fn in (("max_pool", _max_pool), ("avg_pool", _avg_pool)):
    register(_kind, infer=_infer_pool, numpy=_fn, emit_mil=_emit_pool(_kind), ane=_ane_pool, flops=_flops_pool, scale=COMMUTES,
             from_mil=_pool_from_mil,
             torch=_t_pool(_kind), emit_coreai=_coreai_pool(_kind),
             coreai_limit=lambda i, o, a: None if i[0].rank in (3, 4) else f"in {i[0].rank - 2}-D in tlc yet")
