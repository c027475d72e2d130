"""MIL interpreter numerics: reshape, transpose, expand/squeeze, concat/split, slicing, gather, tile, reverse, pad, identity.

Helpers and tolerances: tests/milcheck.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from milcheck import (PRECISIONS, R, check, check_all, ct, explicit_pads, f32, mb, precisions, rng,  # noqa: F401
                      run_mil, same_pads, torch_pad, types)


# ---------------------------------------------------------------------------- data movement

# MIL reshape: -1 is inferred; 0 copies the input's dimension when len(shape) == rank(x).
RESHAPES = [([4, 6], (4, 6)), ([-1], (24,)), ([0, -1, 2], (2, 6, 2)), ([4, 0, 2], (4, 3, 2)),
            ([0, 4, -1], (2, 4, 3)), ([1, -1, 4, 2], (1, 3, 4, 2)), ([24, 1], (24, 1))]


@precisions
def test_reshape(precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 3, 4)))
    xi = rng.integers(-99, 99, (2, 3, 4)).astype(np.int32)

    def build(x, xi):
        return [mb.reshape(x=x, shape=s) for s, _ in RESHAPES] + [mb.reshape(x=xi, shape=[3, -1, 2])]

    got = run_mil(tmp_path, build, {"x": x, "xi": xi}, precision, "reshape")
    t, ti = R(x, precision), R(xi, precision)
    refs = [torch.reshape(t, want) for _, want in RESHAPES] + [torch.reshape(ti, (3, 4, 2))]
    check_all(got, refs, precision, [f"shape={s}" for s, _ in RESHAPES] + ["int32 [3,-1,2]"])


PERMS = [(0, 1, 2, 3), (3, 2, 1, 0), (0, 2, 3, 1), (1, 0, 3, 2), (2, 3, 0, 1)]


@precisions
def test_transpose(precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 3, 4, 5)))
    xi = rng.integers(-99, 99, (2, 3, 4)).astype(np.int32)

    def build(x, xi):
        return [mb.transpose(x=x, perm=list(p)) for p in PERMS] + [mb.transpose(x=xi, perm=[2, 0, 1])]

    got = run_mil(tmp_path, build, {"x": x, "xi": xi}, precision, "transpose")
    t = R(x, precision)
    refs = [t.permute(*p) for p in PERMS] + [R(xi, precision).permute(2, 0, 1)]
    check_all(got, refs, precision, [f"perm={p}" for p in PERMS] + ["int32"])


EXPAND_AXES = [[0], [-1], [1], [2], [0, 3], [-1, -4], [1, -2], [-3]]


def _expand_ref(t, axes):
    """MIL expand_dims: axes index the output (rank + len(axes)); inserted in ascending order."""
    out_rank = t.dim() + len(axes)
    for a in sorted(a % out_rank for a in axes):
        t = t.unsqueeze(a)
    return t


@precisions
def test_expand_dims(precision, tmp_path, rng):
    x = f32(rng.normal(size=(3, 4)))
    xi = rng.integers(-9, 9, (3, 4)).astype(np.int32)

    def build(x, xi):
        return [mb.expand_dims(x=x, axes=a) for a in EXPAND_AXES] + [mb.expand_dims(x=xi, axes=[1])]

    got = run_mil(tmp_path, build, {"x": x, "xi": xi}, precision, "expand_dims")
    t = R(x, precision)
    refs = [_expand_ref(t, a) for a in EXPAND_AXES] + [R(xi, precision).unsqueeze(1)]
    check_all(got, refs, precision, [f"axes={a}" for a in EXPAND_AXES] + ["int32"])


SQUEEZE_AXES = [[0], [-1], [0, 2], [2, -1], [-5, 4], None]


@precisions
def test_squeeze(precision, tmp_path, rng):
    x = f32(rng.normal(size=(1, 3, 1, 4, 1)))
    xi = rng.integers(-9, 9, (1, 3, 1)).astype(np.int32)

    def build(x, xi):
        return ([mb.squeeze(x=x, axes=a) if a is not None else mb.squeeze(x=x) for a in SQUEEZE_AXES]
                + [mb.squeeze(x=xi)])

    got = run_mil(tmp_path, build, {"x": x, "xi": xi}, precision, "squeeze")
    t = R(x, precision)
    refs = [t.squeeze(tuple(a)) if a is not None else t.squeeze() for a in SQUEEZE_AXES] + [R(xi, precision).squeeze()]
    check_all(got, refs, precision, [f"axes={a}" for a in SQUEEZE_AXES] + ["int32, no axes"])


def _interleave_ref(ts, axis):
    """MIL concat(interleave=True): output[..., i::n, ...] = values[i] along ``axis``."""
    n = len(ts)
    axis = axis % ts[0].dim()
    shape = list(ts[0].shape)
    shape[axis] *= n
    out = torch.empty(shape, dtype=ts[0].dtype)
    for i, t in enumerate(ts):
        out[(slice(None),) * axis + (slice(i, None, n),)] = t
    return out


@precisions
def test_concat(precision, tmp_path, rng):
    a = f32(rng.normal(size=(2, 3, 4)))
    b = f32(rng.normal(size=(2, 1, 4)))
    c = f32(rng.normal(size=(2, 2, 4)))  # const operand
    d = f32(rng.normal(size=(2, 3, 4)))
    e = f32(rng.normal(size=(1, 3, 4)))
    ai, bi = rng.integers(-9, 9, (2, 3)).astype(np.int32), rng.integers(-9, 9, (2, 2)).astype(np.int32)

    def build(a, b, d, e, ai, bi):
        return [
            mb.concat(values=[a, b, c], axis=1),
            mb.concat(values=[a, b, c], axis=-2),
            mb.concat(values=[a, e, d], axis=0),
            mb.concat(values=[a, d], axis=-1),
            mb.concat(values=[a, d], axis=1, interleave=True),
            mb.concat(values=[a, d, a], axis=-1, interleave=True),
            mb.concat(values=[a, d], axis=0, interleave=True),
            mb.concat(values=[ai, bi], axis=1),
        ]

    got = run_mil(tmp_path, build, dict(a=a, b=b, d=d, e=e, ai=ai, bi=bi), precision, "concat")
    P = lambda v: R(v, precision)  # noqa: E731
    ta, tb, tc, td, te = P(a), P(b), P(c), P(d), P(e)
    refs = [torch.cat([ta, tb, tc], 1), torch.cat([ta, tb, tc], -2), torch.cat([ta, te, td], 0), torch.cat([ta, td], -1),
            _interleave_ref([ta, td], 1), _interleave_ref([ta, td, ta], -1), _interleave_ref([ta, td], 0),
            torch.cat([P(ai), P(bi)], 1)]
    check_all(got, refs, precision, ["axis 1 (const operand)", "axis -2", "axis 0", "axis -1", "interleave axis 1",
                                     "interleave 3 inputs axis -1", "interleave axis 0", "int32"])


@precisions
def test_split(precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 6, 5)))
    xi = rng.integers(-9, 9, (4, 3)).astype(np.int32)

    def build(x, xi):
        return [*mb.split(x=x, split_sizes=[1, 3, 2], axis=1), *mb.split(x=x, num_splits=5, axis=-1),
                *mb.split(x=x, num_splits=2, axis=0), *mb.split(x=x, split_sizes=[4, 1], axis=-1),
                *mb.split(x=xi, num_splits=2, axis=0)]

    got = run_mil(tmp_path, build, {"x": x, "xi": xi}, precision, "split")
    t = R(x, precision)
    refs = [*torch.split(t, [1, 3, 2], 1), *torch.chunk(t, 5, -1), *torch.chunk(t, 2, 0), *torch.split(t, [4, 1], -1),
            *torch.chunk(R(xi, precision), 2, 0)]
    labels = (["split_sizes [1,3,2] axis 1"] * 3 + ["num_splits 5 axis -1"] * 5 + ["num_splits 2 axis 0"] * 2
              + ["split_sizes [4,1] axis -1"] * 2 + ["int32"] * 2)
    check_all(got, refs, precision, [f"{lab} part {i}" for i, lab in enumerate(labels)])


# (kwargs for mb.slice_by_index, torch index)
SLICES = [
    ("plain, stride 2", dict(begin=[1, 0, 2], end=[3, 6, 7], stride=[1, 2, 2]),
     (slice(1, 3), slice(0, 6, 2), slice(2, 7, 2))),
    ("negative begin/end", dict(begin=[-3, -5, 0], end=[-1, -1, 7], stride=[1, 1, 3]),
     (slice(-3, -1), slice(-5, -1), slice(0, 7, 3))),
    ("begin_mask/end_mask", dict(begin=[2, 1, 5], end=[0, 4, 0], stride=[1, 1, 2], begin_mask=[False, True, True],
                                 end_mask=[True, False, True]),
     (slice(2, None), slice(None, 4), slice(None, None, 2))),
    ("squeeze_mask", dict(begin=[1, 0, -2], end=[2, 6, -1], squeeze_mask=[True, False, True]),
     (1, slice(0, 6), -2)),
    ("squeeze_mask + masks + stride 2", dict(begin=[-4, 3, 0], end=[0, 0, 0], stride=[2, 1, 3], begin_mask=[False, False, True],
                                             end_mask=[True, True, True], squeeze_mask=[False, True, False]),
     (slice(-4, None, 2), 3, slice(None, None, 3))),
    ("negative begin, stride 2", dict(begin=[-4, -6, -7], end=[4, -1, -2], stride=[2, 2, 2]),
     (slice(-4, 4, 2), slice(-6, -1, 2), slice(-7, -2, 2))),
    ("end past the size (clamped)", dict(begin=[0, 2, 1], end=[10, 100, 7], stride=[3, 1, 1]),
     (slice(0, 10, 3), slice(2, 100), slice(1, 7))),
]


@precisions
def test_slice_by_index(precision, tmp_path, rng):
    x = f32(rng.normal(size=(4, 6, 7)))
    xi = rng.integers(-99, 99, (4, 6)).astype(np.int32)

    def build(x, xi):
        return ([mb.slice_by_index(x=x, **kw) for _, kw, _ in SLICES]
                + [mb.slice_by_index(x=xi, begin=[1, -5], end=[0, 6], stride=[2, 2], end_mask=[True, False])])

    got = run_mil(tmp_path, build, {"x": x, "xi": xi}, precision, "slice_by_index")
    t = R(x, precision)
    refs = [t[idx] for _, _, idx in SLICES] + [R(xi, precision)[1::2, -5:6:2]]
    check_all(got, refs, precision, [lab for lab, _, _ in SLICES] + ["int32"])


def _index_lists_ref(t, idx):
    """x[idx] for numpy-style slices (negative steps included) through explicit index lists
    (torch tensors cannot be sliced with a negative step)."""
    for ax, sl in enumerate(idx):
        pos = torch.tensor(list(range(*sl.indices(t.shape[ax]))), dtype=torch.long)
        t = t.index_select(ax, pos)
    return t


NEG_SLICES = [
    ("reverse all axes", dict(begin=[0, 0, 0], end=[0, 0, 0], stride=[-1, -1, -1], begin_mask=[True] * 3,
                              end_mask=[True] * 3),
     (slice(None, None, -1),) * 3),
    # A negative index i means max(0, i + n) in MIL (coremltools' solve_slice_by_index_shape fixes
    # the declared output shape that way), so end=-8 on a size-7 axis is 0 and, with a negative
    # stride, element 0 is excluded — unlike NumPy's x[-1:-8:-3].
    ("negative strides with begin/end", dict(begin=[3, 5, -1], end=[0, 0, -8], stride=[-1, -2, -3],
                                             end_mask=[False, True, False]),
     (slice(3, 0, -1), slice(5, None, -2), slice(6, 0, -3))),
]


@precisions
def test_slice_by_index_negative_stride(precision, tmp_path, rng):
    """MIL slice_by_index allows negative strides (numpy semantics; coremltools'
    solve_slice_by_index_shape handles them)."""
    x = f32(rng.normal(size=(4, 6, 7)))

    def build(x):
        return [mb.slice_by_index(x=x, **kw) for _, kw, _ in NEG_SLICES]

    got = run_mil(tmp_path, build, {"x": x}, precision, "slice_by_index")
    t = R(x, precision)
    check_all(got, [_index_lists_ref(t, idx) for _, _, idx in NEG_SLICES], precision, [lab for lab, _, _ in NEG_SLICES])


@precisions
def test_gather(precision, tmp_path, rng):
    x = f32(rng.normal(size=(5, 4, 3)))
    i0 = rng.integers(0, 5, (2, 3)).astype(np.int32)
    i1 = np.array([3, 0, 3, 1], np.int32)  # const indices
    xi = rng.integers(-99, 99, (4, 6)).astype(np.int32)
    i2 = rng.integers(0, 6, (3,)).astype(np.int32)
    i3 = rng.integers(0, 3, (2, 2)).astype(np.int32)

    def build(x, i0, xi, i2, i3):
        return [mb.gather(x=x, indices=i0, axis=0), mb.gather(x=x, indices=i1, axis=1),
                mb.gather(x=x, indices=i3, axis=-1), mb.gather(x=xi, indices=i2, axis=1),
                mb.gather(x=x, indices=i0, axis=0, validate_indices=True)]

    got = run_mil(tmp_path, build, {"x": x, "i0": i0, "xi": xi, "i2": i2, "i3": i3}, precision, "gather")
    t, ti = R(x, precision), R(xi, precision)
    L = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    refs = [t[L(i0)], t[:, L(i1)], t[:, :, L(i3)], ti[:, L(i2)], t[L(i0)]]
    check_all(got, refs, precision, ["axis 0, [2,3] indices", "axis 1, const indices", "axis -1", "int32 x, axis 1",
                                     "validate_indices=True"])


@precisions
def test_tile(precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 3)))
    y = f32(rng.normal(size=(2, 1, 3)))
    xi = rng.integers(-9, 9, (2, 2)).astype(np.int32)

    def build(x, y, xi):
        return [mb.tile(x=x, reps=[2, 3]), mb.tile(x=y, reps=[1, 4, 2]), mb.tile(x=x, reps=[1, 1]),
                mb.tile(x=xi, reps=[3, 1])]

    got = run_mil(tmp_path, build, {"x": x, "y": y, "xi": xi}, precision, "tile")
    t = R(x, precision)
    refs = [t.repeat(2, 3), R(y, precision).repeat(1, 4, 2), t.repeat(1, 1), R(xi, precision).repeat(3, 1)]
    check_all(got, refs, precision, ["reps [2,3]", "reps [1,4,2]", "reps [1,1]", "int32"])


@precisions
def test_reverse(precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 3, 4)))
    xi = rng.integers(-9, 9, (3, 5)).astype(np.int32)

    def build(x, xi):
        return [mb.reverse(x=x, axes=[0, 2]), mb.reverse(x=x, axes=[-2]), mb.reverse(x=x), mb.reverse(x=xi, axes=[1])]

    got = run_mil(tmp_path, build, {"x": x, "xi": xi}, precision, "reverse")
    t = R(x, precision)
    refs = [torch.flip(t, (0, 2)), torch.flip(t, (1,)), torch.flip(t, (0, 1, 2)), torch.flip(R(xi, precision), (1,))]
    check_all(got, refs, precision, ["axes [0,2]", "axes [-2]", "all axes", "int32"])


# (mode, pad, constant_val or None, torch pad list or None for torch_pad(pad))
PADS = [
    ("constant", [1, 2, 0, 3], 1.5),
    ("constant", [2, 1], None),  # last axis only, default constant_val 0
    ("constant", [0, 1, 1, 0, 2, 2], -2.0),  # three axes
    ("reflect", [2, 1, 1, 3], None),
    ("reflect", [0, 0, 4, 5], None),
    ("replicate", [3, 1, 2, 0], None),
    ("replicate", [0, 0, 6, 2], None),
]


@precisions
def test_pad(precision, tmp_path, rng):
    x = f32(rng.normal(size=(1, 2, 5, 6)))

    def build(x):
        outs = []
        for mode, p, cv in PADS:
            kw = {"constant_val": np.float32(cv)} if cv is not None else {}
            outs.append(mb.pad(x=x, pad=np.array(p, np.int32), mode=mode, **kw))
        return outs

    got = run_mil(tmp_path, build, {"x": x}, precision, "pad")
    t = R(x, precision)
    refs = []
    for mode, p, cv in PADS:
        if mode == "constant":
            refs.append(F.pad(t, torch_pad(p), mode="constant", value=cv or 0.0))
        else:
            refs.append(F.pad(t, torch_pad(p if len(p) == 4 else [0, 0] + p), mode=mode))
    check_all(got, refs, precision, [f"{m} pad={p} constant_val={cv}" for m, p, cv in PADS])


@precisions
def test_identity(precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 3)))
    xi = rng.integers(-9, 9, (4,)).astype(np.int32)
    got = run_mil(tmp_path, lambda x, xi: [mb.identity(x=x), mb.identity(x=xi)], {"x": x, "xi": xi}, precision, "identity")
    check_all(got, [R(x, precision), R(xi, precision)], precision, ["fp32", "int32"])


#: MIL ops this file tests (tests/test_mil_ops.py checks every interpreter op is covered).
COVERED = {"reshape", "transpose", "expand_dims", "squeeze", "concat", "split", "slice_by_index", "gather", "tile",
           "reverse", "pad", "identity"}
