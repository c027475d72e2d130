"""Per-op numerics of the MIL interpreter for the interpreter-only rows of
compiler/ops/mil_misc.py (and ``einsum``, an IR row since issue 16): ``l2_pool``, ``non_zero``, ``non_maximum_suppression``,
``sliding_windows``, ``reshape_like``, ``random_categorical``, ``slice_update`` (iOS18),
``conv_quantized`` and ``classify``. Built with coremltools' MIL Builder, converted at fp32 and
fp16, run by :class:`tlc.runtime.MILInterpreter` and compared with float64 torch/NumPy references
written from coremltools' op docstrings (helpers and tolerances of tests/milcheck.py).
``random_categorical`` is checked by its distribution; ``classify`` (whose outputs are a label and
a dict, only found in classifier packages) through its kernel on the op of a converted classifier
package."""
from __future__ import annotations

import contextlib
import io
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import coremltools as ct
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import Function, Program

import tlc.ops
from tlc.errors import IRError, TlcError
from milcheck import FP16_PIPELINE, R, check, explicit_pads, f32, precisions, run_mil

INTERPRETER_ONLY = {"l2_pool", "non_zero", "non_maximum_suppression", "sliding_windows", "reshape_like",
                    "random_categorical", "slice_update", "conv_quantized", "classify"}


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_rows_are_interpreter_only():
    for name in INTERPRETER_ONLY:
        row = tlc.ops.OPS[name]
        assert row.emit_mil is None and row.host_only and row.interpreter_only, name
    assert tlc.ops.OPS["random_categorical"].nondeterministic


# ------------------------------------------------------------------------------------ l2_pool


def _pool_len(n, k, s, pb, pa, ceil_mode):
    """Output length (iOS15 pool.py avg_pool docstring, defs/_utils.py spatial_dimensions_out_shape)."""
    if not ceil_mode:
        return (n + pb + pa - k) // s + 1
    out = math.ceil((n + pb + pa - k) / s) + 1
    if (out - 1) * s >= n + pb and pb + pa > 0:
        out -= 1
    return out


def _l2_pool_ref(x, kernel, strides, pads, ceil_mode):
    """sqrt(sum x^2) over each window, in float64, by explicit loops over the output positions;
    window elements outside the input (padding, ceil_mode overhang) count as 0."""
    x = np.asarray(x, np.float64)
    nsp = len(kernel)
    sp = x.shape[2:]
    outs = [_pool_len(sp[i], kernel[i], strides[i], pads[2 * i], pads[2 * i + 1], ceil_mode) for i in range(nsp)]
    y = np.zeros(x.shape[:2] + tuple(outs))
    for o in itertools.product(*[range(n) for n in outs]):
        idx = []
        for i in range(nsp):
            start = o[i] * strides[i] - pads[2 * i]
            idx.append([j for j in range(start, start + kernel[i]) if 0 <= j < sp[i]])
        win = x[(slice(None), slice(None)) + np.ix_(*idx)] if all(idx) else np.zeros(x.shape[:2] + (1,) * nsp)
        y[(slice(None), slice(None)) + o] = np.sqrt((win ** 2).sum(axis=tuple(range(2, 2 + nsp))))
    return y


# (x shape, kernel, strides, pad_type, pad, ceil_mode)
L2_POOLS = [
    ((1, 3, 7, 8), [2, 3], [2, 2], "valid", None, False),
    ((2, 2, 7, 8), [3, 3], [2, 2], "same", None, False),
    ((1, 2, 6, 7), [2, 2], [1, 1], "same", None, False),  # odd totals: the extra unit after
    ((1, 2, 6, 7), [2, 2], [1, 1], "same_lower", None, False),  # odd totals: the extra unit before
    ((1, 2, 7, 8), [3, 2], [2, 3], "same_lower", None, False),
    ((1, 3, 7, 8), [3, 3], [1, 2], "custom", [1, 0, 2, 1], False),
    ((1, 3, 7, 8), [2, 3], [2, 2], "valid", None, True),
    ((1, 2, 9, 8), [3, 3], [2, 2], "custom", [1, 1, 1, 1], True),
    ((1, 2, 9, 9), [2, 2], [2, 2], "custom", [1, 1, 1, 1], True),  # the last window dropped (starts in the padding)
    ((2, 3, 11), [3], [2], "valid", None, False),
    ((2, 3, 11), [4], [1], "same", None, False),
    ((2, 3, 11), [3], [3], "same_lower", None, False),
    ((2, 3, 11), [3], [1], "custom", [2, 1], False),
    ((2, 3, 11), [2], [3], "valid", None, True),
    ((1, 2, 9), [2], [2], "custom", [1, 1], True),
    ((1, 2, 5), [1], [3], "valid", None, True),  # no padding: the last window starts past the input (reads 0)
]


