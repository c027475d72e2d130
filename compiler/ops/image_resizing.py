"""Rows for MIL's image-resizing ops other than ``upsample_nearest_neighbor`` (which tlc emits:
:mod:`tlc.ops.resample`): ``resize_bilinear``, ``resize_nearest_neighbor``, ``upsample_bilinear``,
``resize`` (iOS17), ``crop``, ``crop_resize``, ``resample``, ``affine``. Interpreter only: tlc's
front-end lowers torch's interpolation to matmuls with torch-computed matrices.

Semantics: coremltools ``converters/mil/mil/ops/defs/iOS15/image_resizing.py`` (+ the iOS16 and
iOS17 versions), whose docstrings give the sampling grids this module implements:

* ``resize_bilinear`` / ``resize`` sampling modes (1-D, input size n, output size m):
  STRICT_ALIGN_CORNERS ``i (n-1)/(m-1)``; ALIGN_CORNERS the same, ``(n-1)/2`` for m = 1;
  DEFAULT ``i n/m``; OFFSET_CORNERS ``0.5 d + i d`` with ``d = max(1, n-1)/m``;
  UNALIGN_CORNERS ``(i + 0.5) n/m - 0.5``; every grid point clamped to [0, n-1], then linear
  interpolation between its two neighbours. The docstring's worked grids are the tests.
* ``upsample_bilinear``: ``align_corners`` True is STRICT_ALIGN_CORNERS, False (or
  ``half_pixel_centers``, iOS16) UNALIGN_CORNERS, output size floor(n * scale).
* Nearest neighbour (``resize_nearest_neighbor``, ``resize`` with NEAREST_NEIGHBOR): the input
  index floor(grid point) on the DEFAULT grid, i.e. floor(i n/m) (TensorFlow's legacy nearest
  resize, which coremltools' TF front-end maps onto this op); on the other grids the nearest
  index, round(grid point) with halves up.
* ``crop_resize`` is ``tf.image.crop_and_resize`` (its ``pad_value`` is TF's
  ``extrapolation_value``): the box [start, end] (normalized coordinates scaled by n-1, times
  ``spatial_scale``) sampled at ``start + i (end - start)/(m-1)`` (ALIGN_CORNERS, the mode the
  TF front-end uses; ``(start+end)/2`` for m = 1); the other modes apply resize_bilinear's grid
  to the box taken as an input of ``end - start + 1`` pixels. Samples outside the image are
  ``pad_value``. With an iOS15/16 ``roi`` of 5 entries (a batch index first) the result is
  [N, 1, C, h, w] as the docstring says; coremltools' type inference declares [N, B, C, h, w]
  there, so such a program with B > 1 fails the interpreter's shape check (it names the op).
* ``resample`` samples ``x`` at ``coordinates`` (x, y) = (w, h) like torch's ``grid_sample``:
  unnormalized, [-1, 1] or [0, 1] coordinates (``align_corners`` picks pixel centres or edges),
  bilinear or nearest (round half to even, as torch), and the padding of the docstring's 1-D
  examples: constant, border (clamp), reflection (numpy ``reflect``), symmetric (``symmetric``).
* ``affine`` maps each output pixel's normalized coordinates (align_corners: -1 and 1 at the
  corner pixels' centres) through [a0 a1 a2; b0 b1 b2] and resamples there (torch's
  ``affine_grid`` + ``grid_sample``).

Tests: tests/test_mil_resize.py (torch ``interpolate`` / ``grid_sample`` / ``affine_grid`` and
``torchvision``-free float64 NumPy references, fp32 and fp16).
"""
from __future__ import annotations

import numpy as np

from .table import mil_attr
from .mil_only import interpreter_row


def grid(n: int, m: int, mode: str) -> np.ndarray:
    """Sampling positions (float64, clamped to [0, n-1]) of an m-point output over an n-point
    input for a resize sampling ``mode`` (module docstring)."""
    i = np.arange(m, dtype=np.float64)
    mode = mode.upper()
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        g = i * ((n - 1) / (m - 1)) if m > 1 else np.full(m, (n - 1) / 2 if mode == "ALIGN_CORNERS" else 0.0)
    elif mode == "DEFAULT":
        g = i * (n / m)
    elif mode == "OFFSET_CORNERS":
        d = max(1, n - 1) / m
        g = 0.5 * d + i * d
    elif mode == "UNALIGN_CORNERS":
        g = (i + 0.5) * (n / m) - 0.5
    else:
        raise ValueError(f"unknown sampling_mode {mode!r}")
    return np.clip(g, 0, n - 1)


