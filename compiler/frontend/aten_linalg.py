"""ATen -> IR lowerings of dense linear algebra on small static matrices (registered into
:data:`tlc.frontend.common.LOWERINGS`): ``inv``, ``solve``, ``det``, ``slogdet``, LU factorization
(``lu_factor``, ``linalg.lu``, ``lu_unpack``, ``lu_solve``), Cholesky (``cholesky``,
``cholesky_solve``, ``cholesky_inverse``) and triangular solves.

MIL has none of these, but for a matrix size n known at trace time each is a fixed sequence of
MIL ops: the loops of the textbook algorithms (G. H. Golub, C. F. Van Loan, *Matrix
Computations*, 4th ed., 2013: Algorithm 3.4.1 Gaussian elimination with partial pivoting,
Algorithm 4.2.1 Cholesky, Algorithms 3.1.1/3.1.2 triangular substitution) unrolled over the n
steps. Every step is whole-tensor work on [..., n, n] (batched matrices need no extra ops):
the pivot is ``reduce_argmax`` of |column| below the diagonal (the first maximum, as LAPACK's
``isamax``), the row swap a ``gather_along_axis``, the elimination an outer-product update
restricted by constant masks. O(n) ops (about 15 per step), O(n^3) work: meant for the small
matrices models hold (3x3 poses, 4x4 transforms, Kalman filters, normalizing flows); an
n > :data:`MAX_N` matrix is declined and runs in the fallback runtime. Singular matrices divide
by zero (inf/NaN) where torch raises.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

from ..errors import UnsupportedOpError
from ..ir import DTYPES
from .common import Const, lower

#: Largest matrix unrolled into MIL ops (each step is ~15 ops: n = 64 is ~1000 ops).
MAX_N = 64


class _B:
    """Op-building shorthand for one lowering: unique names under the node's name."""

    def __init__(self, L, dt: str):
        self.L, self.dt = L, dt
        self.k = itertools.count()

    def __call__(self, op, ins, attrs=None):
        return self.L.add(op, [self.L.v(i) for i in ins], attrs or {}, name=f"{self.L.node.name}_{op}{next(self.k)}")

    def const(self, a, dtype=None):
        a = np.asarray(a, dtype or DTYPES[self.dt])
        return self.L.v(Const(torch.from_numpy(np.ascontiguousarray(a).reshape(a.shape)), f"{self.L.node.name}_c{next(self.k)}"))

    def cols(self, x, a, b):
        s = x.type.shape
        r = len(s)
        return self("slice_by_index", [x], {"begin": (0,) * (r - 1) + (a,), "end": s[:-1] + (b,), "stride": (1,) * r})

    def rows(self, x, a, b):
        s = x.type.shape
        r = len(s)
        return self("slice_by_index", [x], {"begin": (0,) * (r - 2) + (a, 0), "end": s[:-2] + (b, s[-1]),
                                            "stride": (1,) * r})


def _square(L, A, square=True):
    a = L.v(A)
    if a.type.rank < 2 or (square and a.type.shape[-1] != a.type.shape[-2]):
        raise UnsupportedOpError(f"needs square matrices, got {list(a.type.shape)}")
    n = a.type.shape[-1]
    if max(a.type.shape[-2:]) > MAX_N or min(a.type.shape[-2:]) == 0:
        raise UnsupportedOpError(f"{list(a.type.shape[-2:])} matrices: unrolled elimination takes 1 to {MAX_N} rows "
                                 f"and columns")
    if a.type.dtype not in ("fp32", "fp16"):
        raise UnsupportedOpError("integer matrices")
    return a, n


def _pivot_swap(b: _B, M, k: int, n: int):
    """Row k's partial pivot: (M with rows k and p swapped, p as int32 [..., 1, 1])."""
    col = b.cols(M, k, k + 1)  # [..., n, 1]
    below = b.const((np.arange(n) >= k).reshape(n, 1), np.bool_)
    mag = b("select", [below, b("abs", [col]), b.const(-1.0)])
    p = b("reduce_argmax", [mag], {"axis": -2, "keep_dims": True})  # [..., 1, 1] int32
    rows = b.const(np.arange(n).reshape(n, 1), np.int32)
    src = b("select", [b("equal", [rows, b.const(k, np.int32)]), p,
                       b("select", [b("equal", [rows, p]), b.const(k, np.int32), rows])])  # [..., n, 1]
    idx = b("tile", [src], {"reps": (1,) * (M.type.rank - 1) + (M.type.shape[-1],)})
    return b("gather_along_axis", [M, idx], {"axis": M.type.rank - 2}), p


