"""Per-op numerics of tlc's MIL interpreter for the MIL ops issue 10 brought into the op table:
gathers, scatters, scans, sorting, arg-reductions, conv_transpose, 3-D conv and nearest
upsampling. Built with coremltools' MIL Builder, converted at fp32 and fp16, run by
:class:`tlc.runtime.MILInterpreter` and compared with a float64 torch reference (the helpers and
tolerances of tests/milcheck.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil import Builder as mb

from milcheck import R, check, check_all, f32, precisions, run_mil

COVERED = {"gather_along_axis", "gather_nd", "scatter", "scatter_along_axis", "scatter_nd", "cumsum", "topk",
           "argsort", "reduce_argmax", "reduce_argmin", "conv_transpose", "upsample_nearest_neighbor", "random_uniform",
           "random_normal", "random_bernoulli"}


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@precisions
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_along_axis(axis, precision, tmp_path, rng):
    x = f32(rng.normal(size=(3, 4, 5)))
    shape = list(x.shape)
    shape[axis] = 2
    idx = rng.integers(0, x.shape[axis], shape).astype(np.int32)
    (got,) = run_mil(tmp_path, lambda x, i: mb.gather_along_axis(x=x, indices=i, axis=axis), {"x": x, "i": idx},
                     precision, "gather_along_axis")
    check(got, torch.gather(R(x, precision), axis % 3, torch.from_numpy(idx).long()), precision)


@precisions
def test_gather_nd(precision, tmp_path, rng):
    x = f32(rng.normal(size=(4, 5, 3)))
    idx = np.array([[0, 4], [3, 1], [2, 2]], np.int32)
    (got,) = run_mil(tmp_path, lambda x, i: mb.gather_nd(x=x, indices=i), {"x": x, "i": idx}, precision, "gather_nd")
    t = R(x, precision)
    check(got, t[idx[:, 0], idx[:, 1]], precision)


_TORCH_REDUCE = {"mul": "prod", "max": "amax", "min": "amin"}


def _scatter_ref(data, axis, idx, upd, mode):
    """torch reference of MIL scatter_along_axis (``idx`` shaped like ``upd``)."""
    i = torch.from_numpy(idx).long()
    if mode == "update":
        return data.scatter(axis, i, upd)
    if mode == "add":
        return data.scatter_add(axis, i, upd)
    if mode == "sub":
        return data.scatter_add(axis, i, -upd)
    return data.scatter_reduce(axis, i, upd, _TORCH_REDUCE[mode])


@precisions
@pytest.mark.parametrize("mode", ["update", "add", "sub", "mul", "max", "min"])
def test_scatter(mode, precision, tmp_path, rng):
    """MIL scatter: 1-D indices along axis 1; updates [3, len(indices)]."""
    data, upd = f32(rng.normal(size=(3, 5))), f32(rng.normal(size=(3, 3)))
    idx = np.array([4, 0, 2], np.int32) if mode == "update" else np.array([4, 0, 4], np.int32)
    (got,) = run_mil(tmp_path, lambda d, i, u: mb.scatter(data=d, indices=i, updates=u, axis=1, mode=mode),
                     {"d": data, "i": idx, "u": upd}, precision, "scatter")
    full = np.broadcast_to(idx[None, :], (3, 3)).copy()
    check(got, _scatter_ref(R(data, precision), 1, full, R(upd, precision), mode), precision, mode)


@precisions
@pytest.mark.parametrize("mode", ["update", "add", "max"])
def test_scatter_along_axis(mode, precision, tmp_path, rng):
    data = f32(rng.normal(size=(3, 5)))
    idx = np.array([[0, 4], [2, 1], [3, 1]], np.int32) if mode == "update" else np.array([[0, 0], [2, 1], [1, 1]], np.int32)
    upd = f32(rng.normal(size=(3, 2)))
    (got,) = run_mil(tmp_path, lambda d, i, u: mb.scatter_along_axis(data=d, indices=i, updates=u, axis=1, mode=mode),
                     {"d": data, "i": idx, "u": upd}, precision, "scatter_along_axis")
    check(got, _scatter_ref(R(data, precision), 1, idx, R(upd, precision), mode), precision, mode)


@precisions
@pytest.mark.parametrize("mode", ["update", "add"])
def test_scatter_nd(mode, precision, tmp_path, rng):
    data = f32(rng.normal(size=(4, 3, 2)))
    idx = np.array([[2, 0], [0, 1]] if mode == "update" else [[2, 0], [0, 1], [2, 0]], np.int32)
    upd = f32(rng.normal(size=(len(idx), 2)))
    (got,) = run_mil(tmp_path, lambda d, i, u: mb.scatter_nd(data=d, indices=i, updates=u, mode=mode),
                     {"d": data, "i": idx, "u": upd}, precision, "scatter_nd")
    ref = R(data, precision).clone()
    cols = (torch.from_numpy(idx[:, 0]).long(), torch.from_numpy(idx[:, 1]).long())
    ref = ref.index_put(cols, R(upd, precision), accumulate=mode == "add")
    check(got, ref, precision, mode)


@precisions
@pytest.mark.parametrize("exclusive, reverse", [(False, False), (True, False), (False, True), (True, True)])
def test_cumsum(exclusive, reverse, precision, tmp_path, rng):
    x = f32(rng.normal(size=(3, 6)))
    (got,) = run_mil(tmp_path, lambda x: mb.cumsum(x=x, axis=1, exclusive=exclusive, reverse=reverse), {"x": x},
                     precision, "cumsum")
    t = R(x, precision)
    t = t.flip(1) if reverse else t
    ref = torch.cumsum(t, 1)
    if exclusive:
        ref = torch.cat([torch.zeros_like(ref[:, :1]), ref[:, :-1]], 1)
    check(got, ref.flip(1) if reverse else ref, precision)


@precisions
@pytest.mark.parametrize("ascending", [False, True])
def test_topk_and_argsort(ascending, precision, tmp_path, rng):
    x = f32(rng.permutation(60).reshape(3, 4, 5) / 7.0)  # distinct values: no tie order to argue about
    got = run_mil(tmp_path, lambda x: list(mb.topk(x=x, k=3, axis=1, ascending=ascending)), {"x": x}, precision, "topk")
    v, i = torch.topk(R(x, precision), 3, dim=1, largest=not ascending, sorted=True)
    check_all(got, [v, i.int()], precision, ["values", "indices"])
    (got,) = run_mil(tmp_path, lambda x: mb.argsort(x=x, axis=-1, ascending=ascending), {"x": x}, precision, "argsort")
    check(got, torch.argsort(R(x, precision), dim=-1, descending=not ascending).int(), precision)


@precisions
@pytest.mark.parametrize("op, keep", [("reduce_argmax", False), ("reduce_argmin", True)])
def test_arg_reductions(op, keep, precision, tmp_path, rng):
    x = f32(rng.permutation(60).reshape(3, 4, 5))
    (got,) = run_mil(tmp_path, lambda x: getattr(mb, op)(x=x, axis=1, keep_dims=keep), {"x": x}, precision, op)
    fn = torch.argmax if op == "reduce_argmax" else torch.argmin
    check(got, fn(R(x, precision), dim=1, keepdim=keep).int(), precision)


@precisions
@pytest.mark.parametrize("case", [
    dict(nsp=2, strides=[2, 2], pad=[1, 1, 1, 1], groups=1),
    dict(nsp=2, strides=[2, 1], pad=[0, 1, 1, 0], groups=2),
    dict(nsp=1, strides=[3], pad=[1, 1], groups=1),
    dict(nsp=3, strides=[1, 2, 1], pad=[0, 0, 1, 1, 0, 1], groups=1),
], ids=["2d", "2d_groups_asym", "1d", "3d"])
def test_conv_transpose(case, precision, tmp_path, rng):
    nsp = case["nsp"]
    x = f32(rng.normal(size=(2, 4) + (4,) * nsp))
    w = f32(rng.normal(size=(4, 6 // case["groups"]) + (3,) * nsp) * 0.5)
    b = f32(rng.normal(size=(6,)))

    def build(x):
        return mb.conv_transpose(x=x, weight=w, bias=b, strides=case["strides"], pad_type="custom", pad=case["pad"],
                                 groups=case["groups"])

    (got,) = run_mil(tmp_path, build, {"x": x}, precision, "conv_transpose")
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nsp - 1]
    full = fn(R(x, precision), R(w, precision), R(b, precision), case["strides"], 0, 0, case["groups"])
    p = case["pad"]
    sl = (slice(None), slice(None)) + tuple(slice(p[2 * i], full.shape[2 + i] - p[2 * i + 1]) for i in range(nsp))
    check(got, full[sl], precision)


@precisions
def test_conv_3d(precision, tmp_path, rng):
    x = f32(rng.normal(size=(1, 2, 5, 4, 4)))
    w = f32(rng.normal(size=(3, 2, 3, 2, 2)) * 0.5)
    (got,) = run_mil(tmp_path, lambda x: mb.conv(x=x, weight=w, strides=[2, 1, 1], pad_type="custom",
                                                 pad=[1, 1, 0, 1, 1, 0]), {"x": x}, precision, "conv")
    t = F.pad(R(x, precision), (1, 0, 0, 1, 1, 1))
    check(got, F.conv3d(t, R(w, precision), stride=(2, 1, 1)), precision)


@precisions
@pytest.mark.parametrize("sh, sw", [(2, 2), (1, 3), (3, 1)])
def test_upsample_nearest_neighbor(sh, sw, precision, tmp_path, rng):
    x = f32(rng.normal(size=(1, 3, 4, 5)))
    (got,) = run_mil(tmp_path, lambda x: mb.upsample_nearest_neighbor(x=x, scale_factor_height=sh, scale_factor_width=sw),
                     {"x": x}, precision, "upsample_nearest_neighbor")
    check(got, F.interpolate(R(x, precision), scale_factor=(sh, sw), mode="nearest"), precision)


@pytest.mark.parametrize("op, kw, mean, var, lo, hi", [
    ("random_uniform", {"low": -1.0, "high": 3.0}, 1.0, 16 / 12, -1.0, 3.0),
    ("random_normal", {"mean": 2.0, "stddev": 0.5}, 2.0, 0.25, -np.inf, np.inf),
    ("random_bernoulli", {"prob": 0.2}, 0.2, 0.16, 0.0, 1.0),
])
def test_random(op, kw, mean, var, lo, hi, tmp_path):
    """Random MIL ops (iOS15 random.py): distribution of 20000 draws (6 standard errors)."""
    x = f32(np.zeros(1))

    def build(x):
        return getattr(mb, op)(shape=np.array([200, 100], np.int32), seed=-1, **{k: np.float32(v) for k, v in kw.items()})

    (got,) = run_mil(tmp_path, build, {"x": x}, "fp32", op)
    assert got.shape == (200, 100) and got.min() >= lo and got.max() <= hi
    assert abs(got.mean() - mean) < 6 * np.sqrt(var / got.size)
