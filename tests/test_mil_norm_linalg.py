"""MIL interpreter numerics: reductions, softmax, layer/batch norm, linear, matmul, attention.

Helpers and tolerances: tests/milcheck.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from milcheck import (PRECISIONS, R, check, check_all, ct, explicit_pads, f32, mb, precisions, rng,  # noqa: F401
                      run_mil, same_pads, torch_pad, types)


# ---------------------------------------------------------------------------------- reductions

REDUCE_AXES = [[1], [-1], [0, 2], [-3, 1], None]


def _dims(axes, rank):
    return tuple(range(rank)) if axes is None else tuple(a % rank for a in axes)


def _prod(t, dims, keep):
    for d in sorted(dims, reverse=True):
        t = torch.prod(t, dim=d, keepdim=keep)
    return t


REDUCE = {
    "reduce_sum": lambda t, d, k: torch.sum(t, dim=d, keepdim=k),
    "reduce_mean": lambda t, d, k: torch.mean(t, dim=d, keepdim=k),
    "reduce_max": lambda t, d, k: torch.amax(t, dim=d, keepdim=k),
    "reduce_min": lambda t, d, k: torch.amin(t, dim=d, keepdim=k),
    "reduce_prod": _prod,
    "reduce_l2_norm": lambda t, d, k: torch.linalg.vector_norm(t, ord=2, dim=d, keepdim=k),
    "reduce_l1_norm": lambda t, d, k: torch.linalg.vector_norm(t, ord=1, dim=d, keepdim=k),
}


def _reduce_case(tmp_path, precision, name, x):
    variants = [(a, k) for a in REDUCE_AXES for k in (False, True)]

    def build(x):
        fn = getattr(mb, name)
        return [fn(x=x, axes=a, keep_dims=k) if a is not None else fn(x=x, keep_dims=k) for a, k in variants]

    got = run_mil(tmp_path, build, {"x": x}, precision, name)
    t = R(x, precision)
    refs = [REDUCE[name](t, _dims(a, t.dim()), k) for a, k in variants]
    check_all(got, refs, precision, [f"{name} axes={a} keep_dims={k}" for a, k in variants])


@precisions
@pytest.mark.parametrize("name", list(REDUCE))
def test_reduce(name, precision, tmp_path, rng):
    if name == "reduce_prod":  # |values| around 1 so that the 24-element product stays in range
        x = f32(rng.uniform(0.6, 1.6, (2, 3, 4)) * rng.choice([-1, 1], (2, 3, 4)))
    else:
        x = f32(rng.normal(0, 2, (2, 3, 4)))
    _reduce_case(tmp_path, precision, name, x)


@precisions
@pytest.mark.parametrize("name", ["reduce_sum", "reduce_max", "reduce_min", "reduce_prod"])
def test_reduce_int32(name, precision, tmp_path, rng):
    x = rng.choice([-2, -1, 1, 2] if name == "reduce_prod" else list(range(-50, 50)), (2, 3, 4)).astype(np.int32)
    _reduce_case(tmp_path, precision, name, x)


# ------------------------------------------------------------------------------ normalization


@precisions
def test_softmax(precision, tmp_path, rng):
    x = f32(rng.normal(0, 3, (2, 3, 4)))
    axes = [0, 1, 2, -1, -3]

    def build(x):
        return [mb.softmax(x=x, axis=a) for a in axes] + [mb.softmax(x=x)]  # default axis -1

    got = run_mil(tmp_path, build, {"x": x}, precision, "softmax")
    t = R(x, precision)
    check_all(got, [torch.softmax(t, a) for a in axes] + [torch.softmax(t, -1)], precision,
              [f"axis={a}" for a in axes] + ["default axis"])


def _layer_norm_ref(t, axes, gamma, beta, eps):
    """Move the normalized axes (ascending) to the end, F.layer_norm, move back. MIL gamma/beta
    have shape x.shape[axes] in ascending axis order (iOS15 normalization.py)."""
    r = t.dim()
    ax = sorted(a % r for a in axes)
    rest = [i for i in range(r) if i not in ax]
    perm = rest + ax
    y = F.layer_norm(t.permute(*perm), [t.shape[a] for a in ax], gamma, beta, eps)
    inv = [perm.index(i) for i in range(r)]
    return y.permute(*inv)


# (axes, gamma, beta, epsilon or None for the default 1e-5).
# Not tested because coremltools 9 rejects them at build time: beta without gamma
# (layer_norm.type_inference reads gamma.shape to check beta: AttributeError) and an omitted
# ``axes`` (its default range(rank) cannot be made a const: ValueError).
LAYER_NORMS = [
    ([-1], False, False, None),
    ([-1], True, True, None),
    ([2, 3], True, False, None),
    ([-2, -1], True, True, 1e-3),
    ([1, 3], True, True, None),
    ([3, 1], True, True, None),
    ([1], False, False, 1e-2),
    ([0, 1, 2, 3], True, True, None),
]


def _given(**kw):
    """The keyword arguments that are not None (MIL's optional inputs)."""
    return {k: v for k, v in kw.items() if v is not None}


@precisions
@pytest.mark.parametrize("axes,gamma,beta,eps", LAYER_NORMS, ids=[f"{a}-g{int(g)}-b{int(b)}-eps{e}" for a, g, b, e in LAYER_NORMS])
def test_layer_norm(axes, gamma, beta, eps, precision, tmp_path, rng):
    x = f32(rng.normal(1.0, 2.0, (2, 3, 4, 5)))
    nshape = [x.shape[a] for a in sorted(a % 4 for a in axes)]
    g = f32(rng.normal(1.0, 0.5, nshape)) if gamma else None
    b = f32(rng.normal(0.0, 0.5, nshape)) if beta else None

    def build(x):
        kw = _given(gamma=g, beta=b, epsilon=None if eps is None else np.float32(eps))
        return mb.layer_norm(x=x, axes=axes, **kw)

    (got,) = run_mil(tmp_path, build, {"x": x}, precision, "layer_norm")
    P = lambda v: None if v is None else R(v, precision)  # noqa: E731
    check(got, _layer_norm_ref(P(x), axes, P(g), P(b), 1e-5 if eps is None else eps), precision)


@precisions
@pytest.mark.parametrize("shape,gamma,beta,eps", [((2, 3, 4, 5), True, True, 1e-3), ((2, 3, 4, 5), False, False, None),
                                                  ((2, 3, 7), True, False, None), ((2, 3, 7), False, True, 0.5),
                                                  ((1, 3, 2, 2, 3), True, True, None)])
def test_batch_norm(shape, gamma, beta, eps, precision, tmp_path, rng):
    c = shape[1]
    x = f32(rng.normal(0.5, 2.0, shape))
    mean, var = f32(rng.normal(0, 1, c)), f32(rng.uniform(0.2, 3, c))
    g = f32(rng.normal(1.0, 0.5, c)) if gamma else None
    b = f32(rng.normal(0.0, 0.5, c)) if beta else None

    def build(x):
        kw = _given(gamma=g, beta=b, epsilon=None if eps is None else np.float32(eps))
        return mb.batch_norm(x=x, mean=mean, variance=var, **kw)

    (got,) = run_mil(tmp_path, build, {"x": x}, precision, "batch_norm")
    P = lambda v: None if v is None else R(v, precision)  # noqa: E731
    ref = F.batch_norm(P(x), P(mean), P(var), P(g), P(b), training=False, eps=1e-5 if eps is None else eps)
    check(got, ref, precision)


# ----------------------------------------------------------------------------------- linalg


@precisions
def test_linear(precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 3, 8)))
    x1 = f32(rng.normal(size=(8,)))
    w, b = f32(rng.normal(size=(5, 8))), f32(rng.normal(size=(5,)))

    def build(x, x1):
        return [mb.linear(x=x, weight=w, bias=b), mb.linear(x=x, weight=w), mb.linear(x=x1, weight=w, bias=b)]

    got = run_mil(tmp_path, build, {"x": x, "x1": x1}, precision, "linear")
    P = lambda v: R(v, precision)  # noqa: E731
    refs = [F.linear(P(x), P(w), P(b)), F.linear(P(x), P(w)), F.linear(P(x1), P(w), P(b))]
    check_all(got, refs, precision, ["with bias", "without bias", "rank-1 x"])