def _row(b: _B, M, k):
    return b.rows(M, k, k + 1)


def gauss_jordan(L, A, B):
    """X = A^-1 B for A [..., n, n], B [..., n, m] (Gauss-Jordan elimination with partial pivoting
    on [A | B]); returns X."""
    a, n = _square(L, A)
    b = _B(L, a.type.dtype)
    Bv = L.cast(B, a.type.dtype)
    lead = tuple(np.broadcast_shapes(a.type.shape[:-2], Bv.type.shape[:-2]))
    if Bv.type.shape[:-2] != lead:
        Bv = b("add", [Bv, b.const(np.zeros(lead + Bv.type.shape[-2:]))])
    if a.type.shape[:-2] != lead:
        a = b("add", [a, b.const(np.zeros(lead + (n, n)))])
    M = b("concat", [a, Bv], {"axis": a.type.rank - 1})
    w = M.type.shape[-1]
    for k in range(n):
        M, _ = _pivot_swap(b, M, k, n)
        rk = b("real_div", [_row(b, M, k), b.cols(_row(b, M, k), k, k + 1)])  # [..., 1, w]
        ck = b("mul", [b.cols(M, k, k + 1), b.const((np.arange(n) != k).reshape(n, 1))])  # [..., n, 1]
        M = b("sub", [M, b("mul", [ck, rk])])
        M = b("select", [b.const((np.arange(n) == k).reshape(n, 1), np.bool_), rk, M])
    return b.cols(M, n, w)


def lu(L, A, square=True):
    """LU with partial pivoting, packed as LAPACK's getrf, for A [..., m, n] (square unless
    ``square=False``): (LU [..., m, n] with the unit-lower multipliers below the diagonal,
    pivots as int32 [..., min(m, n)] 1-based row indices, sign of the permutation [..., 1, 1])."""
    a, n = _square(L, A, square)
    m = a.type.shape[-2]
    b = _B(L, a.type.dtype)
    M, piv, sign = a, [], b.const(np.ones((1, 1)))
    ii, jj = np.meshgrid(np.arange(m), np.arange(n), indexing="ij")
    for k in range(min(m, n)):
        M, p = _pivot_swap(b, M, k, m)
        piv.append(p)
        sign = b("mul", [sign, b("select", [b("equal", [p, b.const(k, np.int32)]), b.const(1.0), b.const(-1.0)])])
        pivot = b.cols(_row(b, M, k), k, k + 1)
        l = b("mul", [b("real_div", [b.cols(M, k, k + 1), pivot]), b.const((np.arange(m) > k).reshape(m, 1))])
        upd = b("mul", [b("mul", [l, _row(b, M, k)]), b.const(((ii > k) & (jj > k)).astype(np.float32))])
        M = b("sub", [M, upd])
        M = b("select", [b.const((ii > k) & (jj == k), np.bool_), l, M])
    pv = b("concat", piv, {"axis": a.type.rank - 1}) if len(piv) > 1 else piv[0]  # [..., 1, k]
    pv = b("add", [b("squeeze", [pv], {"axes": (a.type.rank - 2,)}), b.const(1, np.int32)])
    return M, pv, sign


def _diag(b: _B, M, n):
    s = M.type.shape
    flat = b("reshape", [M], {"shape": s[:-2] + (n * n,)})
    r = flat.type.rank
    return b("slice_by_index", [flat], {"begin": (0,) * r, "end": s[:-2] + ((n - 1) * (n + 1) + 1,),
                                         "stride": (1,) * (r - 1) + (n + 1,)})  # [..., n]


