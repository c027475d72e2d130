"""Per-op numerics of the MIL interpreter for ops other converters' packages use and tlc's
front-end does not produce (issue 12, first part): activations, reductions, normalizations,
shape ops, ``cast`` to the small integer types. Built with coremltools' MIL Builder, converted at
fp32 and fp16, run by :class:`tlc.runtime.MILInterpreter` and compared with a float64 torch/NumPy
reference (helpers and tolerances of tests/milcheck.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil import Builder as mb

from milcheck import R, check, f32, precisions, run_mil

COVERED = {"clamped_relu", "elu", "linear_activation", "relu6", "scaled_tanh", "softsign", "threshold",
           "thresholded_relu", "reduce_log_sum", "reduce_log_sum_exp", "reduce_sum_square"}
INTERPRETER_ONLY = {"space_to_batch", "batch_to_space", "depth_to_space", "space_to_depth", "reverse_sequence", "prelu", "softplus_parametric", "flatten2d", "slice_by_size", "stack", "band_part", "l2_norm",
                    "instance_norm", "local_response_norm", "pixel_shuffle", "pixel_unshuffle", "fill", "fill_like",
                    "range_1d", "one_hot", "shape"}


@pytest.fixture
def rng():
    return np.random.default_rng(0)


ACTIVATIONS = {
    "clamped_relu": (lambda x: mb.clamped_relu(x=x, alpha=0.1, beta=2.0),
                     lambda t: torch.clamp(torch.where(t >= 0, t, 0.1 * t), max=2.0)),
    "elu": (lambda x: mb.elu(x=x, alpha=0.7), lambda t: F.elu(t, 0.7)),
    "linear_activation": (lambda x: mb.linear_activation(x=x, alpha=1.5, beta=-0.25), lambda t: 1.5 * t - 0.25),
    "relu6": (lambda x: mb.relu6(x=x), F.relu6),
    "scaled_tanh": (lambda x: mb.scaled_tanh(x=x, alpha=2.0, beta=0.5), lambda t: 2.0 * torch.tanh(0.5 * t)),
    "softsign": (lambda x: mb.softsign(x=x), F.softsign),
    "threshold": (lambda x: mb.threshold(x=x, alpha=0.3), lambda t: torch.clamp(t, min=0.3)),
    "thresholded_relu": (lambda x: mb.thresholded_relu(x=x, alpha=0.3), lambda t: torch.where(t >= 0.3, t, 0 * t)),
}


@precisions
@pytest.mark.parametrize("op", sorted(ACTIVATIONS))
def test_activation(op, precision, tmp_path, rng):
    build, ref = ACTIVATIONS[op]
    x = f32(rng.normal(size=(3, 4, 5)) * 3)
    (got,) = run_mil(tmp_path, build, {"x": x}, precision, op)
    check(got, ref(R(x, precision)), precision, op)


@precisions
@pytest.mark.parametrize("op", ["reduce_log_sum", "reduce_log_sum_exp", "reduce_sum_square"])
@pytest.mark.parametrize("keep", [False, True])
def test_reduction(op, keep, precision, tmp_path, rng):
    x = f32(rng.uniform(0.5, 2.0, size=(3, 4, 5)) * (8 if op == "reduce_log_sum_exp" else 1))  # exp(16): fp16 overflow
    (got,) = run_mil(tmp_path, lambda x: getattr(mb, op)(x=x, axes=[1, 2], keep_dims=keep), {"x": x}, precision, op)
    t = R(x, precision)
    ref = {"reduce_log_sum": lambda: torch.log(t.sum((1, 2), keepdim=keep)),
           "reduce_log_sum_exp": lambda: torch.logsumexp(t, (1, 2), keepdim=keep),
           "reduce_sum_square": lambda: (t * t).sum((1, 2), keepdim=keep)}[op]()
    check(got, ref, precision, op)


@precisions
def test_prelu_and_softplus_parametric(precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 3, 4, 5)) * 3)
    a, b = f32([0.1, 0.5, 2.0]), f32([1.0, 0.5, 2.0])
    (got,) = run_mil(tmp_path, lambda x: mb.prelu(x=x, alpha=a), {"x": x}, precision, "prelu")
    check(got, F.prelu(R(x, precision), R(a, precision)), precision, "prelu")
    (got,) = run_mil(tmp_path, lambda x: mb.softplus_parametric(x=x, alpha=a, beta=b), {"x": x}, precision,
                     "softplus_parametric")
    t, ra, rb = R(x, precision), R(a, precision).view(1, 3, 1, 1), R(b, precision).view(1, 3, 1, 1)
    check(got, ra * F.softplus(rb * t), precision, "softplus_parametric")


@precisions
def test_norms(precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 3, 4, 5)) * 2 + 1)
    g, b = f32([1.0, 2.0, 0.5]), f32([0.0, -1.0, 1.0])
    (got,) = run_mil(tmp_path, lambda x: mb.instance_norm(x=x, gamma=g, beta=b, epsilon=1e-5), {"x": x}, precision,
                     "instance_norm")
    check(got, F.instance_norm(R(x, precision), weight=R(g, precision), bias=R(b, precision), eps=1e-5), precision,
          "instance_norm")
    (got,) = run_mil(tmp_path, lambda x: mb.l2_norm(x=x, epsilon=1e-6), {"x": x}, precision, "l2_norm")
    t = R(x, precision)
    check(got, t / torch.sqrt((t * t).sum((1, 2, 3), keepdim=True) + 1e-6), precision, "l2_norm")
    for size in (3, 4):
        (got,) = run_mil(tmp_path, lambda x: mb.local_response_norm(x=x, size=size, alpha=1e-2, beta=0.75, k=2.0),
                         {"x": x}, precision, "local_response_norm")
        check(got, F.local_response_norm(t, size, alpha=1e-2, beta=0.75, k=2.0), precision, f"lrn size {size}")


@precisions
def test_shape_ops(precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 3, 4, 5)))
    t = R(x, precision)
    (got,) = run_mil(tmp_path, lambda x: mb.flatten2d(x=x, axis=2), {"x": x}, precision, "flatten2d")
    check(got, t.reshape(6, 20), precision, "flatten2d")
    (got,) = run_mil(tmp_path, lambda x: mb.slice_by_size(x=x, begin=[0, 1, 1, 0], size=[-1, 2, 2, -1]), {"x": x},
                     precision, "slice_by_size")
    check(got, t[:, 1:3, 1:3, :], precision, "slice_by_size")
    (got,) = run_mil(tmp_path, lambda x: mb.stack(values=[x, mb.mul(x=x, y=2.0)], axis=1), {"x": x}, precision, "stack")
    check(got, torch.stack([t, 2 * t], 1), precision, "stack")
    (got,) = run_mil(tmp_path, lambda x: mb.band_part(x=x, lower=1, upper=0), {"x": x}, precision, "band_part")
    check(got, torch.tril(t) - torch.tril(t, -2), precision, "band_part")
    y = f32(rng.normal(size=(1, 8, 3, 2)))
    (got,) = run_mil(tmp_path, lambda x: mb.pixel_shuffle(x=x, upscale_factor=2), {"x": y}, precision, "pixel_shuffle")
    check(got, F.pixel_shuffle(R(y, precision), 2), precision, "pixel_shuffle")
    z = f32(rng.normal(size=(1, 2, 4, 6)))
    (got,) = run_mil(tmp_path, lambda x: mb.pixel_unshuffle(x=x, downscale_factor=np.uint32(2)), {"x": z}, precision,
                     "pixel_unshuffle")
    check(got, F.pixel_unshuffle(R(z, precision), 2), precision, "pixel_unshuffle")


def test_value_ops(tmp_path, rng):
    x = f32(rng.normal(size=(2, 3)))
    (got,) = run_mil(tmp_path, lambda x: mb.add(x=mb.fill_like(ref_tensor=x, value=2.5), y=x), {"x": x}, "fp32",
                     "fill_like")
    check(got, R(x, "fp32") + 2.5, "fp32", "fill_like")
    def fill_and_shape(s):
        f = mb.fill(shape=s, value=1.5)
        return [f, mb.shape(x=mb.add(x=f, y=1.0))]  # the shape of a value no pass can fold

    got, shp = run_mil(tmp_path, fill_and_shape, {"s": np.array([2, 3], np.int32)}, "fp32", "fill")
    check(got, torch.full((2, 3), 1.5), "fp32", "fill")
    np.testing.assert_array_equal(shp, [2, 3])
    (got,) = run_mil(tmp_path, lambda n: mb.range_1d(end=mb.squeeze(x=n), start=1, step=2), {"n": np.array([7], np.int32)},
                     "fp32", "range_1d")
    check(got, torch.arange(1, 7, 2), "fp32", "range_1d")
    idx = np.array([[0, 2], [1, 3]], np.int32)
    (got,) = run_mil(tmp_path, lambda i: mb.one_hot(indices=i, one_hot_vector_size=4, axis=1, on_value=5, off_value=-1),
                     {"i": idx}, "fp32", "one_hot")
    check(got, torch.movedim(torch.where(F.one_hot(torch.from_numpy(idx).long(), 4) == 1, 5, -1), -1, 1), "fp32",
          "one_hot")


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16"])
def test_cast_to_small_integers(dtype, tmp_path):
    x = f32([-3.7, -1.2, 0.0, 2.9, 100.5])
    np_dt = np.dtype(dtype)
    (got,) = run_mil(tmp_path, lambda x: mb.cast(x=mb.cast(x=x, dtype=dtype), dtype="fp32"), {"x": x}, "fp32", "cast")
    want = np.trunc(x).astype(np.int64)
    lo, hi = np.iinfo(np_dt).min, np.iinfo(np_dt).max
    inside = (want >= lo) & (want <= hi)  # out-of-range casts are undefined in MIL: compare the rest
    np.testing.assert_array_equal(got[inside], want[inside].astype(np.float32))


def test_rows_are_interpreter_only_or_full():
    import tlc.ops as O

    for name in INTERPRETER_ONLY:
        row = O.OPS[name]
        assert row.emit_mil is None and row.host_only and row.interpreter_only
    for name in COVERED:
        assert O.OPS[name].emit_mil is not None and O.OPS[name].torch is not None


@precisions
def test_reshape_zero_copies_a_dimension_from_the_right(precision, tmp_path, rng):
    import coremltools as ct

    x = f32(rng.normal(size=(2, 3, 4)))
    t = R(x, precision)
    for shape, want in (([0, -1], (3, 8)), ([0, -1, 2], (2, 6, 2)), ([0, 0, -1, 2], (1, 2, 6, 2))):
        (got,) = run_mil(tmp_path, lambda x: mb.reshape(x=x, shape=shape), {"x": x}, precision, "reshape",
                         target=ct.target.iOS17)
        check(got, t.reshape(want), precision, f"reshape {shape}")  # iOS17 replace_zeros_in_shape: right-aligned


@precisions
def test_gather_with_batch_dims(precision, tmp_path, rng):
    import coremltools as ct

    x = f32(rng.normal(size=(2, 3, 4)))
    idx = np.array([[0, 2], [1, 1]], np.int32)
    (got,) = run_mil(tmp_path, lambda x: mb.gather(x=x, indices=idx, axis=1, batch_dims=1), {"x": x}, precision,
                     "gather", target=ct.target.iOS17)
    t = R(x, precision)
    check(got, torch.stack([t[b][torch.from_numpy(idx[b]).long()] for b in range(2)]), precision, "gather batch_dims=1")


@precisions
def test_slice_by_index_negative_stride(precision, tmp_path, rng):
    x = f32(rng.normal(size=(3, 3, 2)))
    (got,) = run_mil(tmp_path, lambda x: mb.slice_by_index(x=x, begin=[-1, 0, 0], end=[-2, 0, 0], stride=[-1, 1, 1],
                                                           end_mask=[False, True, True]), {"x": x}, precision,
                     "slice_by_index")
    check(got, R(x, precision)[2:3], precision, "x[-1:-2:-1]")  # one row, not [0, 3, 2]


@precisions
def test_depth_to_space_and_back_in_tensorflow_order(precision, tmp_path, rng):
    x = f32(rng.normal(size=(1, 8, 2, 3)))
    (got,) = run_mil(tmp_path, lambda x: mb.depth_to_space(x=x, block_size=2), {"x": x}, precision, "depth_to_space")
    xr = R(x, precision).numpy()
    ref = np.empty((1, 2, 4, 6))
    for c in range(2):  # tf.nn.depth_to_space (DCR), written out: out[c, h*b+i, w*b+j] = x[(i*b+j)*C' + c, h, w]
        for h in range(2):
            for w in range(3):
                for i in range(2):
                    for j in range(2):
                        ref[0, c, h * 2 + i, w * 2 + j] = xr[0, (i * 2 + j) * 2 + c, h, w]
    check(got, ref, precision, "depth_to_space")
    (back,) = run_mil(tmp_path, lambda y: mb.space_to_depth(x=y, block_size=2), {"y": f32(ref)}, precision,
                      "space_to_depth")
    check(back, xr, precision, "space_to_depth")


@precisions
@pytest.mark.parametrize("seq_axis,batch_axis", [(1, 0), (0, 1), (2, 0)])
def test_reverse_sequence(seq_axis, batch_axis, precision, tmp_path, rng):
    x = f32(rng.normal(size=(3, 4, 5)))
    lengths = np.array([x.shape[seq_axis], 1, 2, 0][: x.shape[batch_axis]], np.int32)
    (got,) = run_mil(tmp_path, lambda x, n: mb.reverse_sequence(x=x, lengths=n, seq_axis=seq_axis, batch_axis=batch_axis),
                     {"x": x, "n": lengths}, precision, "reverse_sequence")
    ref = R(x, precision).numpy().copy()
    for b, n in enumerate(lengths):  # tf.reverse_sequence, written out element by element
        for k in range(n):
            dst, src = [slice(None)] * 3, [slice(None)] * 3
            dst[batch_axis] = src[batch_axis] = b
            dst[seq_axis], src[seq_axis] = k, n - 1 - k
            ref[tuple(dst)] = R(x, precision).numpy()[tuple(src)]
    check(got, ref, precision, "reverse_sequence")


@precisions
def test_space_to_batch_and_back_in_tensorflow_order(precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 3, 3, 4)))
    bs, pads = np.array([2, 2], np.int32), np.array([[1, 0], [0, 2]], np.int32)
    (got,) = run_mil(tmp_path, lambda x: mb.space_to_batch(x=x, block_shape=bs, paddings=pads), {"x": x}, precision,
                     "space_to_batch")
    xp = np.pad(R(x, precision).numpy(), [(0, 0), (0, 0), (1, 0), (0, 2)])  # [2, 3, 4, 6]
    ref = np.empty((8, 3, 2, 3))
    for i in range(2):  # tf.space_to_batch_nd, written out: out[(i*b1 + j)*n + k] = padded[k, :, h*b0 + i, w*b1 + j]
        for j in range(2):
            for k in range(2):
                ref[(i * 2 + j) * 2 + k] = xp[k, :, i::2, j::2]
    check(got, ref, precision, "space_to_batch")
    crops = np.array([[1, 0], [0, 2]], np.int32)
    (back,) = run_mil(tmp_path, lambda y: mb.batch_to_space(x=y, block_shape=bs, crops=crops), {"y": f32(ref)},
                      precision, "batch_to_space")
    check(back, R(x, precision), precision, "batch_to_space")