def _l2_id(c):
    xs, k, s, pt, pad, ceil = c
    return f"{len(xs) - 2}d-k{'x'.join(map(str, k))}-s{'x'.join(map(str, s))}-{pt}{pad or ''}{'-ceil' if ceil else ''}"


@precisions
@pytest.mark.parametrize("case", L2_POOLS, ids=[_l2_id(c) for c in L2_POOLS])
def test_l2_pool(case, precision, tmp_path, rng):
    xs, kernel, strides, pad_type, pad, ceil_mode = case
    x = f32(rng.normal(size=xs))

    def build(x):
        kw = {"pad": pad} if pad is not None else {}
        return mb.l2_pool(x=x, kernel_sizes=kernel, strides=strides, pad_type=pad_type, ceil_mode=ceil_mode, **kw)

    (got,) = run_mil(tmp_path, build, {"x": x}, precision, "l2_pool")
    pads = explicit_pads(pad_type, pad, xs[2:], kernel, strides, [1] * len(kernel))
    check(got, _l2_pool_ref(R(x, precision).numpy(), kernel, strides, pads, ceil_mode), precision, _l2_id(case))


def test_l2_pool_strides_default_and_iOS15(tmp_path, rng):
    x = f32(rng.normal(size=(1, 2, 5, 6)))
    (got,) = run_mil(tmp_path, lambda x: mb.l2_pool(x=x, kernel_sizes=[2, 2], pad_type="valid"), {"x": x}, "fp32",
                     "l2_pool", target=ct.target.iOS15)
    check(got, _l2_pool_ref(x, [2, 2], [1, 1], [0] * 4, False), "fp32")


# ------------------------------------------------------------------------------------- einsum

# (equation, x shape, y shape): iOS15 linear.py's two forms, renamed, with B / H broadcasting
EINSUMS = [
    ("nchw,nwhu->nchu", (2, 3, 4, 5), (2, 5, 4, 6)),
    ("abcd,adce->abce", (1, 3, 4, 5), (2, 5, 4, 6)),  # B broadcast from x
    ("nchw,nwhu->nchu", (2, 3, 1, 5), (2, 5, 4, 6)),  # H broadcast from x
    ("bCHw,bwHr->bCHr", (2, 3, 1, 5), (1, 5, 4, 2)),  # B from y, H from x
    ("nchw,nwhu->nchu", (3, 2, 4, 5), (3, 5, 1, 6)),  # H broadcast from y
    ("chw,whr->chr", (3, 4, 5), (5, 4, 6)),
    ("ijk,kjl->ijl", (3, 1, 5), (5, 4, 6)),  # H broadcast from x
    ("CHW,WHR->CHR", (3, 4, 5), (5, 1, 2)),  # H broadcast from y
]


@precisions
@pytest.mark.parametrize("eq,xs,ys", EINSUMS)
def test_einsum(eq, xs, ys, precision, tmp_path, rng):
    x, y = f32(rng.normal(size=xs)), f32(rng.normal(size=ys))
    (got,) = run_mil(tmp_path, lambda x, y: mb.einsum(values=(x, y), equation=eq), {"x": x, "y": y}, precision,
                     "einsum")
    tx, ty = R(x, precision), R(y, precision)
    if len(xs) == 4:
        b, h = max(xs[0], ys[0]), max(xs[2], ys[2])
        tx, ty = tx.expand(b, xs[1], h, xs[3]), ty.expand(b, ys[1], h, ys[3])
    else:
        h = max(xs[1], ys[1])
        tx, ty = tx.expand(xs[0], h, xs[2]), ty.expand(ys[0], h, ys[2])
    check(got, torch.einsum(eq, tx, ty), precision, eq)


def test_einsum_other_equations_are_refused():
    k = tlc.ops.OPS["einsum"].numpy
    with pytest.raises(IRError, match="unsupported einsum"):
        k({"equation": "ij,jk->ik"}, np.ones((2, 3), np.float32), np.ones((3, 4), np.float32))
    with pytest.raises(IRError, match="unsupported einsum"):
        k({"equation": "nchw,nwhu->nhcu"}, np.ones((1, 2, 3, 4), np.float32), np.ones((1, 4, 3, 5), np.float32))


# ----------------------------------------------------------------------------------- non_zero


@precisions
@pytest.mark.parametrize("kind", ["float", "int32", "bool", "1d", "all_zero"])
def test_non_zero(kind, precision, tmp_path, rng):
    if kind == "float":  # -0.0 is zero; 1e-9 becomes 0 in fp16
        x = f32(rng.normal(size=(3, 4, 5)) * (rng.random((3, 4, 5)) < 0.5))
        x.flat[:3] = [-0.0, 1e-9, -3e-9]
    elif kind == "int32":
        x = rng.integers(-2, 3, (4, 6)).astype(np.int32)
    elif kind == "bool":
        x = rng.random((2, 3, 4)) < 0.4
    elif kind == "1d":
        x = f32(rng.integers(0, 2, 9) * rng.normal(size=9))
    else:
        x = f32(np.zeros((3, 2)))
    (got,) = run_mil(tmp_path, lambda x: mb.non_zero(x=x), {"x": x}, precision, "non_zero")
    t = R(x, precision)
    check(got, torch.nonzero(t).to(torch.int32), precision, kind)