def _linear_matrix(pos: np.ndarray, n: int) -> np.ndarray:
    """[m, n] weights of linear interpolation at positions ``pos`` (inside [0, n-1])."""
    lo = np.clip(np.floor(pos).astype(int), 0, n - 1)
    hi = np.minimum(lo + 1, n - 1)
    w = pos - lo
    m = np.zeros((len(pos), n))
    np.add.at(m, (np.arange(len(pos)), lo), 1 - w)
    np.add.at(m, (np.arange(len(pos)), hi), w)
    return m


def _nearest_matrix(pos: np.ndarray, n: int, floor: bool) -> np.ndarray:
    idx = np.floor(pos) if floor else np.floor(pos + 0.5)
    idx = np.clip(idx.astype(int), 0, n - 1)
    m = np.zeros((len(pos), n))
    m[np.arange(len(pos)), idx] = 1.0
    return m


def _apply(x, mh, mw):
    """x [..., H, W] -> [..., m_h, m_w] through per-axis matrices (float64 accumulation)."""
    y = np.einsum("ph,...hw,qw->...pq", mh, x.astype(np.float64), mw)
    return y.astype(np.float32)


def _resize(x, h, w, mode: str, nearest: bool) -> np.ndarray:
    H, W = x.shape[-2:]
    if nearest:
        fl = mode.upper() == "DEFAULT"
        return _apply(x, _nearest_matrix(grid(H, h, mode), H, fl), _nearest_matrix(grid(W, w, mode), W, fl))
    return _apply(x, _linear_matrix(grid(H, h, mode), H), _linear_matrix(grid(W, w, mode), W))


def _resize_bilinear(attrs, x):
    """iOS15 ``resize_bilinear``: [*D, H, W] -> [*D, target_size_height, target_size_width]."""
    return _resize(x, int(attrs.get("target_size_height", 1)), int(attrs.get("target_size_width", 1)),
                   str(attrs.get("sampling_mode", "DEFAULT")), False)


def _resize_nearest_neighbor(attrs, x):
    """iOS15 ``resize_nearest_neighbor``: input index floor(i * H / target) per axis."""
    return _resize(x, int(attrs["target_size_height"]), int(attrs["target_size_width"]), "DEFAULT", True)


def _upsample_bilinear(attrs, x):
    """``upsample_bilinear`` (iOS15, iOS16 ``half_pixel_centers``): output floor(n * scale);
    align_corners (default True) samples STRICT_ALIGN_CORNERS, otherwise UNALIGN_CORNERS."""
    sh, sw = float(attrs.get("scale_factor_height", 1)), float(attrs.get("scale_factor_width", 1))
    align = bool(attrs.get("align_corners", True))
    mode = "STRICT_ALIGN_CORNERS" if align else "UNALIGN_CORNERS"
    if attrs.get("half_pixel_centers") is not None and not align:
        mode = "UNALIGN_CORNERS" if attrs["half_pixel_centers"] else "DEFAULT"
    H, W = x.shape[-2:]
    return _resize(x, int(np.floor(H * sh)), int(np.floor(W * sw)), mode, False)


def _resize_ios17(attrs, x, shape):
    """iOS17 ``resize``: the last ``resized_dims`` (1 or 2) axes take sizes from the right end of
    ``shape`` (0 keeps the input's size), interpolation LINEAR or NEAREST_NEIGHBOR."""
    k = int(attrs["resized_dims"])
    shape = [int(v) for v in np.asarray(shape).ravel()]
    sizes = list(x.shape)
    for j in range(1, k + 1):
        if shape[-j] != 0:
            sizes[-j] = shape[-j]
    mode = str(attrs.get("sampling_mode", "DEFAULT"))
    nearest = str(attrs.get("interpolation_mode", "LINEAR")).upper() == "NEAREST_NEIGHBOR"
    dt = x.dtype
    xf = x.astype(np.float32)
    if k == 1:
        y = _resize(xf[..., None, :], 1, sizes[-1], mode, nearest)[..., 0, :]
    else:
        y = _resize(xf, sizes[-2], sizes[-1], mode, nearest)
    return np.rint(y).astype(dt) if dt.kind in "iu" else y


def _crop(attrs, x):
    """iOS15 ``crop``: remove crop_height[0] rows from the top, crop_height[1] from the bottom,
    and crop_width likewise from the left and right."""
    (t, b), (l, r) = (tuple(int(v) for v in np.asarray(attrs[k]).ravel()) for k in ("crop_height", "crop_width"))
    H, W = x.shape[-2:]
    return np.ascontiguousarray(x[..., t:H - b, l:W - r])


def _box_positions(start, end, n, m, mode):
    if mode.upper() in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if m > 1:
            return start + np.arange(m) * (end - start) / (m - 1)
        return np.array([(start + end) / 2 if mode.upper() == "ALIGN_CORNERS" else start])
    length = end - start + 1
    i = np.arange(m, dtype=np.float64)
    if mode.upper() == "DEFAULT":
        return start + i * length / m
    if mode.upper() == "OFFSET_CORNERS":
        d = max(1, length - 1) / m
        return start + 0.5 * d + i * d
    return start + (i + 0.5) * length / m - 0.5


