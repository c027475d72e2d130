"""Rows for more MIL ops that only tlc's MIL interpreter meets (``emit_mil=None``,
``interpreter_only``; see :mod:`tlc.ops.mil_only`): ``l2_pool``, ``non_zero``,
``non_maximum_suppression``, ``sliding_windows``, ``reshape_like``, ``random_categorical``,
``slice_update``, ``conv_quantized`` and ``classify``.

Semantics follow coremltools' op definitions (``coremltools/converters/mil/mil/ops/defs/iOS15``
... ``iOS18``: docstrings, ``type_inference`` and ``value_inference``), cited per kernel; where an
op has several opset versions, one row serves them all (the kernel tells them apart by their
inputs). Kernels compute in float32 (fp16 inputs arrive widened, :func:`tlc.ops.run_kernel`).
Tests: tests/test_mil_ops_more.py (Builder programs at fp32 and fp16 against float64
torch/NumPy references).
"""
from __future__ import annotations

import numpy as np

from ..errors import IRError
from .table import mil_attr
from .conv import conv_kernel, conv_taps, explicit_pad, pad_array, window_from_mil
from .pool import tap_reduce
from .mil_only import interpreter_row, attrs_except as _attrs
from .slicing import slice_from_mil


# ------------------------------------------------------------------------------------ l2_pool


def _pool_out(size, k, s, pb, pa, ceil_mode):
    """coremltools' pool output length (defs/_utils.py ``spatial_dimensions_out_shape``): floor
    mode (size + pads - k) // s + 1; ceil mode (size + pads - k + s - 1) // s + 1, less one when
    the last window starts at or past size + pads / 2 *and* the padding is not zero (so with no
    padding a last window may start past the input: it reads only padding)."""
    total = pb + pa
    if not ceil_mode:
        n = (size + total - k) // s + 1
    else:
        n = (size + total - k + s - 1) // s + 1
        if (n - 1) * s >= size + total / 2 and total > 0:
            n -= 1
    if n <= 0:
        raise IRError(f"pool window {k} (stride {s}) gives no output on an axis of size {size} padded by {total}")
    return n


def _l2_pool(attrs, x):
    """iOS15 pool.py ``l2_pool``: x[N, C, *D] (1 or 2 spatial axes) -> [N, C, *D_out], each
    output sqrt(sum of x^2 over its window), the padding zeros; ``kernel_sizes``, ``strides``
    (default 1), ``pad_type`` valid / same / same_lower / custom (``pad``, resolved by
    :func:`tlc.ops.conv.explicit_pad`, the rule of ``avg_pool``) and ``ceil_mode`` (the output
    size of :func:`_pool_out`; windows running past the padded input read zeros)."""
    k = tuple(int(v) for v in attrs["kernel_sizes"])
    nsp = len(k)
    if x.ndim != nsp + 2 or nsp not in (1, 2):
        raise IRError(f"l2_pool supports 1 or 2 spatial axes: x{list(x.shape)}, kernel {list(k)}")
    strides = tuple(attrs.get("strides") or (1,) * nsp)
    pad = list(attrs.get("pad") or (0,) * (2 * nsp))
    ceil_mode = bool(attrs.get("ceil_mode", False))
    out_sp = tuple(_pool_out(x.shape[2 + i], k[i], strides[i], pad[2 * i], pad[2 * i + 1], ceil_mode)
                   for i in range(nsp))
    for i in range(nsp):  # windows past the padded input (ceil_mode) read more zeros
        need = (out_sp[i] - 1) * strides[i] + k[i] - (x.shape[2 + i] + pad[2 * i] + pad[2 * i + 1])
        if need > 0:
            pad[2 * i + 1] += need
    xf = x.astype(np.float32)
    xp = pad_array(xf * xf, pad, 0.0)
    s = tap_reduce(np.add, xp, list(conv_taps(k, strides, (1,) * nsp, out_sp)), out_sp)
    return np.sqrt(s)