# -------------------------------------------------------------------- non_maximum_suppression


def _iou(a, b):
    """IoU of two center-size boxes (x, y, w, h), float64; 0 when either has no area."""
    ax1, ax2, ay1, ay2 = a[0] - a[2] / 2, a[0] + a[2] / 2, a[1] - a[3] / 2, a[1] + a[3] / 2
    bx1, bx2, by1, by2 = b[0] - b[2] / 2, b[0] + b[2] / 2, b[1] - b[3] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    aa, ab = a[2] * a[3], b[2] * b[3]
    if aa <= 0 or ab <= 0:
        return 0.0
    return inter / (aa + ab - inter)


def _greedy(boxes, score, ids, iou_thr, score_thr):
    """TensorFlow's non_max_suppression over the boxes ``ids``: by decreasing score (ties: lower
    index first), a box survives unless IoU > iou_thr with a survivor; boxes with score <= score_thr
    never enter."""
    ids = [i for i in sorted(ids, key=lambda i: (-score[i], i)) if score_thr is None or score[i] > score_thr]
    keep = []
    for i in ids:
        if all(_iou(boxes[i], boxes[j]) <= iou_thr for j in keep):
            keep.append(i)
    return keep


def _nms_ref(boxes, scores, iou_thr, score_thr, max_boxes, per_class):
    """coremltools' reference for Core ML's NMS (mil/ops/tests/iOS14/test_tensor_operation.py
    ``_ref_non_maximum_suppression``) in NumPy float64: boxes[n, B, 4], scores[n, B, K]; per class
    (each box in the class of its best score) independently, then merged by score; the best box
    alone when none survives; padded with 0 / index -1 up to max_boxes."""
    boxes, scores = np.asarray(boxes, np.float64), np.asarray(scores, np.float64)
    n, nb, k = scores.shape
    ob, os_, oi, oc = np.zeros((n, max_boxes, 4)), np.zeros((n, max_boxes, k)), -np.ones((n, max_boxes), np.int64), \
        np.zeros(n, np.int64)
    for b in range(n):
        score = scores[b].max(axis=1)
        if per_class:
            cls = scores[b].argmax(axis=1)
            ids = []
            for c in sorted(set(cls.tolist())):
                ids += _greedy(boxes[b], score, [i for i in range(nb) if cls[i] == c], iou_thr, score_thr)
            ids.sort(key=lambda i: (-score[i], i))
        else:
            ids = _greedy(boxes[b], score, range(nb), iou_thr, score_thr)
        if not ids:
            ids = [int(np.argmax(score))]
        ids = ids[:max_boxes]
        c = len(ids)
        ob[b, :c], os_[b, :c], oi[b, :c], oc[b] = boxes[b, ids], scores[b, ids], ids, c
    return ob, os_, oi, oc


def _nms_inputs(rng, n, nb, k):
    """Boxes on a 0.25 grid and distinct scores on a 1/8 grid (-3, -2.875, ...): exact in fp16, so
    that the fp16 package sees the same ranking and overlaps."""
    c = rng.integers(0, 40, (n, nb, 2)) / 4
    wh = rng.integers(4, 20, (n, nb, 2)) / 4
    boxes = f32(np.concatenate([c, wh], axis=-1))
    scores = f32(np.stack([rng.permutation(nb * k).reshape(nb, k) for _ in range(n)]) / 8 - 3)
    return boxes, scores


# (boxes, classes, iou_threshold, score_threshold, max_boxes, per_class_suppression)
NMS15 = [
    (30, 3, 0.3, -1.0, 8, False),  # truncated to max_boxes
    (30, 3, 0.3, -1.0, 8, True),
    (20, 1, 0.2, -2.0, 25, False),  # fewer survivors than max_boxes: padded
    (20, 4, 0.5, 2.0, 25, True),
    (12, 2, 0.05, 100.0, 4, False),  # no box passes the score threshold: the best box alone
    (12, 2, 0.0, -10.0, 12, True),
]


@precisions
@pytest.mark.parametrize("case", NMS15, ids=[f"B{c[0]}-K{c[1]}-iou{c[2]}-s{c[3]}-max{c[4]}-{'class' if c[5] else 'all'}"
                                             for c in NMS15])
