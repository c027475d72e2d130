"""ATen -> IR lowerings of data-dependent sampling with static shapes (registered into
:data:`tlc.frontend.common.LOWERINGS`): ``grid_sampler_2d`` / ``grid_sampler_3d`` (``F.grid_sample``:
bilinear / nearest, padding zeros / border / reflection, ``align_corners`` either way),
``histogram`` (equal-width bins) and ``max_pool2d_with_indices_backward``.

grid_sample follows torch's CPU kernel (aten/src/ATen/native/GridSampler.h): unnormalize the grid
to pixel coordinates, apply the padding rule to the coordinates (border: clamp; reflection:
reflect, then clamp), then read the 2^d corner taps (bilinear) or the nearest one
(``nearbyint``, half to even) with ``gather_along_axis`` on the flattened input, out-of-range taps
weighted 0 (zeros padding). MIL's ``resample`` op is not used: its coordinate and padding rules are
not documented to be torch's.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

from ..errors import UnsupportedOpError
from .common import Const, lower, sub_name


class _E:
    """Shorthand: ``e("add", a, b)`` adds a node with a unique name under the current node."""

    def __init__(self, L, dt):
        self.L, self.dt, self.k = L, dt, itertools.count()

    def __call__(self, op, *ins, **attrs):
        return self.L.add(op, [self.L.v(i) if not isinstance(i, (int, float)) else self.L.scalar(i, self.dt)
                               for i in ins], attrs, name=f"{self.L.node.name}_{op}{next(self.k)}")

    def i(self, v):
        return self.L.scalar(int(v), "int32")


def _unnormalize(e, g, size, align):
    """Grid coordinate in [-1, 1] -> pixel coordinate (torch's grid_sampler_unnormalize)."""
    if align:
        return e("mul", e("add", g, 1.0), (size - 1) / 2.0)
    return e("mul", e("sub", e("mul", e("add", g, 1.0), float(size)), 1.0), 0.5)


def _reflect(e, x, twice_low, twice_high):
    """torch's reflect_coordinates: x reflected into [twice_low / 2, twice_high / 2]."""
    if twice_low == twice_high:
        return e("mul", x, 0.0)
    lo, span = twice_low / 2.0, (twice_high - twice_low) / 2.0
    a = e("abs", e("sub", x, lo))
    flips = e("floor", e("real_div", a, span))
    extra = e("sub", a, e("mul", flips, span))
    even = e("equal", e("mod", flips, 2.0), 0.0)
    return e("select", even, e("add", extra, lo), e("add", e("sub", span, extra), lo))


def _pad_coord(e, x, size, mode, align):
    if mode == 1:  # border
        return e("minimum", e("maximum", x, 0.0), float(size - 1))
    if mode == 2:  # reflection, then clip
        x = _reflect(e, x, 0, 2 * (size - 1)) if align else _reflect(e, x, -1, 2 * size - 1)
        return e("minimum", e("maximum", x, 0.0), float(size - 1))
    return x


def _grid_sample(L, inp, grid, interpolation_mode, padding_mode, align_corners):
    x = L.v(inp)
    g = L.cast(grid, x.type.dtype)
    if interpolation_mode not in (0, 1):
        raise UnsupportedOpError("grid_sample bicubic (interpolation_mode=2)")
    e = _E(L, x.type.dtype)
    n, c = x.type.shape[:2]
    sp = x.type.shape[2:]
    d = len(sp)
    out_sp = g.type.shape[1:-1]
    npts = int(np.prod(out_sp))
    gflat = e("reshape", g, shape=(n, npts, d))
    # grid's last axis is (x, y[, z]): x indexes the last spatial axis
    coords = []
    for j in range(d):
        comp = e("slice_by_index", gflat, begin=(0, 0, j), end=(n, npts, j + 1), stride=(1, 1, 1),
                 squeeze_mask=(False, False, True))  # [N, P]
        size = sp[d - 1 - j]
        coords.append(_pad_coord(e, _unnormalize(e, comp, size, align_corners), size, padding_mode, align_corners))
    coords = coords[::-1]  # now per spatial axis, outermost first
    xflat = e("reshape", x, shape=(n, c, int(np.prod(sp))))
    strides = [int(np.prod(sp[k + 1:])) for k in range(d)]
    if interpolation_mode == 1:  # nearest: nearbyint (half to even, as torch)
        taps = [[(e("round", cc), None) for cc in coords]]
    else:
        lows = [e("floor", cc) for cc in coords]
        taps = []
        for corner in itertools.product((0, 1), repeat=d):
            t = []
            for k, bit in enumerate(corner):
                pos = e("add", lows[k], float(bit))
                frac = e("sub", coords[k], lows[k])
                w = frac if bit else e("sub", 1.0, frac)
                t.append((pos, w))
            taps.append(t)
    out = None
    for t in taps:
        inside, flat, weight = None, None, None
        for k, (pos, w) in enumerate(t):
            ok = e("logical_and", e("greater_equal", pos, 0.0), e("less_equal", pos, float(sp[k] - 1)))
            inside = ok if inside is None else e("logical_and", inside, ok)
            ip = L.cast(e("minimum", e("maximum", pos, 0.0), float(sp[k] - 1)), "int32")
            term = e("mul", ip, e.i(strides[k])) if strides[k] != 1 else ip
            flat = term if flat is None else e("add", flat, term)
            if w is not None:
                weight = w if weight is None else e("mul", weight, w)
        idx = e("tile", e("expand_dims", flat, axes=(1,)), reps=(1, c, 1))  # [N, C, P]
        val = e("gather_along_axis", xflat, idx, axis=2)
        mask = L.cast(inside, x.type.dtype)
        weight = mask if weight is None else e("mul", weight, mask)
        contrib = e("mul", val, e("expand_dims", weight, axes=(1,)))
        out = contrib if out is None else e("add", out, contrib)
    return L.add("reshape", [out], {"shape": (n, c) + tuple(out_sp)})


@lower("aten.grid_sampler_2d.default", "aten.grid_sampler_3d.default", "aten.grid_sampler.default")
def _grid_sampler(L, inp, grid, interpolation_mode, padding_mode, align_corners):
    return _grid_sample(L, inp, grid, int(interpolation_mode), int(padding_mode), bool(align_corners))


@lower("aten.histogram.bin_ct")
def _histogram(L, x, bins=100, *, range=None, weight=None, density=False):
    """``histogram`` with a bin count: (counts, edges); edges linspace over ``range`` or the data's
    min/max (widened by 1/2 each way when equal, as torch); each value's bin floor((x - lo) * bins / width),
    the top edge in the last bin; counts (or weights) summed per bin by one-hot comparison."""
    v = L.v(x)
    dt = v.type.dtype
    e = _E(L, dt)
    flat = e("reshape", v, shape=(max(v.type.size, 1),))
    if range is not None:
        lo, hi = L.scalar(float(range[0]), dt), L.scalar(float(range[1]), dt)
    else:
        lo = e("reduce_min", flat, axes=(0,), keep_dims=False)
        hi = e("reduce_max", flat, axes=(0,), keep_dims=False)
    same = e("equal", lo, hi)
    lo = e("select", same, e("sub", lo, 0.5), lo) if range is None else lo  # torch widens a point by 1/2
    hi = e("select", same, e("add", hi, 0.5), hi) if range is None else hi
    steps = Const(torch.arange(bins + 1, dtype=torch.float32) / bins, sub_name(L, "steps"))
    edges = e("add", lo, e("mul", e("sub", hi, lo), L.cast(steps, dt)))
    pos = e("mul", e("sub", flat, lo), e("real_div", float(bins), e("sub", hi, lo)))
    b = L.cast(e("floor", pos), "int32")
    b = e("select", e("equal", flat, hi), e.i(bins - 1), b)
    inside = e("logical_and", e("greater_equal", flat, lo), e("less_equal", flat, hi))
    b = e("select", inside, b, e.i(-1))
    hit = e("equal", e("expand_dims", b, axes=(-1,)), Const(torch.arange(bins, dtype=torch.int32).reshape(1, bins),
                                                                 sub_name(L, "bins")))
    w = L.cast(hit, dt)
    if weight is not None:
        w = e("mul", w, e("expand_dims", e("reshape", L.cast(weight, dt), shape=(max(v.type.size, 1),)), axes=(-1,)))
    hist = e("reduce_sum", w, axes=(0,), keep_dims=False)
    if density:
        width = e("real_div", e("sub", hi, lo), float(bins))
        hist = e("real_div", hist, e("mul", e("reduce_sum", hist, axes=(0,), keep_dims=False), width))
    return (hist, edges)


@lower("aten.max_pool2d_with_indices_backward.default")
def _max_pool_backward(L, grad, x, kernel_size, stride, padding, dilation, ceil_mode, indices):
    """The gradient of max pooling: each output's gradient added at its argmax (torch's flat
    indices into H*W): ``scatter_along_axis`` (add) into zeros."""
    gv, xv = L.v(grad), L.v(x)
    shape = xv.type.shape
    lead, sp = shape[:-2], shape[-2:]
    o = int(np.prod(gv.type.shape[-2:]))
    zeros = Const(torch.zeros(lead + (int(np.prod(sp)),)), sub_name(L, "zeros"))
    gi = L.add("reshape", [L.cast(indices, "int32")], {"shape": lead + (o,)}, name=sub_name(L, "idx"))
    gg = L.add("reshape", [gv], {"shape": lead + (o,)}, name=sub_name(L, "g"))
    y = L.add("scatter_along_axis", [L.cast(zeros, gv.type.dtype), gi, gg], {"axis": len(lead), "mode": "add"},
              name=sub_name(L, "acc"))
    return L.add("reshape", [y], {"shape": shape})