def _l2_pool_from_mil(vals):
    x = vals["x"]
    nsp = x.ndim - 2
    k = tuple(int(v) for v in np.asarray(vals["kernel_sizes"]).ravel())
    strides = mil_attr(vals.get("strides")) or (1,) * nsp
    attrs = _attrs(vals, {"x", "pad_type", "pad"})
    attrs["pad"] = explicit_pad(str(vals.get("pad_type", "valid")).lower(), vals.get("pad"), x.shape[2:], k,
                                tuple(strides), (1,) * nsp)
    attrs["kernel_sizes"], attrs["strides"] = k, tuple(strides)
    return [x], attrs


# ----------------------------------------------------------------------------------- non_zero


def _non_zero(attrs, x):
    """iOS15 tensor_operation.py ``non_zero``: [N, rank(x)] int32, the indices of x's non-zero
    elements in row-major order, one per row (``value_inference``: transpose(nonzero(x)))."""
    if x.ndim == 0:
        return np.zeros((int(x != 0), 0), np.int32)
    return np.ascontiguousarray(np.transpose(np.nonzero(x))).astype(np.int32)


# -------------------------------------------------------------------- non_maximum_suppression


def _nms_one(boxes, scores, iou_threshold, score_threshold, max_boxes, per_class):
    """Indices of the boxes one batch keeps, in order of decreasing score (see :func:`_nms`)."""
    n = boxes.shape[0]
    if n == 0 or max_boxes <= 0:
        return np.zeros(0, np.int64)
    b = boxes.astype(np.float64)
    best = scores.astype(np.float64).max(axis=1)
    cls = np.argmax(scores, axis=1) if per_class else None
    x1, x2 = b[:, 0] - 0.5 * b[:, 2], b[:, 0] + 0.5 * b[:, 2]
    y1, y2 = b[:, 1] - 0.5 * b[:, 3], b[:, 1] + 0.5 * b[:, 3]
    area = b[:, 2] * b[:, 3]
    alive = best > score_threshold if score_threshold is not None else np.ones(n, bool)
    order = np.argsort(-best, kind="stable")  # ties: the lower index first
    keep = []
    while len(keep) < max_boxes:
        cand = order[alive[order]]
        if cand.size == 0:
            break
        i = int(cand[0])
        keep.append(i)
        alive[i] = False
        inter = (np.maximum(0.0, np.minimum(x2[i], x2) - np.maximum(x1[i], x1))
                 * np.maximum(0.0, np.minimum(y2[i], y2) - np.maximum(y1[i], y1)))
        union = area[i] + area - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where((area[i] > 0) & (area > 0) & (union > 0), inter / union, 0.0)
        sup = iou > iou_threshold
        if cls is not None:
            sup &= cls == cls[i]
        alive &= ~sup
    if not keep:  # Core ML returns the best box when none passes the score threshold
        keep = [int(np.argmax(best))]
    return np.asarray(keep, np.int64)


