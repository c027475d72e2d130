"""Rows for MIL's weight-compression ops (``constexpr_*``) and activation ``quantize`` /
``dequantize``: packages compressed by ``coremltools.optimize.coreml`` (palettization, linear
quantization, pruning, and their joint forms) hold them. tlc's interpreter runs them; tlc's
front-end never produces them (``emit_mil=None``, rows marked ``interpreter_only``).

Semantics follow coremltools' op definitions, cited per kernel:
``coremltools/converters/mil/mil/ops/defs/iOS16/constexpr_ops.py`` (iOS16 forms: bit-packed
indices and masks, a ``shape`` input), ``iOS18/compression.py`` (iOS18 forms: sub-byte tensors,
per-block scales, per-group / vector LUTs, sparse+LUT and sparse+quantized joint forms) and
``iOS17/quantization_ops.py``. A row serves every opset that defines the op: the kernel tells
the iOS16 form from the iOS18 one by its inputs (``shape`` is only in the iOS16 form).

Sub-byte tensors (``int4``, ``uint1`` ... ``uint6``) reach the kernels unpacked, one element
per int8/uint8 (coremltools' milproto loader unpacks them: ``types.nptype_from_builtin`` maps
them to int8/uint8); iOS16's bit-packed ``uint8`` buffers are unpacked here (LSB first, the
order of coremltools' ``optimize._utils.pack_elements_into_bits``).

The interpreter evaluates every ``constexpr_*`` op once when it loads a program (their inputs
are constants by definition), so a compressed package costs its decompression once, not per
call. Tests: tests/test_mil_compression.py (each form against a float64 NumPy reference written
from the docstrings above, and coremltools-compressed packages against their uncompressed
originals).
"""
from __future__ import annotations

import numpy as np

from .mil_only import interpreter_row, tensor_inputs as _inputs


def _unpack_bits(packed, nbits: int, count: int) -> np.ndarray:
    """``count`` unsigned ``nbits``-bit integers from a uint8 buffer, least significant bit first
    (iOS16 constexpr_lut_to_dense ``indices``, constexpr_sparse_to_dense ``mask``)."""
    bits = np.unpackbits(np.asarray(packed).astype(np.uint8).ravel(), bitorder="little")[: count * nbits]
    if nbits == 1:
        return bits
    return (bits.reshape(count, nbits).astype(np.uint16) << np.arange(nbits, dtype=np.uint16)).sum(1).astype(np.uint8)


def _along(p, data_ndim: int, axis) -> np.ndarray:
    """A scale/zero point that is a scalar or a vector along ``axis`` (iOS16
    constexpr_affine_dequantize, iOS17 quantize/dequantize), shaped to broadcast over the data."""
    p = np.asarray(p)
    if p.ndim == 0 or axis is None:
        return p
    shape = [1] * data_ndim
    shape[int(axis) % data_ndim] = -1
    return p.reshape(shape)