def test_nms_iOS15(case, precision, tmp_path, rng):
    nb, k, iou, sthr, mx, pc = case
    boxes, scores = _nms_inputs(rng, 2, nb, k)

    def build(b, s):
        return mb.non_maximum_suppression(boxes=b, scores=s, iou_threshold=np.float32(iou),
                                          score_threshold=np.float32(sthr), max_boxes=mx, per_class_suppression=pc)

    got = run_mil(tmp_path, build, {"b": boxes, "s": scores}, precision, "non_maximum_suppression",
                  target=ct.target.iOS16)
    ref = _nms_ref(R(boxes, precision).numpy(), R(scores, precision).numpy(), iou, sthr, mx, pc)
    for g, r, what in zip(got, ref, ("boxes", "scores", "indices", "count")):
        check(g, r.astype(np.int32) if r.dtype.kind == "i" else r, precision, what)


def test_nms_default_per_class_iOS15(tmp_path, rng):
    boxes, scores = _nms_inputs(rng, 1, 15, 3)
    got = run_mil(tmp_path, lambda b, s: mb.non_maximum_suppression(boxes=b, scores=s, iou_threshold=np.float32(0.3),
                                                                    score_threshold=np.float32(-5.0), max_boxes=6),
                  {"b": boxes, "s": scores}, "fp32", "non_maximum_suppression", target=ct.target.iOS15)
    ref = _nms_ref(boxes, scores, 0.3, -5.0, 6, False)
    for g, r in zip(got, ref):
        check(g, r.astype(np.int32) if r.dtype.kind == "i" else r, "fp32")


NMS17 = [(30, 3, 0.3, 8, False), (30, 3, 0.3, 8, True), (10, 2, 0.4, 16, False), (10, 3, 0.1, 16, True)]


@precisions
@pytest.mark.parametrize("case", NMS17, ids=[f"B{c[0]}-K{c[1]}-iou{c[2]}-max{c[3]}-{'class' if c[4] else 'all'}"
                                             for c in NMS17])
def test_nms_iOS17(case, precision, tmp_path, rng):
    """iOS17 tensor_operation.py: no score_threshold, boxes on the last axis, no count output."""
    nb, k, iou, mx, pc = case
    boxes, scores = _nms_inputs(rng, 2, nb, k)
    bt, st = np.ascontiguousarray(boxes.transpose(0, 2, 1)), np.ascontiguousarray(scores.transpose(0, 2, 1))

    def build(b, s):
        return mb.non_maximum_suppression(boxes=b, scores=s, iou_threshold=np.float32(iou), max_boxes=mx,
                                          per_class_suppression=pc)

    got = run_mil(tmp_path, build, {"b": bt, "s": st}, precision, "non_maximum_suppression", target=ct.target.iOS17)
    assert len(got) == 3
    ob, os_, oi, _ = _nms_ref(R(boxes, precision).numpy(), R(scores, precision).numpy(), iou, None, mx, pc)
    check(got[0], ob.transpose(0, 2, 1), precision, "boxes")
    check(got[1], os_.transpose(0, 2, 1), precision, "scores")
    check(got[2], oi.astype(np.int32), precision, "indices")


# ---------------------------------------------------------------------------- sliding_windows

# (x shape, axis, size, stride or None, target)
WINDOWS = [
    ((2, 9, 4), 1, 3, 2, ct.target.iOS15),
    ((2, 9, 4), 1, 3, None, ct.target.iOS17),  # stride defaults to 1
    ((10,), 0, 4, 3, ct.target.iOS17),
    ((3, 4, 7), -1, 2, 2, ct.target.iOS15),
    ((3, 8, 5), -2, 8, 1, ct.target.iOS17),  # one window
    ((6, 3), 0, 1, 5, ct.target.iOS17),
    ((2, 3, 4, 9), 3, 4, 4, ct.target.iOS17),
]


@precisions
@pytest.mark.parametrize("case", WINDOWS, ids=[f"{list(c[0])}-axis{c[1]}-size{c[2]}-stride{c[3]}-{c[4].name}"
                                               for c in WINDOWS])
def test_sliding_windows(case, precision, tmp_path, rng):
    xs, axis, size, stride, target = case
    x = f32(rng.normal(size=xs))
    kw = {"stride": stride} if stride is not None else {}
    (got,) = run_mil(tmp_path, lambda x: mb.sliding_windows(x=x, axis=axis, size=size, **kw), {"x": x}, precision,
                     "sliding_windows", target=target)
    a = axis % len(xs)
    check(got, R(x, precision).unfold(a, size, stride or 1).movedim(-1, a + 1), precision)


@pytest.mark.parametrize("dtype", ["int32", "bool"])
def test_sliding_windows_int_and_bool(dtype, tmp_path, rng):
    x = rng.integers(-5, 6, (4, 7)).astype(np.int32) if dtype == "int32" else rng.random((4, 7)) < 0.5
    (got,) = run_mil(tmp_path, lambda x: mb.sliding_windows(x=x, axis=1, size=3, stride=2), {"x": x}, "fp32",
                     "sliding_windows")
    check(got, torch.from_numpy(x).unfold(1, 3, 2), "fp32")