def _sample_linear_pad(img, ys, xs, pad):
    """Bilinear samples of img [C, H, W] at the grid ys x xs; pad outside [0, n-1]."""
    H, W = img.shape[-2:]
    out = np.empty(img.shape[:-2] + (len(ys), len(xs)))
    mh = _linear_matrix(np.clip(ys, 0, H - 1), H)
    mw = _linear_matrix(np.clip(xs, 0, W - 1), W)
    out[...] = np.einsum("ph,...hw,qw->...pq", mh, img.astype(np.float64), mw)
    inside = ((ys >= 0) & (ys <= H - 1))[:, None] & ((xs >= 0) & (xs <= W - 1))[None, :]
    return np.where(inside, out, pad)


def _crop_resize(attrs, x, boxes, box_indices=None):
    """``crop_resize``: iOS15/16 ``roi`` [N, 1, 4 or 5, 1, 1] (a leading batch index with 5) ->
    [N, B or 1, C, th, tw]; iOS17 ``boxes`` [N, 4] + ``box_indices`` [N] -> [N, C, th, tw]."""
    th, tw = int(attrs.get("target_height", 1)), int(attrs.get("target_width", 1))
    mode = str(attrs.get("sampling_mode", "DEFAULT"))
    coord = str(attrs.get("box_coordinate_mode", "CORNERS_HEIGHT_FIRST"))
    norm = bool(attrs.get("normalized_coordinates", False))
    scale = float(attrs.get("spatial_scale", 1.0))
    pad = float(attrs.get("pad_value", 0.0))
    Bn, C, H, W = x.shape
    ios17 = attrs.get("_ios17", False)
    if ios17:
        b = np.asarray(boxes, np.float64).reshape(-1, 4)
        idx = np.arange(len(b)) if box_indices is None else np.asarray(box_indices).astype(int).ravel()
        per = [[int(i)] for i in idx]
    else:
        r = np.asarray(boxes, np.float64).reshape(boxes.shape[0], -1)
        if r.shape[1] == 5:
            per, b = [[int(i)] for i in r[:, 0]], r[:, 1:]
        else:
            per, b = [list(range(Bn))] * len(r), r
    outs = []
    for box, imgs in zip(b, per):
        if coord == "CORNERS_HEIGHT_FIRST":
            y1, x1, y2, x2 = box
        elif coord == "CORNERS_WIDTH_FIRST":
            x1, y1, x2, y2 = box
        elif coord == "CENTER_SIZE_HEIGHT_FIRST":
            cy, cx, bh, bw = box
            y1, x1, y2, x2 = cy - bh / 2, cx - bw / 2, cy + bh / 2, cx + bw / 2
        else:  # CENTER_SIZE_WIDTH_FIRST
            cx, cy, bw, bh = box
            y1, x1, y2, x2 = cy - bh / 2, cx - bw / 2, cy + bh / 2, cx + bw / 2
        if norm:
            y1, y2, x1, x2 = y1 * (H - 1), y2 * (H - 1), x1 * (W - 1), x2 * (W - 1)
        y1, y2, x1, x2 = (v * scale for v in (y1, y2, x1, x2))
        ys, xs = _box_positions(y1, y2, H, th, mode), _box_positions(x1, x2, W, tw, mode)
        outs.append(np.stack([_sample_linear_pad(x[i], ys, xs, pad) for i in imgs]))
    y = np.stack(outs).astype(np.float32)  # [N, B or 1, C, th, tw]
    return y[:, 0] if ios17 else y


def _crop_resize_from_mil(vals):
    attrs = {k: mil_attr(v) for k, v in vals.items() if k not in ("x", "roi", "boxes", "box_indices") and v is not None}
    if "boxes" in vals:
        attrs["_ios17"] = True
        arrays = [vals["x"], vals["boxes"]] + ([vals["box_indices"]] if vals.get("box_indices") is not None else [])
        return arrays, attrs
    return [vals["x"], vals["roi"]], attrs


def _unnormalize(c, n, mode, align):
    if mode == "unnormalized":
        return c
    if mode == "normalized_minus_one_to_one":
        return (c + 1) / 2 * (n - 1) if align else ((c + 1) * n - 1) / 2
    if mode == "normalized_zero_to_one":
        return c * (n - 1) if align else c * n - 0.5
    raise ValueError(f"unknown coordinates_mode {mode!r}")


