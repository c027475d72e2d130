"""Rows for MIL ops that only tlc's MIL interpreter meets: packages made by coremltools or other
converters use them, tlc's front-end never produces them (``emit_mil=None``; no IR ``infer``).

Semantics follow coremltools' op definitions (``coremltools/converters/mil/mil/ops/defs/iOS15``
... ``iOS17``: the docstrings and ``value_inference``), cited per kernel. Kernels compute in
float32 (fp16 inputs arrive widened, :func:`tlc.ops.run_kernel`). Tests:
tests/test_mil_ops_extra.py (Builder programs at fp32 and fp16 against float64 torch/NumPy).
"""
from __future__ import annotations

import numpy as np

from ..errors import IRError
from .table import mil_attr, register

_HOST = "MIL interpreter only: tlc's front-end never produces this op, so no device kernel is needed"


def _no_ir(name):
    def infer(in_types, attrs):
        raise IRError(f"MIL op {name} is executed by tlc's MIL interpreter only; tlc's IR never holds it")

    return infer


def interpreter_row(name, kernel, mil_inputs=("x",), from_mil=None, nondeterministic=False):
    register(name, infer=_no_ir(name), numpy=kernel, emit_mil=None, mil_inputs=mil_inputs, from_mil=from_mil,
             host_only=_HOST, interpreter_only=True, nondeterministic=nondeterministic)


def attrs_except(vals: dict, skip) -> dict:
    """A loaded MIL op's inputs other than ``skip`` (and absent optional ones) as kernel attrs
    (:func:`tlc.ops.mil_attr`: int arrays -> tuples, 0-d -> Python scalars)."""
    return {k: mil_attr(v) for k, v in vals.items() if k not in skip and v is not None}


def tensor_inputs(*names, optional=()):
    """A ``from_mil`` passing the MIL inputs ``names`` (required) to the kernel as arrays, the
    ``optional`` tensors (if present) as attrs holding arrays, and the rest through
    :func:`attrs_except`."""

    def from_mil(vals):
        attrs = attrs_except(vals, set(names) | set(optional))
        for n in optional:
            if vals.get(n) is not None:
                attrs[n] = np.asarray(vals[n])
        return [vals[n] for n in names], attrs

    return from_mil


def _per_channel(a, x):
    """A per-channel parameter [C] broadcast over x [B, C, *D]."""
    return np.asarray(a, np.float32).reshape((1, -1) + (1,) * (x.ndim - 2))


def _prelu(attrs, x, alpha):
    """iOS15 activation.py ``prelu``: x if x > 0 else alpha[c] * x, x of rank >= 3 ([B, C, *D])."""
    return np.where(x > 0, x, x * _per_channel(alpha, x)).astype(x.dtype)


def _softplus_parametric(attrs, x, alpha, beta):
    """iOS15 activation.py ``softplus_parametric``: alpha[c] * log(1 + exp(beta[c] * x)) (stable form)."""
    bx = x.astype(np.float32) * _per_channel(beta, x)
    return (_per_channel(alpha, x) * (np.maximum(bx, 0) + np.log1p(np.exp(-np.abs(bx))))).astype(x.dtype)


def _flatten2d(attrs, x):
    """iOS15 tensor_operation.py ``flatten2d``: [prod(shape[:axis]), prod(shape[axis:])], axis default 1."""
    axis = int(attrs.get("axis", 1)) % (x.ndim + 1) if x.ndim else 0
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _slice_by_size(attrs, x, begin, size):
    """iOS15 tensor_transformation.py ``slice_by_size``: x[begin[i] : begin[i] + size[i]] per axis, a
    size of -1 meaning to the end."""
    begin, size = np.asarray(begin).astype(int), np.asarray(size).astype(int)
    sl = tuple(slice(b % d if d else 0, None if s == -1 else (b % d if d else 0) + s)
               for b, s, d in zip(begin, size, x.shape))
    return np.ascontiguousarray(x[sl])


def _stack(attrs, *values):
    """iOS15 tensor_operation.py ``stack``: the ``values`` stacked along a new ``axis``."""
    return np.stack(values, axis=int(attrs["axis"]))


def _band_part(attrs, x):
    """iOS15 tensor_operation.py ``band_part``: keep x[..., m, n] where (lower < 0 or m - n <= lower)
    and (upper < 0 or n - m <= upper), zero elsewhere."""
    lower, upper = int(attrs.get("lower", -1)), int(attrs.get("upper", -1))
    m, n = np.ogrid[: x.shape[-2], : x.shape[-1]]
    keep = ((lower < 0) | (m - n <= lower)) & ((upper < 0) | (n - m <= upper))
    return np.where(keep, x, np.zeros((), x.dtype)).astype(x.dtype)


def _l2_norm(attrs, x):
    """iOS15 normalization.py ``l2_norm``: x / sqrt(sum(x^2) + epsilon) over the last 3 axes (the
    leading ones are batch), epsilon default 1e-6 (its ``value_inference``)."""
    eps = np.float32(attrs.get("epsilon", 1e-6))
    xf = x.astype(np.float32).reshape(int(np.prod(x.shape[:-3])), -1)
    return (xf / np.sqrt(np.sum(xf * xf, axis=1, keepdims=True) + eps)).reshape(x.shape).astype(x.dtype)


