"""Resampling: ``upsample_nearest_neighbor``.

Semantics: coremltools MIL ``image_resizing.py`` (iOS15): the last two axes of a rank >= 3 input
are scaled by ``scale_factor_height`` / ``scale_factor_width``; output sizes floor(in * scale).

The front-end uses this op for torch's nearest upsampling by integer factors (``upsample_nearest*``
with out = in * k: then torch's source index floor(dst * in / out) = floor(dst / k), exactly what
repeating every element k times gives). Every other interpolation (bilinear, bicubic, area,
antialiased, nearest to an arbitrary size, any ``align_corners``) is lowered to matmuls with
per-axis interpolation matrices that torch itself computes (:mod:`tlc.frontend.aten_nn`), so no
resampling rule of torch's is re-implemented here.
"""
from __future__ import annotations

import numpy as np
from .._lazy import torch

from ..errors import IRError
from ..dtypes import TensorType
from .table import COMMUTES, Reason, flops_none, mil_attr, register
from .common import FLOAT
from .index import ca_take

#: hollance/neural-engine docs/unsupported-layers.md (issues #1, #2): upsampling by more than 2x
#: may leave the ANE.
ANE_MAX_UPSAMPLE = 2


def _scales(attrs):
    return attrs.get("scale_factor_height", 1), attrs.get("scale_factor_width", 1)


def _infer_upsample_nn(in_types, attrs):
    x = in_types[0]
    if x.rank < 3 or x.dtype not in FLOAT:
        raise IRError(f"upsample_nearest_neighbor needs a float tensor of rank >= 3, got {x}")
    sh, sw = _scales(attrs)
    if sh <= 0 or sw <= 0:
        raise IRError(f"upsample_nearest_neighbor scale factors must be positive, got {sh}, {sw}")
    h, w = int(np.floor(x.shape[-2] * sh)), int(np.floor(x.shape[-1] * sw))
    return [TensorType(x.dtype, x.shape[:-2] + (h, w))]


def _src(n_in: int, n_out: int, scale: float) -> np.ndarray:
    return np.minimum(np.floor(np.arange(n_out) / scale).astype(np.int64), n_in - 1)


def _upsample_nn(attrs, x):
    """MIL ``upsample_nearest_neighbor`` (iOS15 image_resizing.py): output (i, j) reads input
    (floor(i / scale_h), floor(j / scale_w)): every element repeated scale times for integer
    scales (the fractional rule is not documented; floor(dst / scale) is assumed)."""
    sh, sw = _scales(attrs)
    h, w = x.shape[-2:]
    if float(sh).is_integer() and float(sw).is_integer():
        return np.repeat(np.repeat(x, int(sh), axis=-2), int(sw), axis=-1)
    oh, ow = int(np.floor(h * sh)), int(np.floor(w * sw))
    return x[..., _src(h, oh, sh)[:, None], _src(w, ow, sw)[None, :]]


def _t_upsample_nn(attrs, x):
    sh, sw = _scales(attrs)
    h, w = x.shape[-2:]
    if float(sh).is_integer() and float(sw).is_integer():
        return x.repeat_interleave(int(sh), dim=-2).repeat_interleave(int(sw), dim=-1)
    oh, ow = int(np.floor(h * sh)), int(np.floor(w * sw))
    ih = torch.from_numpy(_src(h, oh, sh)).to(x.device)
    iw = torch.from_numpy(_src(w, ow, sw)).to(x.device)
    return x.index_select(-2, ih).index_select(-1, iw)


def _ane_upsample(i, o, a):
    if max(_scales(a)) > ANE_MAX_UPSAMPLE:
        return Reason(f"upsampling by more than {ANE_MAX_UPSAMPLE}x is not run on the ANE "
                      "(hollance/neural-engine unsupported-layers.md)", "upsample_scale")
    return None


def _upsample_from_mil(v):
    attrs = {k: mil_attr(x) for k, x in v.items() if k != "x" and x is not None}
    return [v["x"]], attrs


def _emit_upsample_nn(ctx, attrs, ins, nm):
    def factor(v, which):  # int32 or fp32 (type domain U), never the fp16 of x
        if float(v).is_integer():
            return int(v)
        return ctx.mb.const(val=np.float32(v), name=f"{nm}_{which}")

    sh, sw = _scales(attrs)
    return ctx.mb.upsample_nearest_neighbor(x=ins[0], scale_factor_height=factor(sh, "sh"),
                                            scale_factor_width=factor(sw, "sw"), name=nm)


def _ca_upsample_nn(ctx, attrs, ins, node):
    """Nearest-neighbour upsampling in Core AI ops: a take along H and one along W of the same
    source indices as the NumPy kernel (:func:`_src`)."""
    x = ins[0]
    t = node.inputs[0].type
    rank = t.rank
    sh, sw = _scales(attrs)
    oh, ow = node.out.type.shape[-2:]
    for axis, n_in, n_out, sc in ((rank - 2, t.shape[-2], oh, sh), (rank - 1, t.shape[-1], ow, sw)):
        if n_out != n_in or sc != 1:
            x = ca_take(ctx, x, ctx.const(_src(n_in, n_out, sc).astype(np.int32)), axis, rank, 1)
    return x


register("upsample_nearest_neighbor", infer=_infer_upsample_nn, numpy=_upsample_nn, emit_mil=_emit_upsample_nn,
         emit_coreai=_ca_upsample_nn,
         ane=_ane_upsample, flops=flops_none, scale=COMMUTES, from_mil=_upsample_from_mil, torch=_t_upsample_nn)