# ------------------------------------------------------------------------------- reshape_like

# (x shape, ref shapes, begins, ends, end_masks)
RESHAPE_LIKE = [
    ((6, 30), [(2, 3, 4), (1, 5, 6)], (0, 1), (2, 0), (False, True)),  # the docstring's example: (2, 3, 5, 6)
    ((60,), [(4, 15)], (0,), (0,), (True,)),  # (4, 15)
    ((140,), [(2, 3, 4), (5, 6), (7,)], (-1, 0, 0), (0, 1, 1), (True, False, False)),  # (4, 5, 7)
    ((2, 4), [(3, 4, 2), (9, 2)], (1, 1), (-1, 2), (False, False)),  # negative end: (4, 2)
    ((15,), [(1, 2, 4, 5), (3,)], (3, 0), (4, 0), (False, True)),  # (5, 3)
    ((30,), [(6, 5), (3,)], (0, 1), (2, 0), (False, True)),  # an empty tail: (6, 5)
    ((35,), [(2, 3), (5, 7)], (0, 0), (0, 2), (False, False)),  # end 0 without its mask: nothing, (5, 7)
]


def _reshape_like_shape(refs, begins, ends, masks):
    """The output shape by the docstring's pseudo-code (iOS16 tensor_transformation.py)."""
    out = []
    for s, b, e, m in zip(refs, begins, ends, masks):
        out += list(s[b:]) if m else list(s[b:e])
    return out


@precisions
@pytest.mark.parametrize("target", [ct.target.iOS16, ct.target.iOS17], ids=["iOS16", "iOS17"])
@pytest.mark.parametrize("case", range(len(RESHAPE_LIKE)))
def test_reshape_like(case, target, precision, tmp_path, rng):
    xs, refs, begins, ends, masks = RESHAPE_LIKE[case]
    shape = _reshape_like_shape(refs, begins, ends, masks)
    x = f32(rng.normal(size=xs))
    feeds = {"x": x, **{f"r{i}": f32(np.zeros(s)) for i, s in enumerate(refs)}}

    def build(x, **r):
        return mb.reshape_like(x=x, ref_tensors=tuple(r[f"r{i}"] for i in range(len(refs))), begins=begins,
                               ends=ends, end_masks=masks)

    (got,) = run_mil(tmp_path, build, feeds, precision, "reshape_like", target=target)
    check(got, R(x, precision).reshape(shape), precision, str(shape))


def test_reshape_like_int(tmp_path, rng):
    x = rng.integers(-9, 9, (4, 6)).astype(np.int32)
    ref = rng.integers(0, 2, (3, 8)).astype(np.int32)
    build = lambda x, r: mb.reshape_like(x=x, ref_tensors=(r,), begins=(0,), ends=(0,), end_masks=(True,))  # noqa: E731
    (got,) = run_mil(tmp_path, build, {"x": x, "r": ref}, "fp32", "reshape_like")
    check(got, torch.from_numpy(x).reshape(3, 8), "fp32")


# ------------------------------------------------------------------------- random_categorical