def triangular(L, A, B, lower_: bool, unit: bool = False, transpose: bool = False):
    """X with op(A) X = B, A triangular [..., n, n], B [..., n, m]: forward (lower) or back
    (upper) substitution unrolled, row by row; op = transpose when asked."""
    a, n = _square(L, A)
    b = _B(L, a.type.dtype)
    if transpose:
        r = a.type.rank
        a = b("transpose", [a], {"perm": tuple(range(r - 2)) + (r - 1, r - 2)})
        lower_ = not lower_
    Bv = L.cast(B, a.type.dtype)
    lead = np.broadcast_shapes(a.type.shape[:-2], Bv.type.shape[:-2])
    X = b.const(np.zeros(lead + Bv.type.shape[-2:]))
    order = range(n) if lower_ else range(n - 1, -1, -1)
    for i in order:
        ai = _row(b, a, i)  # [..., 1, n]
        r = b("sub", [_row(b, Bv, i), b("matmul", [ai, X])])  # rows of X not yet solved are 0
        xi = r if unit else b("real_div", [r, b.cols(ai, i, i + 1)])
        X = b("add", [X, b("mul", [b.const((np.arange(n) == i).reshape(n, 1)), xi])])
    return X


def cholesky(L, A, upper: bool = False):
    """The Cholesky factor, column by column (Golub & Van Loan Algorithm 4.2.1, gaxpy form):
    s = A[:, j] - L L[j, :]^T (columns >= j of L still zero); L[j, j] = sqrt(s_j); L[i, j] =
    s_i / L[j, j] below."""
    a, n = _square(L, A)
    b = _B(L, a.type.dtype)
    r = a.type.rank
    Lm = b.const(np.zeros(a.type.shape))
    for j in range(n):
        lj = _row(b, Lm, j)  # [..., 1, n]
        s = b("sub", [b.cols(a, j, j + 1), b("matmul", [Lm, b("transpose", [lj], {"perm": tuple(range(r - 2)) + (r - 1, r - 2)})])])
        d = b("sqrt", [b.rows(s, j, j + 1)])  # [..., 1, 1]
        col = b("select", [b.const((np.arange(n) == j).reshape(n, 1), np.bool_), d,
                           b("mul", [b("real_div", [s, d]), b.const((np.arange(n) > j).reshape(n, 1))])])
        Lm = b("add", [Lm, b("mul", [col, b.const((np.arange(n) == j).reshape(1, n))])])
    if upper:
        Lm = b("transpose", [Lm], {"perm": tuple(range(r - 2)) + (r - 1, r - 2)})
    return Lm


def _info(L, a):
    """torch's ``info`` result: 0 (success) for every matrix (tlc does not detect singularity)."""
    return Const(torch.zeros(tuple(a.type.shape[:-2]), dtype=torch.int32), f"{L.node.name}_info")


@lower("aten.linalg_inv_ex.default")
def _inv_ex(L, A, *, check_errors=False):
    a, n = _square(L, A)
    eye = Const(torch.eye(n, dtype=torch.float32), f"{L.node.name}_eye")
    return (gauss_jordan(L, a, L.cast(eye, a.type.dtype)), _info(L, a))


@lower("aten._linalg_solve_ex.default")
def _solve_ex(L, A, B, *, left=True, check_errors=False):
    if not left:
        raise UnsupportedOpError("solve with left=False")
    if L.result_used(1) or L.result_used(2):
        raise UnsupportedOpError("solve's LU/pivots results are read")
    a, n = _square(L, A)
    bv = L.v(B)  # torch's rule: B is a vector if 1-D or batched like A without its last axis
    vec = bv.type.rank == 1 or (bv.type.rank == a.type.rank - 1 and bv.type.shape == a.type.shape[:-1])
    bm = L.add("expand_dims", [bv], {"axes": (-1,)}, name=f"{L.node.name}_col") if vec else bv
    x = gauss_jordan(L, a, bm)
    if vec:
        x = L.add("squeeze", [x], {"axes": (-1,)}, name=f"{L.node.name}_vec")
    return (x, None, None, _info(L, a))


def _empty_square(L, A) -> bool:
    shape = L.v(A).type.shape
    return len(shape) >= 2 and shape[-1] == shape[-2] == 0


def _batch_const(L, A, value: float, what: str):
    """A constant of A's batch shape (A: [..., 0, 0]) holding ``value``, in A's dtype."""
    a = L.v(A)
    t = torch.full(tuple(a.type.shape[:-2]), value, dtype=torch.float16 if a.type.dtype == "fp16" else torch.float32)
    return Const(t, f"{L.node.name}_{what}")