def _blocks(p, shape) -> np.ndarray:
    """A per-block parameter of ``scale``'s shape repeated to ``shape``: block size
    ``shape[i] // p.shape[i]`` along each axis (iOS18 constexpr_blockwise_shift_scale)."""
    p = np.asarray(p)
    for axis, (d, s) in enumerate(zip(shape, p.shape)):
        if d != s:
            p = np.repeat(p, d // s, axis=axis)
    return p


def _affine_dequantize(attrs, q, zero_point, scale):
    """iOS16 ``constexpr_affine_dequantize``: scale * (quantized_data - zero_point), the scale and
    zero point scalars or vectors along ``axis``."""
    axis = attrs.get("axis")
    zp = _along(zero_point, q.ndim, axis).astype(np.float32)
    return (_along(scale, q.ndim, axis).astype(np.float32) * (q.astype(np.float32) - zp)).astype(np.float32)


def _shift_scale(data, scale, offset):
    out = data.astype(np.float32)
    if offset is not None:
        out = out - _blocks(offset, data.shape).astype(np.float32)
    return out * _blocks(scale, data.shape).astype(np.float32)


def _blockwise_shift_scale(attrs, data, scale):
    """iOS18 ``constexpr_blockwise_shift_scale``: scale[i0, j0, ...] * (data[i, j, ...] -
    offset[i0, j0, ...]) with i0 = i // block_size[0] ..., block_size[k] = data.shape[k] /
    scale.shape[k]; ``offset`` optional (int4/uint4/int8/uint8 or float)."""
    return _shift_scale(data, scale, attrs.get("offset"))


def _lut_dense(indices, lut, vector_axis):
    """iOS18 LUT lookup: ``lut`` [*G, 2^nbits, V] holds a table per block of indices (block size
    indices.shape[k] / G[k]); each index becomes V values laid out along ``vector_axis``."""
    k = indices.ndim
    groups, vsize = lut.shape[:k], lut.shape[-1]
    block = [d // g for d, g in zip(indices.shape, groups)]
    # the table each element reads: its block coordinate along each axis
    grid = np.ix_(*[np.arange(d) // b for d, b in zip(indices.shape, block)])
    vals = lut[grid + (indices.astype(np.intp),)]  # [*indices.shape, V]
    if vsize == 1:
        return vals[..., 0]
    axis = int(vector_axis) % k
    vals = np.moveaxis(vals, -1, axis + 1)  # [..., d_axis, V, ...]
    shape = list(indices.shape)
    shape[axis] *= vsize
    return vals.reshape(shape)


def _lut_to_dense(attrs, indices, lut):
    """``constexpr_lut_to_dense``. iOS16 (``shape`` given): ``indices`` are bit-packed uint8,
    nbits = log2(lut.size), output = lut[indices] reshaped to ``shape``. iOS18: ``indices`` a
    uint1...uint8 tensor, ``lut`` [*G, 2^nbits, V] per-group (and vector, along ``vector_axis``)
    tables; see :func:`_lut_dense`."""
    if "shape" in attrs:
        shape = tuple(int(d) for d in attrs["shape"])
        nbits = int(np.log2(lut.size))
        return lut.ravel()[_unpack_bits(indices, nbits, int(np.prod(shape)))].reshape(shape)
    return _lut_dense(indices, lut, attrs.get("vector_axis"))


def _scatter_mask(nonzero, mask) -> np.ndarray:
    """A dense tensor of ``mask``'s shape with ``nonzero`` (row-major) where mask is 1."""
    out = np.zeros(mask.shape, nonzero.dtype)
    out[mask != 0] = np.asarray(nonzero).ravel()
    return out


def _sparse_to_dense(attrs, nonzero_data, mask):
    """``constexpr_sparse_to_dense``: ``nonzero_data`` placed, in row-major order, where ``mask``
    is 1; zeros elsewhere. iOS16 (``shape`` given): ``mask`` is bit-packed uint8 (LSB first);
    iOS18: a uint1 tensor of the output's shape."""
    if "shape" in attrs:
        shape = tuple(int(d) for d in attrs["shape"])
        mask = _unpack_bits(mask, 1, int(np.prod(shape))).reshape(shape)
    return _scatter_mask(nonzero_data, mask)


def _lut_to_sparse(attrs, mask, nonzero_indices, lut):
    """iOS18 ``constexpr_lut_to_sparse``: the LUT lookup of :func:`_lut_to_dense` applied to the
    nonzero entries only; outputs (mask, values): the mask repeated V times along
    ``vector_axis`` for a vector LUT, and the looked-up values of its 1s in row-major order."""
    va = attrs.get("vector_axis")
    dense = _lut_dense(_scatter_mask(nonzero_indices, mask), lut, va)
    if lut.shape[-1] > 1:
        mask = np.repeat(mask, lut.shape[-1], axis=int(va) % mask.ndim)
    return mask.astype(np.uint8), dense[mask != 0].ravel()


def _sparse_blockwise_shift_scale(attrs, mask, nonzero, scale):
    """iOS18 ``constexpr_sparse_blockwise_shift_scale``: :func:`_blockwise_shift_scale` on the
    nonzero entries (the blocks laid over the dense layout); outputs (mask, values)."""
    dense = _shift_scale(_scatter_mask(nonzero, mask), scale, attrs.get("offset"))
    return mask.astype(np.uint8), dense[mask != 0].ravel()


def _constexpr_cast(attrs, source):
    """``constexpr_cast`` (iOS16, iOS18): the fp16 ``source_val`` as ``output_dtype`` (fp32)."""
    return source.astype(np.float32)


_QRANGE = {"int8": (-128, 127), "uint8": (0, 255)}


def _quantize(attrs, x, scale):
    """iOS17 ``quantize``: clip(round_half_even(x / scale) + zero_point) to ``output_dtype``'s
    range (int8 or uint8); scale / zero_point scalars or vectors along ``axis``
    (``optimize._utils.quantize_by_scale_and_zp``)."""
    axis = attrs.get("axis")
    q = np.around(x.astype(np.float32) / _along(scale, x.ndim, axis).astype(np.float32))
    if attrs.get("zero_point") is not None:
        q = q + _along(attrs["zero_point"], x.ndim, axis).astype(np.float32)
    lo, hi = _QRANGE[attrs["output_dtype"]]
    return np.clip(q, lo, hi).astype(np.dtype(attrs["output_dtype"]))


def _dequantize(attrs, x, scale):
    """iOS17 ``dequantize``: (input - zero_point) * scale, scale / zero_point scalars or vectors
    along ``axis``."""
    axis = attrs.get("axis")
    y = x.astype(np.float32)
    if attrs.get("zero_point") is not None:
        y = y - _along(attrs["zero_point"], x.ndim, axis).astype(np.float32)
    return y * _along(scale, x.ndim, axis).astype(np.float32)


interpreter_row("constexpr_affine_dequantize", _affine_dequantize, from_mil=_inputs("quantized_data", "zero_point", "scale"))
interpreter_row("constexpr_blockwise_shift_scale", _blockwise_shift_scale, from_mil=_inputs("data", "scale", optional=("offset",)))
interpreter_row("constexpr_lut_to_dense", _lut_to_dense, from_mil=_inputs("indices", "lut", optional=("shape",)))
interpreter_row("constexpr_sparse_to_dense", _sparse_to_dense, from_mil=_inputs("nonzero_data", "mask", optional=("shape",)))
interpreter_row("constexpr_lut_to_sparse", _lut_to_sparse, from_mil=_inputs("indices_mask", "indices_nonzero_data", "lut"))
interpreter_row("constexpr_sparse_blockwise_shift_scale", _sparse_blockwise_shift_scale,
     from_mil=_inputs("data_mask", "nonzero_data", "scale", optional=("offset",)))
interpreter_row("constexpr_cast", _constexpr_cast, from_mil=_inputs("source_val"))
interpreter_row("quantize", _quantize, from_mil=_inputs("input", "scale", optional=("zero_point",)))
interpreter_row("dequantize", _dequantize, from_mil=_inputs("input", "scale", optional=("zero_point",)))

#: MIL ops whose inputs are all constants: the interpreter evaluates them once, at load.
CONSTEXPR_OPS = frozenset(n for n in ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale",
                                      "constexpr_lut_to_dense", "constexpr_sparse_to_dense",
                                      "constexpr_lut_to_sparse", "constexpr_sparse_blockwise_shift_scale",
                                      "constexpr_cast"))