def _softmax(t):
    t = np.asarray(t, np.float64)
    e = np.exp(t - t.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _check_frequencies(draws, p, what=""):
    """Each row of ``draws`` [rows, n] (category indices) against its distribution p[rows, K]:
    integral indices in [0, K), frequencies within 6 standard errors (categories of probability 0
    never drawn)."""
    k = p.shape[-1]
    draws, p = np.asarray(draws).reshape(-1, draws.shape[-1]), p.reshape(-1, k)
    assert np.all(draws == np.round(draws)) and draws.min() >= 0 and draws.max() < k, what
    n = draws.shape[1]
    for r in range(draws.shape[0]):
        f = np.bincount(draws[r].astype(np.int64), minlength=k) / n
        tol = 6 * np.sqrt(p[r] * (1 - p[r]) / n) + 1e-12
        assert np.all(np.abs(f - p[r]) <= tol), f"{what} row {r}: frequencies {f}, probabilities {p[r]}"


@precisions
def test_random_categorical_logits(precision, tmp_path, rng):
    x = f32(rng.normal(0, 1.5, (2, 5)))
    (got,) = run_mil(tmp_path, lambda x: mb.random_categorical(x=x, size=8000), {"x": x}, precision,
                     "random_categorical")
    assert got.shape == (2, 8000) and got.dtype == np.float32
    _check_frequencies(got, _softmax(R(x, precision).numpy()), "logits")


@precisions
def test_random_categorical_probs(precision, tmp_path):
    """mode "probs": the log of the probabilities is the logits, so they need not sum to 1."""
    x = f32([[1, 2, 3, 4], [0, 1, 0, 3], [5, 5, 0, 0]])
    (got,) = run_mil(tmp_path, lambda x: mb.random_categorical(x=x, mode="probs", size=8000, seed=-1), {"x": x},
                     precision, "random_categorical")
    assert got.shape == (3, 8000)
    _check_frequencies(got, x / x.sum(axis=1, keepdims=True), "probs")


def test_random_categorical_default_size(tmp_path, rng):
    x = f32(rng.normal(size=(2, 3, 4)))
    (got,) = run_mil(tmp_path, lambda x: mb.random_categorical(x=x), {"x": x}, "fp32", "random_categorical")
    assert got.shape == (2, 3, 1) and np.all(got == np.round(got)) and got.min() >= 0 and got.max() < 4


def test_random_categorical_seed(tmp_path, rng):
    """A fixed seed repeats its draws (two ops, two packages); seed -1 draws fresh values."""
    x = f32(rng.normal(size=(2, 6)))

    def build(x):
        return [mb.random_categorical(x=x, size=500, seed=7), mb.random_categorical(x=x, size=500, seed=7),
                mb.random_categorical(x=x, size=500), mb.random_categorical(x=x, size=500, seed=-1)]

    a7, b7, f1, f2 = run_mil(tmp_path, build, {"x": x}, "fp32", "random_categorical")
    (c7, *_) = run_mil(tmp_path, build, {"x": x}, "fp32", "random_categorical")
    np.testing.assert_array_equal(a7, b7)
    np.testing.assert_array_equal(a7, c7)
    assert not np.array_equal(f1, f2)
    _check_frequencies(np.concatenate([a7, f1, f2], axis=1), _softmax(x), "seeded")


# ------------------------------------------------------------------------------- slice_update

# (x shape, slice_update arguments, the same slice as a NumPy index)
SLICE_UPDATES = [
    ((4, 6), dict(begin=[1, 2], end=[3, 5]), np.s_[1:3, 2:5]),
    ((4, 6), dict(begin=[0, 1], end=[4, 6], stride=[2, 2]), np.s_[0:4:2, 1:6:2]),
    ((4, 6), dict(begin=[-3, -5], end=[-1, -1]), np.s_[-3:-1, -5:-1]),
    ((4, 6), dict(begin=[3, 5], end=[0, 0], stride=[-1, -2]), np.s_[3:0:-1, 5:0:-2]),
    ((4, 6), dict(begin=[0, 2], end=[2, 0], begin_mask=[True, False], end_mask=[False, True]), np.s_[:2, 2:]),
    ((4, 6), dict(begin=[1, 0], end=[2, 6], squeeze_mask=[True, False]), np.s_[1, 0:6]),
    ((4, 6), dict(begin=[0, 4], end=[10, 100]), np.s_[0:10, 4:100]),  # ends past the axis: clamped
    ((3, 4, 5), dict(begin=[0, -1, 1], end=[3, 0, 5], stride=[2, -1, 2], end_mask=[False, True, False]),
     np.s_[0:3:2, ::-1, 1:5:2]),
    ((3, 4, 5), dict(begin=[2, 1, 0], end=[0, 3, 0], begin_mask=[False, False, True], end_mask=[False, False, True],
                     squeeze_mask=[True, False, False]), np.s_[2, 1:3, :]),
    ((3, 4, 5), dict(begin=[-1, 0, -2], end=[0, 4, 0], squeeze_mask=[True, False, True]), np.s_[-1, 0:4, -2]),
    ((5,), dict(begin=[-1], end=[0], stride=[-2], end_mask=[True]), np.s_[::-2]),
]


@precisions
@pytest.mark.parametrize("case", range(len(SLICE_UPDATES)))
def test_slice_update(case, precision, tmp_path, rng):
    xs, kw, index = SLICE_UPDATES[case]
    x = f32(rng.normal(size=xs))
    u = f32(rng.normal(size=x[index].shape))
    (got,) = run_mil(tmp_path, lambda x, u: mb.slice_update(x=x, update=u, **kw), {"x": x, "u": u}, precision,
                     "slice_update", target=ct.target.iOS18)
    ref = R(x, precision).numpy().copy()
    ref[index] = R(u, precision).numpy()
    check(got, ref, precision, str(kw))


def test_slice_update_int_and_runtime_begin(tmp_path, rng):
    """int32 tensors, and ``begin`` / ``end`` computed at run time (they need not be constants)."""
    x = rng.integers(-9, 9, (5, 6)).astype(np.int32)
    u = rng.integers(100, 200, (2, 3)).astype(np.int32)
    b, e = np.array([2, 1], np.int32), np.array([4, 4], np.int32)
    (got,) = run_mil(tmp_path, lambda x, u, b, e: mb.slice_update(x=x, update=u, begin=b, end=e),
                     {"x": x, "u": u, "b": b, "e": e}, "fp32", "slice_update", target=ct.target.iOS18)
    ref = x.copy()
    ref[2:4, 1:4] = u
    check(got, ref, "fp32")


# ----------------------------------------------------------------------------- conv_quantized

# (x shape, weight shape, nbits, per-channel scale/bias, pad_type, pad, strides, dilations, groups, bias)
CONV_QUANTIZED = [
    ((1, 3, 8, 8), (4, 3, 3, 3), 8, False, "valid", None, [1, 1], [1, 1], 1, False),
    ((2, 3, 8, 7), (4, 3, 3, 2), 4, True, "same", None, [2, 1], [1, 1], 1, True),
    ((1, 4, 9, 8), (6, 2, 3, 3), 2, True, "custom", [1, 2, 0, 1], [1, 1], [1, 2], 2, True),
    ((1, 4, 9, 8), (4, 1, 3, 3), 1, False, "same_lower", None, [2, 2], [1, 1], 4, False),  # depthwise
    ((2, 2, 11), (3, 2, 3), 6, True, "custom", [2, 1], [2], [1], 1, True),  # 1-D
]


def _cq_id(c):
    return (f"{len(c[0]) - 2}d-nbits{c[2]}-{'channel' if c[3] else 'scalar'}-{c[4]}-s{c[6]}-d{c[7]}-g{c[8]}"
            f"{'-bias' if c[9] else ''}")


def _conv_ref(x, w, bias, pads, strides, dilations, groups):
    nsp = x.dim() - 2
    tp = [p for i in reversed(range(nsp)) for p in (pads[2 * i], pads[2 * i + 1])]
    conv = (F.conv1d, F.conv2d, F.conv3d)[nsp - 1]
    return conv(F.pad(x, tp), w, bias, stride=strides, dilation=dilations, groups=groups)


@precisions
@pytest.mark.parametrize("case", CONV_QUANTIZED, ids=[_cq_id(c) for c in CONV_QUANTIZED])
def test_conv_quantized(case, precision, tmp_path, rng):
    """W_float = W_quantized * quant_scale + quant_bias (iOS15 conv.py), then conv; the uint8
    ``bias`` is added as is."""
    xs, ws, nbits, per_channel, pad_type, pad, strides, dil, groups, has_bias = case
    x = f32(rng.normal(size=xs))
    wq = rng.integers(0, 1 << nbits, ws).astype(np.uint8)
    if per_channel:
        scale, qbias = f32(rng.uniform(0.01, 0.1, ws[0])), f32(rng.normal(0, 0.2, ws[0]))
    else:
        scale, qbias = np.float32(0.05), np.float32(-0.3)
    bias = rng.integers(0, 5, ws[0]).astype(np.uint8)

    def build(x):
        kw = {"pad": pad} if pad is not None else {}
        if has_bias:
            kw["bias"] = bias
        return mb.conv_quantized(x=x, weight=wq, quantization_type="linear", nbits=nbits, quant_scale=scale,
                                 quant_bias=qbias, pad_type=pad_type, strides=strides, dilations=dil, groups=groups,
                                 **kw)

    (got,) = run_mil(tmp_path, build, {"x": x}, precision, "conv_quantized")
    shape = (-1,) + (1,) * (len(ws) - 1)
    wf = torch.from_numpy(wq.astype(np.float64)) * R(scale, precision).reshape(shape) + R(qbias, precision).reshape(shape)
    pads = explicit_pads(pad_type, pad, xs[2:], ws[2:], strides, dil)
    b = torch.from_numpy(bias.astype(np.float64)) if has_bias else None
    check(got, _conv_ref(R(x, precision), wf, b, pads, strides, dil, groups), precision, _cq_id(case))


@precisions
def test_conv_quantized_runtime_weight(precision, tmp_path, rng):
    """A weight computed in the program (cast to uint8), not a constant."""
    x = f32(rng.normal(size=(1, 2, 6, 6)))
    w = rng.integers(0, 256, (3, 2, 3, 3)).astype(np.int32)

    def build(x, w):
        return mb.conv_quantized(x=x, weight=mb.cast(x=w, dtype="uint8"), quantization_type="linear",
                                 quant_scale=np.float32(0.01), quant_bias=np.float32(-1.0), pad_type="same")

    (got,) = run_mil(tmp_path, build, {"x": x, "w": w}, precision, "conv_quantized")
    wf = torch.from_numpy(w.astype(np.float64)) * float(R(np.float32(0.01), precision)) - 1.0
    check(got, _conv_ref(R(x, precision), wf, None, [1, 1, 1, 1], [1, 1], [1, 1], 1), precision)


@pytest.mark.parametrize("qt,nbits,wmax,match", [("lut", 4, 15, "lut"), ("linear", 4, 20, "nbits")])
def test_conv_quantized_refuses(qt, nbits, wmax, match, tmp_path):
    """``lut`` has no table in the op's inputs; weights must fit ``nbits``."""
    w = np.full((2, 2, 3, 3), wmax, np.uint8)

    def build(x):
        return mb.conv_quantized(x=x, weight=w, quantization_type=qt, nbits=nbits, quant_scale=np.float32(0.1),
                                 quant_bias=np.float32(0.0), pad_type="valid")

    with pytest.raises(TlcError, match=match):
        run_mil(tmp_path, build, {"x": f32(np.ones((1, 2, 5, 5)))}, "fp32", "conv_quantized")


# ----------------------------------------------------------------------------------- classify


def _classifier(tmp_path, labels, precision, shape):
    """A classifier package: softmax(x) as the probabilities, ``ct.ClassifierConfig(labels)`` (the
    converter adds the classify op, coremltools backend/mil/load.py ``_add_classify_op``; the
    Builder cannot set classify's outputs itself: ML Program outputs must be fp32/int32 tensors)."""
    with Function({"x": mb.placeholder(shape=shape)}, opset_version=ct.target.iOS17) as func:
        func.set_outputs([mb.softmax(x=func.inputs["x"], axis=-1)])
    prog = Program()
    prog.add_function("main", func)
    path = tmp_path / f"classify_{precision}_{len(labels)}.mlpackage"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        model = ct.convert(prog, convert_to="mlprogram",
                           compute_precision={"fp32": ct.precision.FLOAT32, "fp16": ct.precision.FLOAT16}[precision],
                           minimum_deployment_target=ct.target.iOS17, skip_model_load=True,
                           pass_pipeline=ct.PassPipeline(pass_names=list(FP16_PIPELINE), pipeline_name="t"),
                           classifier_config=ct.ClassifierConfig(labels))
        model.save(str(path))
    return path


CLASSES = {"str": ["cat", "dog", "bird", "fish", "frog"], "int64": [10, 20, 30, 40, 50, 60]}


@precisions
@pytest.mark.parametrize("kind", list(CLASSES))
def test_classify(kind, precision, tmp_path, rng):
    """The classify op of a converted classifier package, run by its kernel on the package's own
    ``classes`` (a list of str / np.int64) and fp32 probabilities of x's softmax: the label of the
    largest probability and the {class: probability} dict."""
    from tlc.runtime.mil_interpreter import load_program

    labels = CLASSES[kind]
    shape = (1, len(labels))
    path = _classifier(tmp_path, labels, precision, shape)
    _, _, prog = load_program(path)
    (op,) = [o for o in prog.functions["main"].operations if o.op_type == "classify"]
    classes = op.inputs["classes"].val
    assert [str(c) if kind == "str" else int(c) for c in classes] == labels
    x = f32(rng.normal(size=shape))
    p = f32(_softmax(R(x, precision).numpy()))  # what the package feeds classify (fp32; fp16-rounded x for fp16)
    row = tlc.ops.OPS["classify"]
    arrays, attrs = tlc.ops.args_from_mil(row, {"probabilities": p, "classes": classes})
    label, probs = row.numpy(attrs, *arrays)
    want = labels[int(np.argmax(p))]
    assert np.asarray(label).shape == () and np.asarray(label).item() == want
    assert np.asarray(label).dtype.kind == ("U" if kind == "str" else "i")
    d = probs.item() if isinstance(probs, np.ndarray) else probs
    assert list(d) == labels
    np.testing.assert_allclose([d[c] for c in labels], p.ravel().astype(np.float64), rtol=0, atol=0)


def test_classify_ties_take_the_first_class():
    row = tlc.ops.OPS["classify"]
    label, probs = row.numpy({"classes": ["a", "b", "c"]}, f32([[0.2, 0.4, 0.4]]))
    assert label.item() == "b" and probs.item() == {"a": np.float32(0.2), "b": np.float32(0.4), "c": np.float32(0.4)}
    with pytest.raises(IRError, match="classes"):
        row.numpy({"classes": ["a", "b"]}, f32([0.2, 0.4, 0.4]))


def test_classify_end_to_end(tmp_path, rng):
    from tlc.runtime import MILInterpreter

    labels = CLASSES["str"]
    path = _classifier(tmp_path, labels, "fp32", (1, len(labels)))
    interp = MILInterpreter(path)
    x = f32(rng.normal(size=(1, len(labels))))
    out = interp.run({"x": x})
    p = _softmax(x.astype(np.float64)).ravel()
    assert np.asarray(out["classLabel"]).item() == labels[int(np.argmax(p))]
    d = out["classLabel_probs"]
    d = d.item() if isinstance(d, np.ndarray) else d
    np.testing.assert_allclose([d[c] for c in labels], p, rtol=1e-5)
