"""ATen -> IR lowerings of adaptive pooling and resampling (interpolation, upsampling), registered
into :data:`tlc.frontend.common.LOWERINGS`. Linear resamplings are one matrix per axis, computed by
torch itself on one-hot inputs (:func:`apply_axis_matrices`), so the weights match torch exactly.
"""
from __future__ import annotations

import numpy as np
import torch
from .aten_nn import window_argmax
from .common import Const, lower, shape_of


# ---------------------------------------------------------------------- adaptive pools, resampling


def _axis_matrix(call, n_in: int) -> np.ndarray:
    """The [n_out, n_in] matrix of a linear 1-axis resampling, computed by torch itself:
    ``call(E)`` on the one-hot batch E (float64, the signal axis of length n_in, sample b = e_b)
    returns [n_in, ..., n_out, ...] whose sample b is column b of the matrix."""
    e = torch.eye(n_in, dtype=torch.float64)
    with torch.no_grad():
        y = call(e)
    return y.reshape(n_in, -1).T.numpy()


def apply_axis_matrices(L, x, mats: dict) -> object:
    """x with each ``{axis: A[n_out, n_in]}`` applied along its axis as a matmul with a constant
    (last axis: x @ A^T; second to last: A @ x; others: a [before, n_in, after] view). Identity
    matrices are skipped; axes that shrink go first (less work for the rest)."""
    x = L.v(x)
    order = sorted(mats, key=lambda ax: mats[ax].shape[0] / mats[ax].shape[1])
    for ax in order:
        A = mats[ax]
        if A.shape[0] == A.shape[1] and np.array_equal(A, np.eye(A.shape[0])):
            continue
        shape = x.type.shape
        r = len(shape)
        dt = x.type.dtype
        name = f"{L.node.name}norm_axis{ax}"
        if ax == r - 1:
            m = Const(torch.from_numpy(np.ascontiguousarray(A.T, dtype=np.float32)), name + "_t")
            x = L.add("matmul", [x, L.cast(m, dt)], name=name)
        elif ax == r - 2:
            m = Const(torch.from_numpy(np.ascontiguousarray(A, dtype=np.float32)), name + "_m")
            x = L.add("matmul", [L.cast(m, dt), x], name=name)
        else:
            before, after = int(np.prod(shape[:ax])), int(np.prod(shape[ax + 1:]))
            v = L.add("reshape", [x], {"shape": (before, shape[ax], after)}, name=name + "_view")
            m = Const(torch.from_numpy(np.ascontiguousarray(A, dtype=np.float32)), name + "_m")
            v = L.add("matmul", [L.cast(m, dt), v], name=name)
            x = L.add("reshape", [v], {"shape": shape[:ax] + (A.shape[0],) + shape[ax + 1:]}, name=name + "_back")
    return x