MATMULS = [
    ((3, 4), (4, 5), False, False),
    ((4, 3), (4, 5), True, False),
    ((3, 4), (5, 4), False, True),
    ((2, 4, 3), (2, 5, 4), True, True),
    ((2, 1, 3, 4), (5, 4, 6), False, False),  # batch broadcasting
    ((3, 4), (2, 4, 5), False, False),  # rank-2 x, batched y
    ((2, 3, 6, 4), (1, 3, 5, 4), False, True),
    # rank-1 operands are not tested: coremltools 9 rejects a rank-1 y (IndexError in
    # matmul.type_inference) and declares [1, N] instead of [B, N] for x[K] @ y[B, K, N].
]


@precisions
def test_matmul(precision, tmp_path, rng):
    xs = [f32(rng.normal(size=xs)) for xs, _, _, _ in MATMULS]
    ys = [f32(rng.normal(size=ys)) for _, ys, _, _ in MATMULS]
    yc = f32(rng.normal(size=(4, 5)))  # const y

    def build(**v):
        outs = [mb.matmul(x=v[f"x{i}"], y=v[f"y{i}"], transpose_x=tx, transpose_y=ty) for i, (_, _, tx, ty) in enumerate(MATMULS)]
        return outs + [mb.matmul(x=v["x0"], y=yc)]

    feeds = {**{f"x{i}": a for i, a in enumerate(xs)}, **{f"y{i}": a for i, a in enumerate(ys)}}
    got = run_mil(tmp_path, build, feeds, precision, "matmul")
    P = lambda v: R(v, precision)  # noqa: E731
    refs = []
    for (x, y, (_, _, tx, ty)) in zip(xs, ys, MATMULS):
        tx_, ty_ = P(x), P(y)
        refs.append(torch.matmul(tx_.transpose(-1, -2) if tx else tx_, ty_.transpose(-1, -2) if ty else ty_))
    refs.append(torch.matmul(P(xs[0]), P(yc)))
    check_all(got, refs, precision, [f"{a}@{b} tx={tx} ty={ty}" for a, b, tx, ty in MATMULS] + ["const y"])