def _instance_norm(attrs, x, gamma=None, beta=None):
    """iOS15 normalization.py ``instance_norm``: per sample and channel over the spatial axes of
    x [N, C, *D]: (x - mean) / sqrt(var + epsilon) * gamma[c] + beta[c], epsilon default 1e-5."""
    xf = x.astype(np.float32)
    axes = tuple(range(2, x.ndim))
    mean = xf.mean(axis=axes, keepdims=True)
    d = xf - mean
    y = d / np.sqrt(np.mean(d * d, axis=axes, keepdims=True) + np.float32(attrs.get("epsilon", 1e-5)))
    if gamma is not None:
        y = y * _per_channel(gamma, x)
    if beta is not None:
        y = y + _per_channel(beta, x)
    return y.astype(x.dtype)


def _instance_norm_from_mil(vals):
    from .table import mil_attr

    arrays = [vals["x"]]
    g, b = vals.get("gamma"), vals.get("beta")
    if g is not None or b is not None:
        c = vals["x"].shape[1]
        arrays += [g if g is not None else np.ones(c, np.float32), b if b is not None else np.zeros(c, np.float32)]
    return arrays, {k: mil_attr(v) for k, v in vals.items() if k not in ("x", "gamma", "beta") and v is not None}


def _local_response_norm(attrs, x):
    """iOS15 normalization.py ``local_response_norm``: x / (k + alpha / size * sum_j x_j^2)^beta, the
    sum over the ``size`` channels around each: [c - size//2, c + (size-1)//2], torch's
    ``local_response_norm`` window (coremltools' torch front-end maps that op to this one 1:1, so
    the two agree for even sizes too); alpha 1e-4, beta 0.75, k 1 by default."""
    size = int(attrs["size"])
    alpha, beta, k = (np.float32(attrs.get(n, d)) for n, d in (("alpha", 1e-4), ("beta", 0.75), ("k", 1.0)))
    xf = x.astype(np.float32)
    sq = xf * xf
    pad = [(0, 0)] * x.ndim
    pad[1] = (size // 2, (size - 1) // 2)
    c = np.cumsum(np.pad(sq, pad), axis=1)
    c = np.concatenate([np.zeros_like(c[:, :1]), c], axis=1)
    win = c[:, size:] - c[:, :-size]
    return (xf / (k + alpha / size * win) ** beta).astype(x.dtype)


def _pixel_shuffle(attrs, x):
    """iOS16 tensor_transformation.py ``pixel_shuffle`` (torch's): [N, C*f*f, H, W] -> [N, C, H*f, W*f]."""
    f = int(attrs["upscale_factor"])
    n, c, h, w = x.shape
    return x.reshape(n, c // (f * f), f, f, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, c // (f * f), h * f, w * f)


def _pixel_unshuffle(attrs, x):
    """iOS16 tensor_transformation.py ``pixel_unshuffle`` (torch's): [N, C, H*f, W*f] -> [N, C*f*f, H, W]."""
    f = int(attrs["downscale_factor"])
    n, c, h, w = x.shape
    return x.reshape(n, c, h // f, f, w // f, f).transpose(0, 1, 3, 5, 2, 4).reshape(n, c * f * f, h // f, w // f)


def _depth_to_space(attrs, x):
    """iOS15 tensor_transformation.py ``depth_to_space``: TensorFlow's (DCR) order in NCHW, as
    coremltools' TF front-end maps ``tf.nn.depth_to_space`` onto it:
    out[n, c, h*b + i, w*b + j] = x[n, (i*b + j) * C/b^2 + c, h, w]."""
    b = int(attrs["block_size"])
    n, c, h, w = x.shape
    return x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2).reshape(n, c // (b * b), h * b, w * b)


def _space_to_depth(attrs, x):
    """iOS15 tensor_transformation.py ``space_to_depth``: the inverse of :func:`_depth_to_space`
    (TensorFlow's order): out[n, (i*b + j) * C + c, h, w] = x[n, c, h*b + i, w*b + j]."""
    b = int(attrs["block_size"])
    n, c, h, w = x.shape
    return x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4).reshape(n, c * b * b, h // b, w // b)


def _space_to_batch(attrs, x):
    """iOS15 tensor_transformation.py ``space_to_batch`` (``tf.space_to_batch_nd`` in NCHW): pad H, W
    by ``paddings`` [[top, bottom], [left, right]], cut them into ``block_shape`` (b0, b1) blocks,
    and stack the block offsets in front of the batch: out[(i*b1 + j)*n + k, c, h, w] =
    padded[k, c, h*b0 + i, w*b1 + j]."""
    (b0, b1), pads = (int(v) for v in np.asarray(attrs["block_shape"]).ravel()), np.asarray(attrs["paddings"]).reshape(2, 2)
    xp = np.pad(x, [(0, 0), (0, 0), tuple(int(v) for v in pads[0]), tuple(int(v) for v in pads[1])])
    n, c, h, w = xp.shape
    return xp.reshape(n, c, h // b0, b0, w // b1, b1).transpose(3, 5, 0, 1, 2, 4).reshape(b0 * b1 * n, c, h // b0, w // b1)


def _batch_to_space(attrs, x):
    """iOS15 tensor_transformation.py ``batch_to_space`` (``tf.batch_to_space``, NCHW): the inverse of
    :func:`_space_to_batch`, then ``crops`` [[top, bottom], [left, right]] removed."""
    (b0, b1), crops = (int(v) for v in np.asarray(attrs["block_shape"]).ravel()), np.asarray(attrs["crops"]).reshape(2, 2)
    nb, c, h, w = x.shape
    n = nb // (b0 * b1)
    y = x.reshape(b0, b1, n, c, h, w).transpose(2, 3, 4, 0, 5, 1).reshape(n, c, h * b0, w * b1)
    (t, b), (l, r) = (tuple(int(v) for v in row) for row in crops)
    return np.ascontiguousarray(y[:, :, t:h * b0 - b, l:w * b1 - r])


def _reverse_sequence(attrs, x, lengths):
    """iOS15 tensor_transformation.py ``reverse_sequence`` (``tf.reverse_sequence``): for each
    index i along ``batch_axis``, the first ``lengths[i]`` elements along ``seq_axis`` reversed."""
    sa, ba = int(attrs.get("seq_axis", 0)) % x.ndim, int(attrs.get("batch_axis", 0)) % x.ndim
    out = np.array(x, copy=True)
    for i, n in enumerate(np.asarray(lengths).astype(int).ravel()):
        if n <= 0:
            continue
        sel = [slice(None)] * x.ndim
        sel[ba], sel[sa] = i, slice(0, n)
        out[tuple(sel)] = np.flip(x[tuple(sel)], axis=sa - (1 if ba < sa else 0))  # indexing ba drops that axis
    return out


def _fill(attrs, shape):
    """iOS15 tensor_operation.py ``fill``: a tensor of ``shape`` holding ``value`` (default 0)."""
    return np.full(tuple(int(d) for d in np.asarray(shape).ravel()), attrs.get("value", 0.0), np.float32)


def _fill_like(attrs, ref):
    """iOS16 tensor_operation.py ``fill_like``: ``ref``'s shape filled with ``value`` (default 0)."""
    return np.full(ref.shape, attrs.get("value", 0.0), np.float32)


def _range_1d(attrs, end, start, step):
    """iOS15 tensor_operation.py ``range_1d``: arange(start, end, step)."""
    s, e, st = (np.asarray(v).item() for v in (start, end, step))
    return np.arange(s, e, st)


def _one_hot(attrs, indices, size=None):
    """iOS15 tensor_operation.py ``one_hot``: a new ``axis`` (default -1) of length
    ``one_hot_vector_size`` holding ``on_value`` (1) at each index and ``off_value`` (0) elsewhere."""
    n = int(np.asarray(size).item()) if size is not None else int(attrs["one_hot_vector_size"])
    on, off = attrs.get("on_value", 1), attrs.get("off_value", 0)
    idx = np.asarray(indices).astype(np.int64)
    out = np.where(idx[..., None] == np.arange(n), on, off)
    return np.moveaxis(out, -1, int(attrs.get("axis", -1)) % out.ndim)


def _shape(attrs, x):
    """iOS15 tensor_operation.py ``shape``: the shape of ``x`` as int32."""
    return np.array(x.shape, np.int32)


interpreter_row("prelu", _prelu, ("x", "alpha"))
interpreter_row("softplus_parametric", _softplus_parametric, ("x", "alpha", "beta"))
interpreter_row("flatten2d", _flatten2d)
interpreter_row("slice_by_size", _slice_by_size, ("x", "begin", "size"))
interpreter_row("stack", _stack, from_mil=lambda vals: (list(vals["values"]), {"axis": int(np.asarray(vals["axis"]).item())}))
interpreter_row("band_part", _band_part)
interpreter_row("l2_norm", _l2_norm)
interpreter_row("instance_norm", _instance_norm, ("x", "gamma", "beta"), from_mil=_instance_norm_from_mil)
interpreter_row("local_response_norm", _local_response_norm)
interpreter_row("pixel_shuffle", _pixel_shuffle)
interpreter_row("pixel_unshuffle", _pixel_unshuffle)
interpreter_row("depth_to_space", _depth_to_space)
interpreter_row("space_to_depth", _space_to_depth)
interpreter_row("reverse_sequence", _reverse_sequence, ("x", "lengths"))
interpreter_row("space_to_batch", _space_to_batch)
interpreter_row("batch_to_space", _batch_to_space)
interpreter_row("fill", _fill, ("shape",))
interpreter_row("fill_like", _fill_like, ("ref_tensor",))
interpreter_row("range_1d", _range_1d, ("end", "start", "step"))
interpreter_row("one_hot", _one_hot, ("indices", "one_hot_vector_size"))
interpreter_row("shape", _shape)