def _repeat_factor(A: np.ndarray) -> int | None:
    """k if A is nearest upsampling by the integer k (row o reads column o // k), else None."""
    n_out, n_in = A.shape
    if n_out % n_in:
        return None
    k = n_out // n_in
    want = np.zeros_like(A)
    want[np.arange(n_out), np.arange(n_out) // k] = 1
    return k if np.array_equal(A, want) else None


_UPSAMPLE = [f"aten.{op}.{ov}" for op in (
    "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact1d",
    "_upsample_nearest_exact2d", "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d",
    "upsample_trilinear3d", "upsample_bicubic2d", "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa")
    for ov in ("vec", "default")]


@lower(*_UPSAMPLE)
def _upsample(L, x, *args, **kwargs):
    """Every torch upsampling (nearest, nearest-exact, linear, bilinear, trilinear, bicubic,
    antialiased; sizes or scale factors; ``align_corners`` either way) is linear and separable
    per spatial axis, so it lowers to one matmul per changed axis with the matrix torch itself
    computes (:func:`_axis_matrix`, the op run on one-hot signals): no resampling rule is
    re-implemented, and the result is torch's up to rounding. Nearest upsampling of the last two
    axes by integer factors becomes MIL ``upsample_nearest_neighbor`` instead (the ANE's own
    op, no matmul)."""
    op = L.node.target
    names = [a.name for a in op._schema.arguments]
    bound = dict(zip(names[1:], args))
    bound.update(kwargs)
    shape = shape_of(x)
    nsp = len(shape) - 2
    out_sp = L.out_type().shape[2:]
    mats = {}
    for i in range(nsp):
        kw = dict(bound)
        # the other spatial axes: length 2, kept (torch's antialiased kernels mishandle length 1)
        if kw.get("output_size") is not None:
            kw["output_size"] = [out_sp[j] if j == i else 2 for j in range(nsp)]
        if kw.get("scale_factors") is not None:
            kw["scale_factors"] = [float(kw["scale_factors"][j]) if j == i else 1.0 for j in range(nsp)]
        for j, nm in enumerate(n for n in names if n.startswith("scales")):
            if nm in kw and j != i:
                kw[nm] = None
        if kw.get("output_size") is None and kw.get("scale_factors") is None:
            kw["output_size"] = [out_sp[j] if j == i else 2 for j in range(nsp)]

        def call(e, i=i, kw=kw):
            n_in = shape[2 + i]
            sig = e.reshape((n_in, 1) + tuple(n_in if j == i else 1 for j in range(nsp)))
            sig = sig.expand((n_in, 1) + tuple(n_in if j == i else 2 for j in range(nsp))).contiguous()
            y = op(sig, **kw)
            return y[(slice(None), slice(None)) + tuple(slice(None) if j == i else 0 for j in range(nsp))]

        mats[2 + i] = _axis_matrix(call, shape[2 + i])
    reps = {ax: _repeat_factor(A) for ax, A in mats.items()}
    changed = [ax for ax, A in mats.items() if not (A.shape[0] == A.shape[1] and np.array_equal(A, np.eye(A.shape[0])))]
    r = len(shape)
    if changed and all(reps[ax] and ax >= r - 2 for ax in changed) and L.v(x).type.dtype in ("fp32", "fp16"):
        sh = reps.get(r - 2) if r - 2 >= 2 else 1
        return L.add("upsample_nearest_neighbor", [x], {"scale_factor_height": int(sh or 1),
                                                        "scale_factor_width": int(reps.get(r - 1) or 1)})
    return apply_axis_matrices(L, x, mats)


@lower("aten.adaptive_avg_pool1d.default", "aten.adaptive_avg_pool2d.default", "aten._adaptive_avg_pool2d.default",
       "aten.adaptive_avg_pool3d.default", "aten._adaptive_avg_pool3d.default")
def _adaptive_avg_pool(L, x, output_size):
    """Global -> ``reduce_mean``; windows that tile the input -> ``avg_pool``; otherwise the
    per-axis averaging matrices torch uses (:func:`_axis_matrix`) as matmuls."""
    shape = shape_of(x)
    nsp = len(shape) - 2
    out = L.out_type().shape[2:]
    if all(o == 1 for o in out):
        return L.add("reduce_mean", [x], {"axes": tuple(range(2, 2 + nsp)), "keep_dims": True})
    if all(i % o == 0 for i, o in zip(shape[2:], out)) and nsp <= 3:
        k = tuple(i // o for i, o in zip(shape[2:], out))
        return L.add("avg_pool", [x], {"kernel_sizes": k, "strides": k, "pad": (0,) * (2 * nsp)})
    mats = {2 + i: _axis_matrix(lambda e, n=out[i]: torch.nn.functional.adaptive_avg_pool1d(e[:, None], n),
                                shape[2 + i]) for i in range(nsp)}
    return apply_axis_matrices(L, x, mats)


@lower("aten.adaptive_max_pool1d.default", "aten.adaptive_max_pool2d.default", "aten.adaptive_max_pool3d.default")
def _adaptive_max_pool(L, x, output_size):
    """Values of torch's adaptive max pooling, one axis at a time (max is separable): windows
    [floor(i n / o), ceil((i+1) n / o)) — a reshape + ``reduce_max`` where they tile the axis,
    else a ``gather`` of each window (short ones repeat their last element) + ``reduce_max``."""
    shape = shape_of(x)
    out = L.out_type(0).shape[2:]
    if L.result_used(1):  # torch's indices too: every window gathered whole
        axes = [[list(range((j * n) // o, -(-((j + 1) * n) // o))) for j in range(o)] for n, o in zip(shape[2:], out)]
        return window_argmax(L, L.v(x), axes)
    y = L.v(x)
    for i, o in enumerate(out):
        ax, n = 2 + i, shape[2 + i]
        cur = y.type.shape
        name = f"{L.node.name}norm_axis{ax}"
        if n == o:
            continue
        if n % o == 0:
            v = L.add("reshape", [y], {"shape": cur[:ax] + (o, n // o) + cur[ax + 1:]}, name=name + "_win")
        else:
            starts = [(j * n) // o for j in range(o)]
            ends = [-(-((j + 1) * n) // o) for j in range(o)]
            width = max(e - s for s, e in zip(starts, ends))
            idx = np.array([[min(s + t, e - 1) for t in range(width)] for s, e in zip(starts, ends)], np.int32)
            v = L.add("gather", [y, Const(torch.from_numpy(idx), name + "_idx")], {"axis": ax}, name=name + "_win")
        y = L.add("reduce_max", [v], {"axes": (ax + 1,), "keep_dims": False}, name=name)
    return (y, None)