@precisions
def test_scaled_dot_product_attention(precision, tmp_path, rng):
    q, k, v = (f32(rng.normal(size=s)) for s in [(2, 2, 5, 8), (2, 2, 7, 8), (2, 2, 7, 6)])
    bmask = rng.random((5, 7)) < 0.6
    bmask[:, 0] = True  # every query attends to something (torch gives NaN on fully masked rows)
    fmask = f32(rng.normal(0, 2, (2, 1, 5, 7)))
    bconst = rng.random((1, 1, 5, 7)) < 0.5
    bconst[..., 3] = True
    q3, k3, v3 = (f32(rng.normal(size=s)) for s in [(2, 4, 16), (2, 3, 16), (2, 3, 4)])

    def build(q, k, v, bmask, fmask, q3, k3, v3):
        sdpa = mb.scaled_dot_product_attention
        return [sdpa(query=q, key=k, value=v), sdpa(query=q, key=k, value=v, attn_mask=bmask),
                sdpa(query=q, key=k, value=v, attn_mask=fmask), sdpa(query=q, key=k, value=v, attn_mask=bconst),
                sdpa(query=q3, key=k3, value=v3)]

    got = run_mil(tmp_path, build, dict(q=q, k=k, v=v, bmask=bmask, fmask=fmask, q3=q3, k3=k3, v3=v3), precision,
                  "scaled_dot_product_attention", target=ct.target.iOS18)
    P = lambda a: R(a, precision)  # noqa: E731
    sdpa = F.scaled_dot_product_attention
    refs = [sdpa(P(q), P(k), P(v)), sdpa(P(q), P(k), P(v), attn_mask=P(bmask)), sdpa(P(q), P(k), P(v), attn_mask=P(fmask)),
            sdpa(P(q), P(k), P(v), attn_mask=P(bconst)), sdpa(P(q3), P(k3), P(v3))]
    check_all(got, refs, precision, ["no mask", "bool mask [5,7]", "float mask [2,1,5,7]", "const bool mask",
                                     "rank 3"])


#: MIL ops this file tests (tests/test_mil_ops.py checks every interpreter op is covered).
COVERED = set(REDUCE) | {"softmax", "layer_norm", "batch_norm", "linear", "matmul", "scaled_dot_product_attention",
           "einsum"}  # einsum: tests/test_mil_ops_more.py::test_einsum