def _pad_index(i, n, mode):
    """Integer sample indices mapped into [0, n) by the padding mode; -1 marks 'constant'."""
    if mode == "constant":
        return np.where((i >= 0) & (i < n), i, -1)
    if mode == "border":
        return np.clip(i, 0, n - 1)
    if mode == "reflection":  # |1 2 3| -> 2 3 2 1 2 3 2 1 2 (edge not repeated)
        if n == 1:
            return np.zeros_like(i)
        p = 2 * (n - 1)
        j = np.mod(i, p)
        return np.where(j < n, j, p - j)
    if mode == "symmetric":  # |1 2 3| -> 3 2 1 1 2 3 3 2 1 (edge repeated)
        p = 2 * n
        j = np.mod(i, p)
        return np.where(j < n, j, p - 1 - j)
    raise ValueError(f"unknown padding_mode {mode!r}")


def _sample(x, px, py, sampling, padding, pad_value):
    """x [B, C, H, W] sampled at pixel coordinates px, py [B, Ho, Wo] -> [B, C, Ho, Wo] (float64)."""
    Bn, C, H, W = x.shape
    xf = x.astype(np.float64)
    b = np.arange(Bn)[:, None, None]

    def tap(iy, ix):
        jy, jx = _pad_index(iy, H, padding), _pad_index(ix, W, padding)
        ok = (jy >= 0) & (jx >= 0)
        v = xf[b, :, np.maximum(jy, 0), np.maximum(jx, 0)]  # [B, Ho, Wo, C]
        return np.where(ok[..., None], v, pad_value)

    if sampling == "nearest":
        out = tap(np.rint(py).astype(int), np.rint(px).astype(int))
    else:
        x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
        wx, wy = (px - x0)[..., None], (py - y0)[..., None]
        out = (tap(y0, x0) * (1 - wx) * (1 - wy) + tap(y0, x0 + 1) * wx * (1 - wy)
               + tap(y0 + 1, x0) * (1 - wx) * wy + tap(y0 + 1, x0 + 1) * wx * wy)
    return np.moveaxis(out, -1, 1)


def _resample(attrs, x, coordinates):
    """``resample`` (iOS15/16/17): x [B, C, H, W] at coordinates [B, Ho, Wo, 2] ((x, y) order)."""
    mode, align = str(attrs["coordinates_mode"]), bool(attrs["align_corners"])
    c = np.asarray(coordinates, np.float64)
    H, W = x.shape[-2:]
    px, py = _unnormalize(c[..., 0], W, mode, align), _unnormalize(c[..., 1], H, mode, align)
    return _sample(x, px, py, str(attrs["sampling_mode"]), str(attrs["padding_mode"]),
                   float(attrs.get("padding_value", 0.0))).astype(np.float32)


def _affine(attrs, x, transform_matrix):
    """iOS15 ``affine``: output (w, h) at normalized coordinates (x, y) samples the input at
    (a0 x + a1 y + a2, b0 x + b1 y + b2); one matrix per batch or one for all."""
    ho, wo = int(attrs["output_height"]), int(attrs["output_width"])
    mode, align = str(attrs["coordinates_mode"]), bool(attrs["align_corners"])
    Bn, _, H, W = x.shape
    t = np.asarray(transform_matrix, np.float64).reshape(-1, 6)
    t = np.broadcast_to(t, (Bn, 6))

    def norm_coords(n):
        i = np.arange(n, dtype=np.float64)
        if mode == "normalized_minus_one_to_one":
            return (2 * i / (n - 1) - 1 if n > 1 else np.zeros(1)) if align else (2 * i + 1) / n - 1
        if mode == "normalized_zero_to_one":
            return (i / (n - 1) if n > 1 else np.zeros(1)) if align else (i + 0.5) / n
        return i

    gx, gy = np.meshgrid(norm_coords(wo), norm_coords(ho))  # [Ho, Wo]
    cx = t[:, 0, None, None] * gx + t[:, 1, None, None] * gy + t[:, 2, None, None]
    cy = t[:, 3, None, None] * gx + t[:, 4, None, None] * gy + t[:, 5, None, None]
    px, py = _unnormalize(cx, W, mode, align), _unnormalize(cy, H, mode, align)
    return _sample(x, px, py, str(attrs["sampling_mode"]), str(attrs["padding_mode"]),
                   float(attrs.get("padding_value", 0.0))).astype(np.float32)


interpreter_row("resize_bilinear", _resize_bilinear)
interpreter_row("resize_nearest_neighbor", _resize_nearest_neighbor)
interpreter_row("upsample_bilinear", _upsample_bilinear)
interpreter_row("resize", _resize_ios17, ("x", "shape"))
interpreter_row("crop", _crop)
interpreter_row("crop_resize", _crop_resize, from_mil=_crop_resize_from_mil)
interpreter_row("resample", _resample, ("x", "coordinates"))
interpreter_row("affine", _affine, ("x", "transform_matrix"))