def _nms(attrs, boxes, scores):
    """``non_maximum_suppression``. iOS15 tensor_operation.py: boxes[n, B, 4] (center x, center y,
    width, height), scores[n, B, K], ``iou_threshold``, ``score_threshold``, ``max_boxes``,
    ``per_class_suppression`` (default False) -> boxes[n, max_boxes, 4], scores[n, max_boxes, K],
    indices[n, max_boxes] int32, count[n] int32. iOS17 tensor_operation.py (no
    ``score_threshold``): boxes[n, 4, B], scores[n, K, B] -> boxes[n, 4, max_boxes],
    scores[n, K, max_boxes], indices[n, max_boxes].

    Per batch, a box's score is its highest class score; boxes whose score is not above
    ``score_threshold`` are dropped (TensorFlow's ``non_max_suppression`` rule, coremltools'
    reference for this op, mil/ops/tests/iOS14/test_tensor_operation.py); then, in order of
    decreasing score (ties: lower index first), each box is kept unless its IoU with a kept box
    is > ``iou_threshold`` (with ``per_class_suppression``, only kept boxes of its own class,
    the argmax of its scores, suppress it), up to ``max_boxes``. As in that reference, when no
    box passes the score threshold the best box is returned alone. A box of zero area has IoU 0
    with every box. Outputs past the kept boxes are padded: coordinates and scores 0, indices -1."""
    ios15 = "score_threshold" in attrs
    if not ios15:  # iOS17 layout: boxes on the last axis
        boxes, scores = boxes.transpose(0, 2, 1), scores.transpose(0, 2, 1)
    n, _, k = scores.shape
    m = int(attrs["max_boxes"])
    thr = float(attrs["score_threshold"]) if ios15 else None
    out_b = np.zeros((n, m, 4), np.float32)
    out_s = np.zeros((n, m, k), np.float32)
    out_i = np.full((n, m), -1, np.int32)
    count = np.zeros(n, np.int32)
    for j in range(n):
        keep = _nms_one(boxes[j], scores[j], float(attrs["iou_threshold"]), thr, m,
                        bool(attrs.get("per_class_suppression", False)))
        c = len(keep)
        out_b[j, :c], out_s[j, :c], out_i[j, :c], count[j] = boxes[j, keep], scores[j, keep], keep, c
    if ios15:
        return out_b, out_s, out_i, count
    return np.ascontiguousarray(out_b.transpose(0, 2, 1)), np.ascontiguousarray(out_s.transpose(0, 2, 1)), out_i


# ---------------------------------------------------------------------------- sliding_windows


def _sliding_windows(attrs, x):
    """``sliding_windows`` (iOS15 tensor_transformation.py; iOS17 adds dtypes): x[*d0, d, *dn] ->
    [*d0, (d - size) // stride + 1, size, *dn] (the size rule of its ``type_inference``; the
    docstring's ``d - size // stride + 1`` misplaces the parentheses): out[.., i, j, ..] =
    x[.., i * stride + j, ..]; ``stride`` defaults to 1, ``axis`` may be negative."""
    axis = int(attrs["axis"]) % x.ndim
    size, stride = int(attrs["size"]), int(attrs.get("stride", 1))
    win = np.lib.stride_tricks.sliding_window_view(x, size, axis=axis)  # the window axis last
    win = win[(slice(None),) * axis + (slice(None, None, stride),)]
    return np.ascontiguousarray(np.moveaxis(win, -1, axis + 1))


# ------------------------------------------------------------------------------- reshape_like


def _reshape_like(attrs, x):
    """``reshape_like`` (iOS16 tensor_transformation.py; iOS17 adds dtypes): x reshaped to the
    concatenation, over the reference tensors, of ``ref.shape[begin:]`` where its end mask is set
    and ``ref.shape[begin:end]`` elsewhere (Python slicing: negative begin/end count from the
    end). ``ref_shapes`` holds the reference tensors' shapes (:func:`_reshape_like_from_mil`)."""
    shape: list[int] = []
    for s, b, e, m in zip(attrs["ref_shapes"], attrs["begins"], attrs["ends"], attrs["end_masks"]):
        shape += list(s[int(b):]) if m else list(s[int(b):int(e)])
    return x.reshape(shape)


def _reshape_like_from_mil(vals):
    """Only the reference tensors' shapes matter: they travel as an attribute, not as arrays
    (which fp16 widening would copy)."""
    scal = lambda vs: tuple(mil_attr(np.asarray(v)) for v in vs)  # noqa: E731
    return [vals["x"]], {"ref_shapes": tuple(tuple(np.shape(r)) for r in vals["ref_tensors"]),
                         "begins": scal(vals["begins"]), "ends": scal(vals["ends"]),
                         "end_masks": tuple(bool(v) for v in scal(vals["end_masks"]))}


# ------------------------------------------------------------------------- random_categorical


