"""ATen -> IR lowerings of BLAS-style products and distances (registered into
:data:`tlc.frontend.common.LOWERINGS`): ``addmm``/``addmv``/``addbmm``/``baddbmm``/``addr`` with any
``beta``/``alpha``, ``mv``, ``dot``/``vdot``, ``dist``, ``cdist``, ``pdist`` and ``_trilinear``
(``nn.Bilinear``). All are matmuls, elementwise ops and reductions MIL has."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UnsupportedOpError
from .common import Const, lower, sub_name, take


def _scaled(L, v, k, tag):
    return v if k == 1 else L.add("mul", [v, L.scalar(float(k), v.type.dtype)], name=sub_name(L, tag))


def _beta_alpha(L, bias, prod, beta, alpha):
    """beta * bias + alpha * prod (beta == 0 ignores bias, NaN included, as torch)."""
    prod = _scaled(L, prod, alpha, "alpha")
    if beta == 0:
        out = L.out_type().shape
        return prod if prod.type.shape == tuple(out) else L.add("add", [prod, L.v(Const(torch.zeros(out), sub_name(L, "z")))])
    return L.add("add", [prod, _scaled(L, L.cast(bias, prod.type.dtype), beta, "beta")])


@lower("aten.addmm.default")
def _addmm(L, bias, x, w, *, beta=1, alpha=1):
    if beta == 1 and alpha == 1 and isinstance(w, Const) and len(tuple(L.v(bias).type.shape)) == 1 \
            and L.v(bias).type.shape[0] == tuple(w.tensor.shape)[1]:
        wt = Const(w.tensor.t().contiguous(), w.name + "_t")  # a Linear layer: weight^T, bias
        return L.add("linear", [x, wt, bias])
    mm = L.add("matmul", [L.v(x), L.v(w)], name=sub_name(L, "mm"))
    return _beta_alpha(L, bias, mm, beta, alpha)


@lower("aten.addmv.default")
def _addmv(L, bias, mat, vec, *, beta=1, alpha=1):
    v = L.add("expand_dims", [L.v(vec)], {"axes": (-1,)}, name=sub_name(L, "v2"))
    mv = L.add("squeeze", [L.add("matmul", [L.v(mat), v], name=sub_name(L, "mm"))], {"axes": (-1,)}, name=sub_name(L, "mv"))
    return _beta_alpha(L, bias, mv, beta, alpha)


@lower("aten.mv.default")
def _mv(L, mat, vec):
    v = L.add("expand_dims", [L.v(vec)], {"axes": (-1,)}, name=sub_name(L, "v2"))
    return L.add("squeeze", [L.add("matmul", [L.v(mat), v], name=sub_name(L, "mm"))], {"axes": (-1,)})


@lower("aten.addbmm.default")
def _addbmm(L, bias, b1, b2, *, beta=1, alpha=1):
    bmm = L.add("matmul", [L.v(b1), L.v(b2)], name=sub_name(L, "bmm"))
    s = L.add("reduce_sum", [bmm], {"axes": (0,), "keep_dims": False}, name=sub_name(L, "sum"))
    return _beta_alpha(L, bias, s, beta, alpha)


@lower("aten.baddbmm.default")
def _baddbmm(L, bias, b1, b2, *, beta=1, alpha=1):
    return _beta_alpha(L, bias, L.add("matmul", [L.v(b1), L.v(b2)], name=sub_name(L, "bmm")), beta, alpha)


@lower("aten.addr.default")
def _addr(L, bias, v1, v2, *, beta=1, alpha=1):
    a = L.add("expand_dims", [L.v(v1)], {"axes": (-1,)}, name=sub_name(L, "col"))
    b = L.add("expand_dims", [L.v(v2)], {"axes": (0,)}, name=sub_name(L, "row"))
    dt = L.out_type().dtype
    outer = L.add("mul", [L.cast(a, dt), L.cast(b, dt)], name=sub_name(L, "outer"))
    return _beta_alpha(L, bias, outer, beta, alpha)


@lower("aten.dot.default", "aten.vdot.default", "aten.inner.default")
def _dot(L, a, b):
    dt = L.out_type().dtype
    p = L.add("mul", [L.cast(a, dt), L.cast(b, dt)], name=sub_name(L, "prod"))
    return L.add("reduce_sum", [p], {"axes": (-1,) if p.type.rank else None, "keep_dims": False}) if p.type.rank else p


@lower("aten.dist.default")
def _dist(L, a, b, p=2):
    from .aten_reduce import lower_vector_norm

    dt = L.out_type().dtype
    d = L.add("sub", [L.cast(a, dt), L.cast(b, dt)], name=sub_name(L, "diff"))
    return lower_vector_norm(L, d, float(p), None, False)


def _pairwise(L, x1, x2, p, tag="pd"):
    """||x1[..., i, :] - x2[..., j, :]||_p for every (i, j): the broadcast difference, then the
    p-norm over the feature axis (exact; no |a|^2 + |b|^2 - 2ab cancellation)."""
    from .aten_reduce import lower_vector_norm

    a = L.add("expand_dims", [L.v(x1)], {"axes": (-2,)}, name=sub_name(L, tag + "_a"))
    b = L.add("expand_dims", [L.v(x2)], {"axes": (-3,)}, name=sub_name(L, tag + "_b"))
    d = L.add("sub", [a, b], name=sub_name(L, tag + "_diff"))
    saved = L.node.name
    try:
        L.node.name = f"{saved}_{tag}"
        return lower_vector_norm(L, d, float(p), -1, False)
    finally:
        L.node.name = saved


@lower("aten._cdist_forward.default", "aten.cdist.default")
def _cdist(L, x1, x2, p=2.0, compute_mode=None):
    return _pairwise(L, x1, x2, p)


@lower("aten._pdist_forward.default")
def _pdist(L, x, p=2.0):
    """The upper triangle (i < j, row-major) of the pairwise distances, as one constant gather."""
    n = L.v(x).type.shape[0]
    full = _pairwise(L, x, x, p)
    flat = L.add("reshape", [full], {"shape": (n * n,)}, name=sub_name(L, "flat"))
    idx = np.array([i * n + j for i in range(n) for j in range(i + 1, n)], np.int64)
    if idx.size == 0:
        return Const(torch.zeros(0), sub_name(L, "empty"))
    return take(L, flat, 0, idx)


@lower("aten._trilinear.default")
def _trilinear(L, i1, i2, i3, expand1, expand2, expand3, sumdim, unroll_dim=1):
    """``_trilinear`` (``nn.Bilinear``'s kernel): each input unsqueezed at its ``expand`` dims,
    the three multiplied with broadcasting, summed over ``sumdim``."""
    vals = []
    for k, (t, ex) in enumerate(((i1, expand1), (i2, expand2), (i3, expand3))):
        v = L.v(t)
        for d in sorted(ex):
            v = L.add("expand_dims", [v], {"axes": (d,)}, name=sub_name(L, f"e{k}"))
        vals.append(v)
    p = L.add("mul", [L.add("mul", [vals[0], vals[1]], name=sub_name(L, "p01")), vals[2]], name=sub_name(L, "p"))
    if not sumdim:
        return p
    r = p.type.rank
    return L.add("reduce_sum", [p], {"axes": tuple(sorted(d % r for d in sumdim)), "keep_dims": False})


@lower("aten.linalg_vecdot.default")
def _vecdot(L, a, b, *, dim=-1):
    dt = L.out_type().dtype
    p = L.add("mul", [L.cast(a, dt), L.cast(b, dt)], name=sub_name(L, "prod"))
    if p.type.rank == 0:
        raise UnsupportedOpError("vecdot of scalars")
    return L.add("reduce_sum", [p], {"axes": (dim % p.type.rank,), "keep_dims": False})