@lower("aten._linalg_det.default")
def _det(L, A):
    if L.result_used(1) or L.result_used(2):
        raise UnsupportedOpError("det's LU/pivots results are read")
    if _empty_square(L, A):  # det of a 0 x 0 matrix is 1 (the empty product)
        return (_batch_const(L, A, 1.0, "det"), None, None)
    M, _, sign = lu(L, A)
    a, n = _square(L, A)
    b = _B(L, a.type.dtype)
    d = b("reduce_prod", [_diag(b, M, n)], {"axes": (-1,), "keep_dims": False})
    s = b("reshape", [sign], {"shape": d.type.shape}) if sign.type.shape != d.type.shape else sign
    return (b("mul", [d, s]), None, None)


@lower("aten._linalg_slogdet.default")
def _slogdet(L, A):
    if L.result_used(2) or L.result_used(3):
        raise UnsupportedOpError("slogdet's LU/pivots results are read")
    if _empty_square(L, A):  # 0 x 0: sign 1, log|det| 0
        return (_batch_const(L, A, 1.0, "sign"), _batch_const(L, A, 0.0, "logabsdet"), None, None)
    M, _, sign = lu(L, A)
    a, n = _square(L, A)
    b = _B(L, a.type.dtype)
    dg = _diag(b, M, n)
    sgn = b("mul", [b("reduce_prod", [b("sign", [dg])], {"axes": (-1,), "keep_dims": False}),
                    b("reshape", [sign], {"shape": a.type.shape[:-2]})])
    logabs = b("reduce_sum", [b("log", [b("abs", [dg])], {"epsilon": 0.0})], {"axes": (-1,), "keep_dims": False})
    return (sgn, logabs, None, None)


@lower("aten.logdet.default")
def _logdet(L, A):
    d, _, _ = _det(L, A)
    return L.add("log", [d], {"epsilon": 0.0})


@lower("aten.linalg_lu_factor_ex.default")
def _lu_factor_ex(L, A, *, pivot=True, check_errors=False):
    if not pivot:
        raise UnsupportedOpError("LU without pivoting")
    M, pv, _ = lu(L, A, square=False)
    return (M, pv, _info(L, L.v(A)))


def _perm_matrix(b: _B, pv, n, lead):
    """P [..., n, n] (A = P L U) from 1-based LAPACK pivots [..., k]: identity rows swapped in
    order."""
    P = b.const(np.broadcast_to(np.eye(n), lead + (n, n)).copy())
    rows = b.const(np.arange(n).reshape(n, 1), np.int32)
    for k in range(pv.type.shape[-1]):
        p = b("sub", [b.cols(b("expand_dims", [pv], {"axes": (-2,)}), k, k + 1), b.const(1, np.int32)])  # [..., 1, 1]
        src = b("select", [b("equal", [rows, b.const(k, np.int32)]), p,
                           b("select", [b("equal", [rows, p]), b.const(k, np.int32), rows])])
        P = b("gather_along_axis", [P, b("tile", [src], {"reps": (1,) * len(lead) + (1, n)})], {"axis": len(lead)})
    r = len(lead) + 2
    return b("transpose", [P], {"perm": tuple(range(r - 2)) + (r - 1, r - 2)})  # A = P L U


def _unpack(b: _B, M, n):
    """(L [..., m, k] unit lower, U [..., k, n] upper) of a packed LU [..., m, n], k = min(m, n)."""
    m = M.type.shape[-2]
    k = min(m, n)
    ii, jj = np.meshgrid(np.arange(m), np.arange(n), indexing="ij")
    low = b("add", [b("mul", [M, b.const((ii > jj).astype(np.float32))]), b.const(np.eye(m, n))])
    up = b("mul", [M, b.const((ii <= jj).astype(np.float32))])
    return (b.cols(low, 0, k) if k < n else low), (b.rows(up, 0, k) if k < m else up)


