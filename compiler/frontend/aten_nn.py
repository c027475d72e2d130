"""ATen -> IR lowerings for neural-network layers: convolutions, normalizations, softmax, pooling
and padding (registered into :data:`tlc.frontend.common.LOWERINGS`); adaptive pooling and
resampling: :mod:`tlc.frontend.aten_resample`."""
from __future__ import annotations

import itertools

import numpy as np
import torch

from ..errors import FrontendError, UnsupportedOpError
from .. import dtypes
from .aten_reduce import var_mean
from .common import Const, lower, narrow, rank_of, shape_of, sub_name, take

# ----------------------------------------------------------------------------------------- conv


def _conv_pad(padding, kernel, dilation, nsp):
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * (2 * nsp)
        if padding == "same":
            pads = []
            for k, d in zip(kernel, dilation):
                tot = d * (k - 1)
                pads += [tot // 2, tot - tot // 2]
            return tuple(pads)
        raise FrontendError(f"conv padding {padding!r} unknown")
    padding = list(padding) if isinstance(padding, (list, tuple)) else [padding] * nsp
    if len(padding) == 1:
        padding = padding * nsp
    return tuple(p for p in padding for _ in range(2))


def _tuple(v, n):
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return tuple(v * n if len(v) == 1 else v)


@lower("aten.conv1d.default", "aten.conv2d.default", "aten.conv3d.default", "aten.conv1d.padding",
       "aten.conv2d.padding", "aten.conv3d.padding")
def _conv(L, x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    nsp = rank_of(w) - 2
    kernel = shape_of(w)[2:]
    dil = _tuple(dilation, nsp)
    attrs = {
        "strides": _tuple(stride, nsp),
        "pad": _conv_pad(padding, kernel, dil, nsp),
        "dilations": dil,
        "groups": int(groups),
    }
    return L.add("conv", [x, w] + ([b] if b is not None else []), attrs)


@lower("aten.convolution.default")
def _convolution(L, x, w, b, stride, padding, dilation, transposed, output_padding, groups):
    if transposed:
        return _conv_transpose(L, x, w, b, stride, padding, output_padding, groups, dilation)
    return _conv(L, x, w, b, stride, padding, dilation, groups)


@lower("aten.conv_transpose1d.default", "aten.conv_transpose2d.input", "aten.conv_transpose3d.input")
def _conv_transpose(L, x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """torch's transposed convolution -> ``conv_transpose`` (a computed weight needs iOS17+,
    where MIL conv_transpose takes a non-constant weight: iOS17 conv.py)."""
    nsp = rank_of(w) - 2
    attrs = {"strides": _tuple(stride, nsp), "pad": tuple(p for p in _tuple(padding, nsp) for _ in range(2)),
             "output_padding": _tuple(output_padding, nsp), "dilations": _tuple(dilation, nsp),
             "groups": int(groups)}
    return L.add("conv_transpose", [x, w] + ([b] if b is not None else []), attrs)


@lower("aten._native_batch_norm_legit_no_training.default")
def _bn_no_training(L, x, w, b, mean, var, momentum, eps):
    return (batch_norm_value(L, x, w, b, mean, var, eps), None, None)


@lower("aten.batch_norm.default")
def _batch_norm(L, x, w, b, mean, var, training, momentum, eps, cudnn_enabled=False):
    return batch_norm_value(L, x, w, b, mean, var, eps)


def batch_norm_value(L, x, w, b, mean, var, eps):
    ins = [x, mean, var]
    if w is not None or b is not None:
        c = shape_of(x)[1]
        tdt = dtypes.TORCH[L.v(x).type.dtype]
        ins += [w if w is not None else Const(torch.ones(c, dtype=tdt), L.node.name + "_gamma"),
                b if b is not None else Const(torch.zeros(c, dtype=tdt), L.node.name + "_beta")]
    return L.add("batch_norm", ins, {"epsilon": float(eps)})


@lower("aten.layer_norm.default")
def lower_layer_norm(L, x, shape, w=None, b=None, eps=1e-5, cudnn_enable=False):
    r = rank_of(x)
    axes = tuple(range(r - len(shape), r))
    ins = [x]
    if w is not None or b is not None:
        ins += [w if w is not None else Const(torch.ones(shape, dtype=dtypes.TORCH[L.v(x).type.dtype]), L.node.name + "_gamma")]
        if b is not None:
            ins.append(b)
    return L.add("layer_norm", ins, {"axes": axes, "epsilon": float(eps)})


@lower("aten.native_group_norm.default")
def _native_group_norm(L, x, w, b, n, c, hw, group, eps):
    """``native_group_norm`` -> ``group_norm``; its mean / rstd results ([N, G], biased variance),
    when read, as reductions over each group."""
    y = _group_norm(L, x, group, w, b, eps)
    if not (L.result_used(1) or L.result_used(2)):
        return (y, None, None)
    v = L.v(x)
    grouped = L.add("reshape", [v], {"shape": (v.type.shape[0], int(group), v.type.size //
                                               (v.type.shape[0] * int(group)))}, name=L.node.name + "_groups")
    var, mean = var_mean(L, grouped, -1, 0, False, "stats")
    rstd = L.add("rsqrt", [L.add("add", [var, L.scalar(float(eps), v.type.dtype)], name=L.node.name + "_veps")],
                 {"epsilon": 0.0}, name=L.node.name + "_rstd")
    return (y, mean, rstd)


@lower("aten.native_layer_norm.default")
def _native_layer_norm(L, x, shape, w, b, eps):
    y = lower_layer_norm(L, x, shape, w, b, eps)
    if not (L.result_used(1) or L.result_used(2)):
        return (y, None, None)
    v = L.v(x)  # mean / rstd over the normalized axes, kept as size-1 axes (torch's shapes)
    axes = tuple(range(v.type.rank - len(shape), v.type.rank))
    var, mean = var_mean(L, v, axes, 0, True, "stats")
    rstd = L.add("rsqrt", [L.add("add", [var, L.scalar(float(eps), v.type.dtype)], name=sub_name(L, "veps"))], {"epsilon": 0.0},
                 name=sub_name(L, "rstd"))
    return (y, mean, rstd)


@lower("aten._native_batch_norm_legit.default", "aten.native_batch_norm.default",
       "aten._native_batch_norm_legit.no_stats", "aten._native_batch_norm_legit_functional.default",
       "aten._batch_norm_with_update.default", "aten._batch_norm_with_update_functional.default")
def _batch_norm_any(L, x, w, b, *args):
    """Batch norm as torch's training mode computes it (batch statistics over every axis but 1;
    the biased variance normalizes, saved rstd = 1/sqrt(var + eps)) or, for the no-training
    overloads with running statistics, the inference ``batch_norm``. The running-statistics
    updates are buffer mutations, not outputs (tlc drops them)."""
    target = str(L.node.target)
    if "no_stats" in target:
        mean = var = None
        training, momentum, eps = args
    elif "with_update" in target:
        mean, var, momentum, eps = args
        training = True
    else:
        mean, var, training, momentum, eps = args
    n_out = len(L.node.meta["val"])
    if not training:
        return (batch_norm_value(L, x, w, b, mean, var, eps),) + (None,) * (n_out - 1)
    x = L.v(x)
    dt = x.type.dtype
    r = x.type.rank
    axes = tuple(i for i in range(r) if i != 1)
    shape = tuple(x.type.shape[1] if i == 1 else 1 for i in range(r))
    var_k, mean_k = var_mean(L, x, axes, 0, True, "bn")
    rstd_k = L.add("rsqrt", [L.add("add", [var_k, L.scalar(float(eps), dt)], name=sub_name(L, "veps"))], {"epsilon": 0.0},
                   name=sub_name(L, "rstd_k"))
    y = L.add("mul", [L.add("sub", [x, mean_k], name=sub_name(L, "cent")), rstd_k], name=sub_name(L, "norm"))
    if w is not None:
        y = L.add("mul", [y, L.add("reshape", [L.cast(w, dt)], {"shape": shape}, name=sub_name(L, "w"))], name=sub_name(L, "scaled"))
    if b is not None:
        y = L.add("add", [y, L.add("reshape", [L.cast(b, dt)], {"shape": shape}, name=sub_name(L, "b"))], name=sub_name(L, "out"))
    c = x.type.shape[1]
    mean = L.add("reshape", [mean_k], {"shape": (c,)}, name=sub_name(L, "mean"))
    rstd = L.add("reshape", [rstd_k], {"shape": (c,)}, name=sub_name(L, "rstd"))
    return (y, mean, rstd) + (None,) * (n_out - 3)


@lower("aten.group_norm.default")
def _group_norm(L, x, num_groups, w=None, b=None, eps=1e-5, cudnn_enabled=True):
    ins = [x]
    if w is not None or b is not None:
        c = shape_of(x)[1]
        tdt = dtypes.TORCH[L.v(x).type.dtype]
        ins += [w if w is not None else Const(torch.ones(c, dtype=tdt), L.node.name + "_gamma")]
        if b is not None:
            ins.append(b)
    return L.add("group_norm", ins, {"num_groups": int(num_groups), "epsilon": float(eps)})


@lower("aten.softmax.int", "aten._softmax.default")
def _softmax(L, x, dim, half_to_float=None):
    x = L.cast(x, L.out_type().dtype)
    return L.add("softmax", [x], {"axis": int(dim)})


def _pool_attrs(kernel, stride, padding, nsp, ceil_mode):
    k = _tuple(kernel, nsp)
    s = _tuple(stride, nsp) if stride not in (None, [], ()) else k
    p = _tuple(padding, nsp)
    return {"kernel_sizes": k, "strides": s, "pad": tuple(v for v in p for _ in range(2)), "ceil_mode": bool(ceil_mode)}


@lower("aten.max_pool1d.default", "aten.max_pool2d.default", "aten.max_pool3d.default")
def _max_pool(L, x, kernel, stride=(), padding=0, dilation=1, ceil_mode=False):
    nsp = rank_of(x) - 2
    a = _pool_attrs(kernel, stride, padding, nsp, ceil_mode)
    dil = _tuple(dilation, nsp)
    if any(d != 1 for d in dil):
        return _dilated_max_pool(L, L.v(x), a, dil)
    return L.add("max_pool", [x], a)


@lower("aten.max_pool2d_with_indices.default", "aten.max_pool3d_with_indices.default")
def _max_pool_with_indices(L, x, kernel, stride=(), padding=0, dilation=1, ceil_mode=False):
    if not L.result_used(1):
        return (_max_pool(L, x, kernel, stride, padding, dilation, ceil_mode), None)
    from ..ops.conv import out_size

    shape = shape_of(x)
    nsp = len(shape) - 2
    a = _pool_attrs(kernel, stride, padding, nsp, ceil_mode)
    k, st, dil = a["kernel_sizes"], a["strides"], _tuple(dilation, nsp)
    pad = a["pad"]
    out = [out_size(shape[2 + i], k[i], st[i], dil[i], pad[2 * i], pad[2 * i + 1], ceil_mode) for i in range(nsp)]
    axes = [[[o * st[i] - pad[2 * i] + t * dil[i] for t in range(k[i])] for o in range(out[i])] for i in range(nsp)]
    return window_argmax(L, L.v(x), axes)


def window_argmax(L, x, axes: list):
    """Max pooling with torch's indices, for any windows: ``axes[i][o]`` lists the input positions
    (along spatial axis i; out-of-range ones are padding) of output o's window. The spatial axes
    are flattened; one ``gather`` with a constant [outputs, taps] table reads every window (padding
    reads a -inf column appended to the input), ``reduce_max`` gives the values and
    ``reduce_argmax`` (first maximum, NaN first, as torch) picks the tap, mapped to the flat input
    index torch reports by a second constant table. Returns (values, int32 indices)."""
    shape = x.type.shape
    n, c, sp = shape[0], shape[1], shape[2:]
    size = int(np.prod(sp))
    rows, flats = [], []
    for window in itertools.product(*[range(len(a)) for a in axes]):
        taps = list(itertools.product(*[axes[i][o] for i, o in enumerate(window)]))
        flat = [int(np.ravel_multi_index(t, sp)) if all(0 <= t[i] < sp[i] for i in range(len(sp))) else size
                for t in taps]
        rows.append(flat)
    width = max(len(r) for r in rows)
    table = np.array([r + [r[-1]] * (width - len(r)) for r in rows], np.int32)  # [O, K]
    flats = np.where(table == size, 0, table)
    v = L.add("reshape", [x], {"shape": (n, c, size)}, name=L.node.name + "_flat")
    ninf = Const(torch.full((n, c, 1), float("-inf"), dtype=dtypes.TORCH[x.type.dtype]), L.node.name + "_ninf")
    v = L.add("concat", [v, L.cast(ninf, x.type.dtype)], {"axis": 2}, name=L.node.name + "_padded")
    win = L.add("gather", [v, Const(torch.from_numpy(table), L.node.name + "_windows")], {"axis": 2},
                name=L.node.name + "_win")  # [N, C, O, K]
    out_sp = tuple(len(a) for a in axes)
    val = L.add("reduce_max", [win], {"axes": (3,), "keep_dims": False}, name=L.node.name + "_max")
    arg = L.add("reduce_argmax", [win], {"axis": 3, "keep_dims": True}, name=L.node.name + "_arg")
    where = Const(torch.from_numpy(np.broadcast_to(flats, (n, c) + flats.shape).copy()), L.node.name + "_where")
    idx = L.add("gather_along_axis", [L.v(where), arg], {"axis": 3}, name=L.node.name + "_index")
    return (L.add("reshape", [val], {"shape": (n, c) + out_sp}, name=L.node.name + "_values"),
            L.add("reshape", [idx], {"shape": (n, c) + out_sp}, name=L.node.name + "_indices"))


def _dilated_max_pool(L, x, a, dil):
    """MIL ``max_pool`` has no dilation: the max over the kernel taps, each tap a strided slice of
    the input padded with -inf (``ceil_mode`` overhang padded too). prod(kernel) slices and
    maximums, exact."""
    from ..ops.conv import out_size

    k, st, pad = a["kernel_sizes"], a["strides"], list(a["pad"])
    shape = x.type.shape
    nsp = len(k)
    out = [out_size(shape[2 + i], k[i], st[i], dil[i], pad[2 * i], pad[2 * i + 1], a["ceil_mode"]) for i in range(nsp)]
    for i in range(nsp):
        need = (out[i] - 1) * st[i] + dil[i] * (k[i] - 1) + 1 - (shape[2 + i] + pad[2 * i] + pad[2 * i + 1])
        pad[2 * i + 1] += max(need, 0)
    if any(pad):
        x = L.add("pad", [x], {"pad": tuple(pad), "mode": "constant", "constant_val": float("-inf")},
                  name=L.node.name + "_pad")
    y = None
    for tap in np.ndindex(*k):
        begin = [0, 0] + [t * d for t, d in zip(tap, dil)]
        end = list(x.type.shape[:2]) + [t * d + (o - 1) * s + 1 for t, d, o, s in zip(tap, dil, out, st)]
        sl = L.add("slice_by_index", [x], {"begin": tuple(begin), "end": tuple(end), "stride": (1, 1) + tuple(st)},
                   name=L.node.name + "_tap")
        y = sl if y is None else L.add("maximum", [y, sl], name=L.node.name + "_max")
    return y


@lower("aten.avg_pool1d.default", "aten.avg_pool2d.default", "aten.avg_pool3d.default")
def _avg_pool(L, x, kernel, stride=(), padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    nsp = rank_of(x) - 2
    a = _pool_attrs(kernel, stride, padding, nsp, ceil_mode)
    if divisor_override:
        # window sums / divisor: a depthwise conv with a kernel of 1 / divisor (padding, and the
        # ceil_mode overhang, add zeros to the sums), exact for every window
        from ..ops.conv import out_size

        v = L.v(x)
        shape, k, st = v.type.shape, a["kernel_sizes"], a["strides"]
        pad = list(a["pad"])
        for i in range(nsp):
            o = out_size(shape[2 + i], k[i], st[i], 1, pad[2 * i], pad[2 * i + 1], ceil_mode)
            pad[2 * i + 1] += max(0, (o - 1) * st[i] + k[i] - (shape[2 + i] + pad[2 * i] + pad[2 * i + 1]))
        c = shape[1]
        w = L.cast(Const(torch.full((c, 1) + tuple(k), 1.0 / divisor_override), L.node.name + "_sum"), v.type.dtype)
        return L.add("conv", [v, w], {"strides": tuple(st), "pad": tuple(pad), "groups": c})
    a["exclude_padding_from_average"] = not count_include_pad
    return L.add("avg_pool", [x], a)


# ---------------------------------------------------------------------------------------- padding


def _pairs(pad, rank):
    """torch's pad list (last axis first: before, after, ...) -> {axis: (before, after)}."""
    return {rank - 1 - i // 2: (int(pad[i]), int(pad[i + 1])) for i in range(0, len(pad), 2)}


def _pad_by_concat(L, x, pairs: dict, mode: str, value=0.0):
    """Pad (or crop, for negative amounts) axis by axis with slices and ``concat``: constant
    blocks, the reflected edge (a ``reverse``d slice), the repeated edge (``tile``) or the
    wrapped-around other end (circular). Exact for every dtype; used where MIL ``pad`` cannot
    (integer/bool tensors, negative padding, reflect/replicate over more than 2 axes, circular)."""
    from ..ir import DTYPES

    x = L.v(x)
    for ax, (b, a) in sorted(pairs.items()):
        if mode == "replicate" and min(b, a) < 0:  # torch: out[i] = x[clamp(i - before, 0, n - 1)]
            n = x.type.shape[ax]
            x = take(L, x, ax, np.clip(np.arange(n + b + a) - b, 0, n - 1), name=f"{L.node.name}_rep{ax}")
            continue
        if b < 0:
            x = narrow(L, x, ax, -b, x.type.shape[ax] + b, f"crop{ax}")
            b = 0
        if a < 0:
            x = narrow(L, x, ax, 0, x.type.shape[ax] + a, f"crop{ax}")
            a = 0
        if not (b or a):
            continue
        n = x.type.shape[ax]
        parts = []
        for side, amount in (("before", b), ("after", a)):
            if not amount:
                parts.append(None)
                continue
            tag = f"{side}{ax}"
            if mode == "constant":
                shape = list(x.type.shape)
                shape[ax] = amount
                block = np.full(shape, value, DTYPES[x.type.dtype])
                part = Const(torch.from_numpy(block), f"{L.node.name}_{tag}")
            elif mode == "reflect":
                part = narrow(L, x, ax, 1 if side == "before" else n - 1 - amount, amount, tag)
                part = L.add("reverse", [part], {"axes": (ax,)}, name=f"{L.node.name}_{tag}_rev")
            elif mode == "replicate":
                edge = narrow(L, x, ax, 0 if side == "before" else n - 1, 1, tag)
                reps = [1] * x.type.rank
                reps[ax] = amount
                part = L.add("tile", [edge], {"reps": tuple(reps)}, name=f"{L.node.name}_{tag}_rep")
            elif mode == "circular":
                part = narrow(L, x, ax, n - amount if side == "before" else 0, amount, tag)
            else:
                raise UnsupportedOpError(f"pad mode {mode!r} unknown")
            parts.append(part)
        vals = [p for p in (parts[0], x, parts[1]) if p is not None]
        x = L.add("concat", [L.v(p) for p in vals], {"axis": ax}, name=f"{L.node.name}_pad{ax}")
    return x


def _pad(L, x, pad, mode, value=0.0):
    """torch padding of any mode -> MIL ``pad`` when it can (float, non-negative amounts, reflect /
    replicate on at most the last 2 axes), else :func:`_pad_by_concat`."""
    x = L.v(x)
    pairs = {ax: p for ax, p in _pairs(pad, x.type.rank).items() if p != (0, 0)}
    if not pairs:
        return x
    float_ok = x.type.dtype in ("fp32", "fp16") and all(v >= 0 for p in pairs.values() for v in p)
    if mode == "reflect" and any(max(p) >= x.type.shape[ax] for ax, p in pairs.items()):
        raise UnsupportedOpError("reflect padding wider than the input")
    native = float_ok and (mode == "constant" or (mode in ("reflect", "replicate")
                                                  and min(pairs) >= x.type.rank - 2))
    if not native:
        return _pad_by_concat(L, x, pairs, mode, value)
    first = min(pairs)
    flat = tuple(v for ax in range(first, x.type.rank) for v in pairs.get(ax, (0, 0)))
    return L.add("pad", [x], {"pad": flat, "mode": mode, "constant_val": float(value or 0.0)})


@lower("aten.constant_pad_nd.default")
def _constant_pad(L, x, pad, value=0.0):
    return _pad(L, x, pad, "constant", value)


@lower("aten.reflection_pad1d.default", "aten.reflection_pad2d.default", "aten.reflection_pad3d.default")
def _reflection_pad(L, x, padding):
    return _pad(L, x, padding, "reflect")


@lower("aten.replication_pad1d.default", "aten.replication_pad2d.default", "aten.replication_pad3d.default")
def _replication_pad(L, x, padding):
    return _pad(L, x, padding, "replicate")


@lower("aten._pad_circular.default")
def _circular_pad(L, x, pad):
    return _pad(L, x, pad, "circular")


@lower("aten.pad.default")
def _pad_any(L, x, pad, mode="constant", value=None):
    return _pad(L, x, pad, mode, 0.0 if value is None else value)


# ---------------------------------------------------------------------------- im2col / col2im


def _one_hot_kernel(c: int, kernel: tuple, dtype: str):
    """[C * prod(kernel), 1, *kernel] weights: output channel c * prod(k) + t picks tap t of
    channel c (torch's im2col row order), for a ``groups=C`` conv."""
    taps = int(np.prod(kernel))
    w = np.zeros((c * taps, 1) + tuple(kernel), np.float32)
    for ch in range(c):
        for t, tap in enumerate(np.ndindex(*kernel)):
            w[(ch * taps + t, 0) + tap] = 1.0
    return torch.from_numpy(w)


@lower("aten.im2col.default")
def _im2col(L, x, kernel_size, dilation, padding, stride):
    """``F.unfold``: a ``groups=C`` conv with one-hot weights (each output channel copies one
    kernel tap of one channel: multiplying by 1 and adding zeros is exact in fp16 too), reshaped to
    [N, C * prod(k), L]. The ANE runs convs; a gather of the patches it would not."""
    x = L.v(x)
    unbatched = x.type.rank == 3
    if unbatched:
        x = L.add("expand_dims", [x], {"axes": (0,)}, name=L.node.name + "_batch")
    n, c = x.type.shape[:2]
    k = _tuple(kernel_size, 2)
    w = L.cast(Const(_one_hot_kernel(c, k, x.type.dtype), L.node.name + "_taps"), x.type.dtype)
    y = L.add("conv", [x, w], {"strides": _tuple(stride, 2), "dilations": _tuple(dilation, 2),
                               "pad": tuple(p for p in _tuple(padding, 2) for _ in range(2)), "groups": c},
              name=L.node.name + "_conv")
    return L.add("reshape", [y], {"shape": L.out_type().shape})


@lower("aten.col2im.default")
def _col2im(L, x, output_size, kernel_size, dilation, padding, stride):
    """``F.fold``: the transposed conv of the same one-hot weights sums every patch back into
    place (overlaps add, as torch's col2im does); ``padding`` is cropped by conv_transpose."""
    x = L.v(x)
    out = L.out_type().shape
    unbatched = len(out) == 3
    c = out[-3]
    k = _tuple(kernel_size, 2)
    st, dil, pad = _tuple(stride, 2), _tuple(dilation, 2), _tuple(padding, 2)
    blocks = [(out[-2 + i] + 2 * pad[i] - dil[i] * (k[i] - 1) - 1) // st[i] + 1 for i in range(2)]
    n = 1 if unbatched else x.type.shape[0]
    v = L.add("reshape", [x], {"shape": (n, c * int(np.prod(k)), blocks[0], blocks[1])}, name=L.node.name + "_blocks")
    w = L.cast(Const(_one_hot_kernel(c, k, x.type.dtype), L.node.name + "_taps"), x.type.dtype)
    full = [(blocks[i] - 1) * st[i] + dil[i] * (k[i] - 1) + 1 for i in range(2)]
    extra = [out[-2 + i] + 2 * pad[i] - full[i] for i in range(2)]
    y = L.add("conv_transpose", [v, w], {"strides": st, "dilations": dil, "groups": c,
                                         "pad": (pad[0], pad[0], pad[1], pad[1]), "output_padding": tuple(extra)},
              name=L.node.name + ("_fold" if unbatched else ""))
    return L.add("reshape", [y], {"shape": out}) if unbatched else y
