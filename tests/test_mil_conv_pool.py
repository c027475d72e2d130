"""MIL interpreter numerics: conv (static and dynamic weights), max_pool, avg_pool.

Helpers and tolerances: tests/milcheck.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from milcheck import (PRECISIONS, R, check, check_all, ct, explicit_pads, f32, mb, precisions, rng,  # noqa: F401
                      run_mil, same_pads, torch_pad, types)


# ------------------------------------------------------------------------------ conv & pools


# (x shape, weight shape, pad_type, pad, strides, dilations, groups, bias)
CONVS = [
    ((2, 4, 9, 8), (6, 4, 3, 3), "valid", None, [1, 1], [1, 1], 1, True),
    ((2, 4, 9, 8), (6, 4, 3, 2), "valid", None, [2, 2], [1, 1], 1, False),
    ((2, 4, 9, 8), (6, 4, 3, 3), "custom", [1, 2, 0, 1], [1, 1], [1, 1], 1, True),
    ((2, 4, 9, 8), (6, 4, 3, 3), "custom", [2, 2, 1, 1], [2, 1], [2, 1], 1, False),
    ((2, 4, 9, 8), (6, 4, 3, 3), "same", None, [1, 1], [1, 1], 1, True),
    ((2, 4, 9, 8), (6, 4, 4, 2), "same", None, [1, 1], [1, 1], 1, False),  # odd totals: extra unit after
    ((2, 4, 9, 8), (6, 4, 3, 3), "same", None, [2, 2], [1, 1], 1, True),  # 9 -> even total, 8 -> odd total
    ((2, 4, 9, 8), (6, 4, 3, 3), "same", None, [1, 1], [2, 3], 1, False),
    ((2, 4, 9, 8), (6, 4, 4, 2), "same_lower", None, [1, 1], [1, 1], 1, True),  # odd totals: extra unit before
    ((2, 4, 9, 8), (6, 4, 3, 3), "same_lower", None, [2, 2], [1, 1], 1, False),
    ((2, 4, 9, 8), (6, 4, 2, 3), "same_lower", None, [3, 2], [2, 1], 1, True),
    ((2, 4, 9, 8), (6, 2, 3, 3), "custom", [1, 1, 1, 1], [1, 1], [1, 1], 2, True),  # groups 2
    ((2, 4, 9, 8), (4, 1, 3, 3), "same", None, [1, 1], [1, 1], 4, True),  # depthwise
    ((2, 4, 9, 8), (4, 1, 3, 3), "custom", [0, 1, 2, 0], [2, 1], [1, 2], 4, False),  # depthwise, strided, dilated
    ((2, 4, 9, 8), (8, 1, 3, 3), "valid", None, [1, 1], [1, 1], 4, True),  # depthwise, multiplier 2
    ((2, 4, 9, 8), (6, 4, 1, 1), "valid", None, [1, 1], [1, 1], 1, True),  # 1x1
    ((2, 4, 9, 8), (6, 4, 1, 1), "valid", None, [2, 3], [1, 1], 1, False),  # strided 1x1
    # 1-D
    ((2, 4, 11), (6, 4, 3), "valid", None, [1], [1], 1, True),
    ((2, 4, 11), (6, 4, 3), "custom", [2, 1], [2], [1], 1, False),
    ((2, 4, 11), (6, 4, 4), "same", None, [1], [1], 1, True),
    ((2, 4, 11), (6, 4, 4), "same_lower", None, [1], [1], 1, False),
    ((2, 4, 11), (6, 4, 3), "same", None, [3], [2], 1, True),
    ((2, 4, 11), (6, 4, 3), "same_lower", None, [2], [2], 1, False),
    ((2, 4, 11), (6, 2, 3), "custom", [1, 0], [1], [3], 2, True),
    ((2, 4, 11), (4, 1, 5), "same", None, [2], [1], 4, False),
    # 3-D (MIL conv allows up to 3 spatial axes)
    ((1, 2, 5, 6, 7), (3, 2, 3, 2, 3), "same", None, [2, 1, 2], [1, 1, 1], 1, True),
    ((1, 2, 5, 6, 7), (4, 1, 2, 3, 2), "custom", [1, 0, 0, 2, 1, 1], [1, 2, 1], [2, 1, 1], 2, False),
]


def _conv_id(c):
    xs, ws, pt, pad, s, d, g, b = c
    return f"{len(xs) - 2}d-w{'x'.join(map(str, ws))}-{pt}{pad or ''}-s{s}-d{d}-g{g}-{'bias' if b else 'nobias'}"


@precisions
@pytest.mark.parametrize("case", CONVS, ids=[_conv_id(c) for c in CONVS])
def test_conv(case, precision, tmp_path, rng):
    xs, ws, pad_type, pad, strides, dil, groups, bias = case
    x = f32(rng.normal(size=xs))
    w = f32(rng.normal(size=ws) / np.sqrt(np.prod(ws[1:])))
    b = f32(rng.normal(size=ws[0])) if bias else None

    def build(x):
        kw = {"bias": b} if b is not None else {}
        if pad is not None:
            kw["pad"] = pad
        return mb.conv(x=x, weight=w, pad_type=pad_type, strides=strides, dilations=dil, groups=groups, **kw)

    (got,) = run_mil(tmp_path, build, {"x": x}, precision, "conv")
    P = lambda v: None if v is None else R(v, precision)  # noqa: E731
    pads = explicit_pads(pad_type, pad, xs[2:], ws[2:], strides, dil)
    xp = F.pad(P(x), torch_pad(pads))
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[len(xs)]
    ref = conv(xp, P(w), P(b), stride=strides, padding=0, dilation=dil, groups=groups)
    check(got, ref, precision, _conv_id(case))


@precisions
def test_conv_dynamic_weight(precision, tmp_path, rng):
    """conv whose weight is a runtime tensor (MIL allows it without dilations)."""
    x, w = f32(rng.normal(size=(2, 4, 9, 8))), f32(rng.normal(size=(6, 2, 3, 3)) / 4)
    b = f32(rng.normal(size=6))

    def build(x, w):
        return mb.conv(x=x, weight=w, bias=b, pad_type="same", strides=[2, 1], groups=2)

    (got,) = run_mil(tmp_path, build, {"x": x, "w": w}, precision, "conv")
    P = lambda v: R(v, precision)  # noqa: E731
    pads = same_pads("same", (9, 8), (3, 3), (2, 1), (1, 1))
    check(got, F.conv2d(F.pad(P(x), torch_pad(pads)), P(w), P(b), stride=(2, 1), groups=2), precision)


# (x shape, kernel, strides, pad_type, pad, ceil_mode, exclude_padding_from_average)
# ceil_mode needs symmetric pads (MIL) and is not allowed with pad_type same (coremltools).
POOLS = [
    ((2, 3, 9, 8), [2, 2], [2, 2], "valid", None, False, False),
    ((2, 3, 9, 8), [3, 3], [1, 1], "valid", None, False, False),
    ((2, 3, 9, 8), [3, 2], [2, 1], "custom", [1, 1, 1, 0], False, False),
    ((2, 3, 9, 8), [3, 3], [2, 2], "custom", [1, 1, 1, 1], False, True),
    ((2, 3, 9, 8), [3, 3], [2, 2], "custom", [0, 2, 1, 0], False, True),
    ((2, 3, 9, 8), [3, 3], [2, 2], "same", None, False, False),
    ((2, 3, 9, 8), [2, 3], [1, 1], "same", None, False, True),
    ((2, 3, 9, 8), [2, 2], [1, 1], "same_lower", None, False, False),
    ((2, 3, 9, 8), [3, 2], [2, 3], "same_lower", None, False, True),
    ((2, 3, 9, 8), [3, 3], [2, 2], "valid", None, True, False),  # 9: exact fit, 8: last window overhangs
    ((2, 3, 9, 8), [2, 3], [2, 2], "custom", [1, 1, 1, 1], True, False),
    ((2, 3, 9, 8), [3, 3], [2, 2], "custom", [1, 1, 1, 1], True, True),
    ((2, 3, 9, 8), [3, 2], [3, 2], "valid", None, True, True),
    ((2, 3, 11), [3], [2], "valid", None, False, False),
    ((2, 3, 11), [4], [1], "same", None, False, True),
    ((2, 3, 11), [4], [3], "same_lower", None, False, False),
    ((2, 3, 11), [3], [2], "custom", [2, 0], False, True),
    ((2, 3, 10), [3], [2], "custom", [1, 1], True, False),
    # 3-D (ceil_mode is 1-D/2-D only in MIL)
    ((1, 2, 5, 6, 7), [2, 2, 3], [1, 2, 2], "valid", None, False, False),
    ((1, 2, 5, 6, 7), [2, 3, 3], [2, 1, 2], "same_lower", None, False, True),
    ((1, 2, 5, 6, 7), [3, 2, 3], [1, 2, 2], "custom", [1, 1, 0, 1, 1, 1], False, True),
]


def _pool_id(c):
    xs, k, s, pt, pad, ceil, exc = c
    return f"{len(xs) - 2}d-k{k}-s{s}-{pt}{pad or ''}{'-ceil' if ceil else ''}{'-excl' if exc else ''}"


def _pool_ref(kind, t, kernel, strides, pads, ceil_mode, exclude):
    nsp = len(kernel)
    maxp = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nsp]
    avgp = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nsp]
    if ceil_mode:  # symmetric pads: torch's own padding and ceil_mode rules
        p = [pads[2 * i] for i in range(nsp)]
        if kind == "max_pool":
            return maxp(t, kernel, strides, p, ceil_mode=True)
        return avgp(t, kernel, strides, p, ceil_mode=True, count_include_pad=not exclude)
    tp = torch_pad(pads)
    if kind == "max_pool":
        return maxp(F.pad(t, tp, value=-math.inf), kernel, strides)
    y = avgp(F.pad(t, tp), kernel, strides)  # padding counted in the divisor
    if exclude:
        ones = F.pad(torch.ones_like(t), tp)
        y = y / avgp(ones, kernel, strides)  # divide by the fraction of real elements instead
    return y


# exclude_padding_from_average is an avg_pool attribute: max_pool takes the other cases
POOL_CASES = [(kind, c) for c in POOLS for kind in ("max_pool", "avg_pool") if kind == "avg_pool" or not c[-1]]


@precisions
@pytest.mark.parametrize("kind,case", POOL_CASES, ids=[f"{k}-{_pool_id(c)}" for k, c in POOL_CASES])
def test_pool(kind, case, precision, tmp_path, rng):
    xs, kernel, strides, pad_type, pad, ceil_mode, exclude = case
    x = f32(rng.normal(size=xs))

    def build(x):
        kw = {"pad": pad} if pad is not None else {}
        if kind == "avg_pool":
            kw["exclude_padding_from_average"] = exclude
        return getattr(mb, kind)(x=x, kernel_sizes=kernel, strides=strides, pad_type=pad_type, ceil_mode=ceil_mode, **kw)

    (got,) = run_mil(tmp_path, build, {"x": x}, precision, kind)
    pads = explicit_pads(pad_type, pad, xs[2:], kernel, strides, [1] * len(kernel))
    check(got, _pool_ref(kind, R(x, precision), kernel, strides, pads, ceil_mode, exclude), precision, _pool_id(case))


#: MIL ops this file tests (tests/test_mil_ops.py checks every interpreter op is covered).
COVERED = {"conv", "max_pool", "avg_pool"}