@lower("aten.linalg_lu.default")
def _linalg_lu(L, A, *, pivot=True):
    if not pivot:
        raise UnsupportedOpError("LU without pivoting")
    a, n = _square(L, A, square=False)
    M, pv, _ = lu(L, a, square=False)
    b = _B(L, a.type.dtype)
    low, up = _unpack(b, M, n)
    return (_perm_matrix(b, pv, a.type.shape[-2], a.type.shape[:-2]), low, up)


@lower("aten.lu_unpack.default")
def _lu_unpack(L, LU, pivots, unpack_data=True, unpack_pivots=True):
    a, n = _square(L, LU, square=False)
    b = _B(L, a.type.dtype)
    low, up = _unpack(b, a, n)
    P = _perm_matrix(b, L.cast(pivots, "int32"), a.type.shape[-2], a.type.shape[:-2])
    return (P, low, up)


@lower("aten.linalg_lu_solve.default")
def _lu_solve(L, LU, pivots, B, *, left=True, adjoint=False):
    """A X = B with A = P L U: X = U^-1 L^-1 P^T B; ``adjoint``: A^T X = B, X = P L^-T U^-T B;
    ``left=False``: X A = B, the transposed problem (A^T X^T = B^T)."""
    a, n = _square(L, LU)
    b = _B(L, a.type.dtype)
    bv = L.cast(B, a.type.dtype)
    r = bv.type.rank
    tr = tuple(range(r - 2)) + (r - 1, r - 2)
    if not left:
        bv = b("transpose", [bv], {"perm": tr})
        adjoint = not adjoint
    P = _perm_matrix(b, L.cast(pivots, "int32"), n, a.type.shape[:-2])
    pt = tuple(range(P.type.rank - 2)) + (P.type.rank - 1, P.type.rank - 2)
    low, up = _unpack(b, a, n)
    if adjoint:
        y = triangular(L, up, bv, False, transpose=True)
        z = triangular(L, low, y, True, unit=True, transpose=True)
        x = b("matmul", [P, z])
    else:
        pb = b("matmul", [b("transpose", [P], {"perm": pt}), bv])
        x = triangular(L, up, triangular(L, low, pb, True, unit=True), False)
    return b("transpose", [x], {"perm": tr}) if not left else x


@lower("aten.lu_solve.default")
def _lu_solve_legacy(L, B, LU, pivots):
    return _lu_solve(L, LU, pivots, B)


@lower("aten.linalg_cholesky_ex.default")
def _cholesky_ex(L, A, *, upper=False, check_errors=False):
    return (cholesky(L, A, upper), _info(L, L.v(A)))


@lower("aten.cholesky.default")
def _cholesky_legacy(L, A, upper=False):
    return cholesky(L, A, upper)


@lower("aten.cholesky_solve.default")
def _cholesky_solve(L, B, Lfac, upper=False):
    """A X = B with A = L L^T (or U^T U): two triangular solves."""
    y = triangular(L, Lfac, B, not upper, transpose=upper)  # L y = B (or U^T y = B)
    return triangular(L, Lfac, y, not upper, transpose=not upper)  # L^T x = y (or U x = y)


@lower("aten.cholesky_inverse.default")
def _cholesky_inverse(L, Lfac, upper=False):
    a, n = _square(L, Lfac)
    eye = L.cast(Const(torch.eye(n, dtype=torch.float32), f"{L.node.name}_eye"), a.type.dtype)
    return _cholesky_solve(L, eye, a, upper)


@lower("aten.triangular_solve.default")
def _triangular_solve(L, B, A, upper=True, transpose=False, unitriangular=False):
    x = triangular(L, A, B, not upper, unitriangular, transpose)
    return (x, L.add("identity", [L.v(A)], name=f"{L.node.name}_A"))


@lower("aten.linalg_solve_triangular.default")
def _solve_triangular(L, A, B, *, upper, left=True, unitriangular=False):
    if not left:
        # X A = B  <=>  A^T X^T = B^T
        bv = L.v(B)
        r = bv.type.rank
        perm = tuple(range(r - 2)) + (r - 1, r - 2)
        bt = L.add("transpose", [bv], {"perm": perm}, name=f"{L.node.name}_bt")
        x = triangular(L, A, bt, not upper, unitriangular, transpose=True)
        return L.add("transpose", [x], {"perm": perm})
    return triangular(L, A, B, not upper, unitriangular)