def _random_categorical(attrs, x):
    """iOS15 random.py ``random_categorical``: x[*D, K] holds per distribution over its last axis
    ``logits`` (``mode`` "logits", the default) or ``probs`` (``mode`` "probs": their log is taken
    as the logits, so they need not sum to 1 and a 0 is never drawn) -> [*D, size] category
    indices (as floats, x's dtype) drawn with replacement, ``size`` (default 1) per distribution.
    ``seed`` -1 (the default) draws fresh values on every call; another seed repeats its draws on
    every call (NumPy's generator: not Core ML's values)."""
    mode = str(attrs.get("mode", "logits"))
    size = int(attrs.get("size", 1))
    seed = int(attrs.get("seed", -1))
    if mode not in ("logits", "probs"):
        raise IRError(f"random_categorical mode must be 'logits' or 'probs', got {mode!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        logits = x.astype(np.float64) if mode == "logits" else np.log(x.astype(np.float64))
        z = np.exp(logits - logits.max(axis=-1, keepdims=True))
        cdf = np.cumsum(z, axis=-1).reshape(-1, x.shape[-1])
        cdf /= cdf[:, -1:]
    rng = np.random.default_rng(None if seed < 0 else seed)
    u = rng.random((cdf.shape[0], size))
    idx = np.stack([np.searchsorted(c, r, side="right") for c, r in zip(cdf, u)]) if cdf.shape[0] else u
    idx = np.minimum(idx, x.shape[-1] - 1)
    return idx.reshape(x.shape[:-1] + (size,)).astype(np.float32)


# ------------------------------------------------------------------------------- slice_update


def _slice_update(attrs, x, update):
    """iOS18 tensor_transformation.py ``slice_update``: a copy of x with
    x[begin[0]:end[0]:stride[0], ...] = update, the slice read as ``slice_by_index`` reads it
    (``begin_mask`` / ``end_mask`` / ``squeeze_mask``, negative indices and strides; its shape
    rule, ``solve_slice_by_index_shape``). ``update`` has the slice's shape (squeezed axes
    dropped). The attributes are the slice in tlc's normalized form
    (:func:`tlc.ops.slicing.slice_from_mil`: forward ``begin``/``end``/``stride``, ``flip`` for
    the axes a negative stride walks backwards)."""
    out = np.array(x, copy=True)
    sl = tuple(slice(b, e, s) for b, e, s in zip(attrs["begin"], attrs["end"], attrs["stride"]))
    region = out[sl].shape
    u = np.asarray(update)
    if u.size != int(np.prod(region)):
        raise IRError(f"slice_update: update{list(u.shape)} does not fit the slice {list(region)}")
    u = u.reshape(region)
    if attrs.get("flip"):
        u = np.flip(u, axis=tuple(attrs["flip"]))
    out[sl] = u
    return out


def _slice_update_from_mil(vals):
    names = ("x", "begin", "end", "stride", "begin_mask", "end_mask", "squeeze_mask")
    _, attrs = slice_from_mil({k: vals.get(k) for k in names})
    return [vals["x"], vals["update"]], attrs


# ----------------------------------------------------------------------------- conv_quantized


def _per_out_channel(p, w, what):
    """A quantization parameter: a scalar (size 1), one per output channel ([C_out], the
    neuralnetwork format's rule, coremltools models/neural_network/builder.py) or one per weight."""
    p = np.asarray(p, np.float32)
    if p.size == 1:
        return p.reshape(())
    if p.size == w.shape[0]:
        return p.reshape((-1,) + (1,) * (w.ndim - 1))
    if p.shape == w.shape:
        return p
    raise IRError(f"conv_quantized {what} of shape {list(p.shape)} fits neither a scalar, [C_out={w.shape[0]}] "
                  f"nor the weight {list(w.shape)}")


def _dequantize_weight(attrs, w):
    """The float weight of ``conv_quantized``: ``W_float = W_quantized * quant_scale + quant_bias``
    (``quantization_type`` "linear"); ``nbits`` (default 8, 1..8) bounds the uint8 values."""
    nbits = int(attrs.get("nbits", 8))
    if not 1 <= nbits <= 8:
        raise IRError(f"conv_quantized nbits must be in 1..8, got {nbits}")
    if w.size and int(w.max()) >= 1 << nbits:
        raise IRError(f"conv_quantized weight holds {int(w.max())}, which does not fit nbits={nbits}")
    qt = str(attrs["quantization_type"]).lower()
    if qt == "linear":
        return (w.astype(np.float32) * _per_out_channel(attrs["quant_scale"], w, "quant_scale")
                + _per_out_channel(attrs["quant_bias"], w, "quant_bias")).astype(np.float32)
    if qt == "lut":
        raise IRError("conv_quantized with quantization_type 'lut' is not supported: the op (coremltools iOS15 "
                      "conv.py) has no lookup-table input (only quant_scale and quant_bias, for "
                      "W = W_q * scale + bias), and coremltools' own neuralnetwork lowering refuses it "
                      "('quant_lut must be provided')")
    raise IRError(f"conv_quantized quantization_type must be 'linear' or 'lut', got {qt!r}")


def _conv_quantized(attrs, x, weight, bias=None):
    """iOS15 conv.py ``conv_quantized``: ``conv`` (x[N, C_in, *D], ``strides``, ``pad_type`` /
    ``pad``, ``dilations``, ``groups``) with the uint8 weight[C_out, C_in / groups, *K]
    dequantized first (:func:`_dequantize_weight`), then tlc's ``conv`` kernel
    (:func:`tlc.ops.conv.conv_kernel`, the ``conv`` row's). The op's ``bias`` must be uint8 like the
    weight (its input spec); it is added as is, per output channel, as coremltools'
    neuralnetwork lowering passes it (backend/nn/op_mapping.py ``conv_helper``)."""
    wf = _dequantize_weight(attrs, weight)
    b = None if bias is None else np.asarray(bias).astype(np.float32)
    return conv_kernel(attrs, x.astype(np.float32, copy=False), wf, b)


def _conv_quantized_from_mil(vals):
    return window_from_mil(vals, vals["weight"].shape[2:], ("x", "weight", "bias"))


# ----------------------------------------------------------------------------------- classify


def _classify(attrs, probabilities):
    """iOS15 classify.py ``classify``: probabilities[*, P] (fp32; the classes are its flattened
    elements) and the const list ``classes`` (str or int64, one per probability) -> (the class
    with the highest probability, first on ties; a 0-d str / int64 array) and (the dict
    {class: probability} of Core ML's classifier output, probabilities as Python floats: the
    op's dict(ClassT, double) type), held in a 0-d object array."""
    p = np.asarray(probabilities, np.float32).ravel()
    classes = list(attrs["classes"])
    if len(classes) != p.size or not classes:
        raise IRError(f"classify: {len(classes)} classes for {p.size} probabilities")
    key = [str(c) if isinstance(c, (str, np.str_)) else int(c) for c in classes]
    label = classes[int(np.argmax(p))]
    label = np.array(str(label)) if isinstance(label, (str, np.str_)) else np.array(label, np.int64)
    probs = np.empty((), object)
    probs[()] = {c: float(v) for c, v in zip(key, p)}
    return label, probs


interpreter_row("l2_pool", _l2_pool, from_mil=_l2_pool_from_mil)
interpreter_row("non_zero", _non_zero)
interpreter_row("non_maximum_suppression", _nms, ("boxes", "scores"))
interpreter_row("sliding_windows", _sliding_windows)
interpreter_row("reshape_like", _reshape_like, ("x",), from_mil=_reshape_like_from_mil)
interpreter_row("random_categorical", _random_categorical, nondeterministic=True)
interpreter_row("slice_update", _slice_update, ("x", "update"), from_mil=_slice_update_from_mil)
interpreter_row("conv_quantized", _conv_quantized, ("x", "weight", "bias"), from_mil=_conv_quantized_from_mil)
interpreter_row("classify", _classify, ("probabilities",))
