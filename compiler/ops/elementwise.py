"""Elementwise ops: binary arithmetic/comparison/logical (NumPy broadcasting), ``cast``,
``select``. The unary math functions and activations (``clip`` among them) are in
:mod:`tlc.ops.unary`.

Semantics: coremltools MIL ``elementwise_binary.py``, ``elementwise_unary.py`` (``cast``) and
``control_flow.py`` (``select``), iOS15 opset, unchanged through iOS18 for these ops. Binary ops
broadcast like NumPy. Kernels keep the input dtype (NumPy 2 / NEP 50 keeps fp32 when mixing with
Python scalars). Torch kernels (``torch=`` of each row) do the same with torch ops; a Python-scalar
operand never changes a tensor's dtype in torch either.
"""
from __future__ import annotations

import numpy as np
from .._lazy import torch

from ..dtypes import TORCH, numpy_of
from ..errors import IRError
from ..dtypes import DTYPES, TensorType
from .table import COMMUTES, PositiveScale, flops_elementwise, register
from .common import FLOAT, broadcast_shape, same_dtype

# ------------------------------------------------------------------------------------ binary


#: IR binary op -> (coreai.authoring op, operands swapped): Core AI's broadcasting ops.
_COREAI_BINARY = {
    "add": ("broadcasting_add", False), "sub": ("broadcasting_sub", False), "mul": ("broadcasting_mul", False),
    "real_div": ("broadcasting_divide", False), "floor_div": ("broadcasting_floor_divide", False),
    "mod": ("broadcasting_modulo", False), "pow": ("broadcasting_pow", False),
    "maximum": ("broadcasting_maximum", False), "minimum": ("broadcasting_minimum", False),
    "equal": ("broadcasting_equal", False), "not_equal": ("broadcasting_not_equal", False),
    "greater": ("broadcasting_greater", False), "less": ("broadcasting_greater", True),
    "logical_and": ("broadcasting_and", False), "logical_or": ("broadcasting_or", False),
    "logical_xor": ("broadcasting_xor", False),
}


def _coreai_binary(name: str):
    if name in ("greater_equal", "less_equal"):  # x >= y == not (y > x)  (NaN compares false either way in torch)
        def emit(ctx, attrs, ins, node):
            x, y = ins if name == "greater_equal" else ins[::-1]
            return ctx.ca.not_(ctx.ca.broadcasting_greater(y, x))
        return emit
    op, swap = _COREAI_BINARY[name]

    def emit(ctx, attrs, ins, node):
        x, y = ins[::-1] if swap else ins
        return getattr(ctx.ca, op)(x, y)

    return emit


def _binary(name: str, fn, tfn, *, out_dtype=None, allowed=None, doc="", scale=None):
    def infer(in_types, attrs):
        if len(in_types) != 2:
            raise IRError(f"expects 2 inputs, got {len(in_types)}")
        dt = same_dtype(in_types, allowed)
        return [TensorType(out_dtype or dt, broadcast_shape(in_types))]

    def kernel(attrs, x, y):
        r = fn(x, y)
        return r.astype(DTYPES[out_dtype], copy=False) if out_dtype else r.astype(x.dtype, copy=False)

    kernel.__doc__ = doc or f"MIL ``{name}`` (elementwise_binary.py): broadcasting {name}(x, y)."

    def torch_kernel(attrs, x, y):
        return tfn(x, y)  # same-dtype operands (infer): torch keeps the dtype, comparisons give bool

    def emit(ctx, attrs, ins, nm):
        x, y = ins
        if x.dtype == types_bool() and not name.startswith("logical_"):
            # MIL's arithmetic and comparisons take fp16/fp32/int32 (iOS15 elementwise_binary.py):
            # bool operands are computed as int32 (nonzero is true), as torch does
            x = ctx.mb.cast(x=x, dtype="int32", name=nm + "_x")
            y = ctx.mb.cast(x=y, dtype="int32", name=nm + "_y")
            if out_dtype is None:  # a bool result of arithmetic: nonzero
                r = getattr(ctx.mb, name)(x=x, y=y, name=nm + "_int")
                return ctx.mb.cast(x=r, dtype="bool", name=nm)
        return getattr(ctx.mb, name)(x=x, y=y, name=nm)

    register(name, infer=infer, numpy=kernel, emit_mil=emit, mil_inputs=("x", "y"),
             torch=torch_kernel, elementwise="binary", emit_coreai=_coreai_binary(name), scale=scale)


def types_bool():
    """coremltools' MIL bool type (imported lazily: emission only)."""
    from coremltools.converters.mil.mil import types

    return types.bool


def _floor_div(x, y):
    return np.floor_divide(x, y)


def _real_div(x, y):
    return np.divide(x, y)


_binary("add", np.add, torch.deferred("add"), scale=COMMUTES)
_binary("sub", np.subtract, torch.deferred("sub"), scale=COMMUTES)
_binary("mul", np.multiply, torch.deferred("mul"), scale=PositiveScale("product", (0, 1)))
_binary("real_div", _real_div, torch.deferred("div"), allowed=FLOAT, doc="MIL ``real_div``: x / y in floating point.")
_binary("floor_div", _floor_div, torch.deferred("floor_divide"), doc="MIL ``floor_div``: floor(x / y).")
_binary("mod", np.mod, torch.deferred("remainder"),
        doc="MIL ``mod``: x - floor(x / y) * y (sign of y, like Python/torch.remainder).")
_binary("pow", np.power, torch.deferred("pow"), allowed=FLOAT)
_binary("maximum", np.maximum, torch.deferred("maximum"), scale=COMMUTES)
_binary("minimum", np.minimum, torch.deferred("minimum"), scale=COMMUTES)
for _n, _f, _t in [
    ("equal", np.equal, torch.deferred("eq")),
    ("not_equal", np.not_equal, torch.deferred("ne")),
    ("less", np.less, torch.deferred("lt")),
    ("less_equal", np.less_equal, torch.deferred("le")),
    ("greater", np.greater, torch.deferred("gt")),
    ("greater_equal", np.greater_equal, torch.deferred("ge")),
]:
    _binary(_n, _f, _t, out_dtype="bool")
for _n, _f, _t in [("logical_and", np.logical_and, torch.deferred("logical_and")), ("logical_or", np.logical_or, torch.deferred("logical_or")),
                   ("logical_xor", np.logical_xor, torch.deferred("logical_xor"))]:
    _binary(_n, _f, _t, out_dtype="bool", allowed=("bool",))


# -------------------------------------------------------------------------------- cast, select


def _infer_cast(in_types, attrs):
    dt = attrs["dtype"]
    if dt not in DTYPES:
        raise IRError(f"cast to unknown dtype {dt!r}")
    return [TensorType(dt, in_types[0].shape)]




def _cast(attrs, x):
    """MIL ``cast`` (elementwise_unary.py): convert to ``dtype``; float -> int truncates toward 0.
    The MIL interpreter also meets int8/uint8/int16/uint16 (:data:`tlc.dtypes.MIL_EXTRA_NUMPY`): a float is
    truncated, then wrapped as NumPy's ``astype`` does."""
    dt = attrs["dtype"]
    return x.astype(numpy_of(dt))


def _emit_cast(ctx, attrs, ins, nm):
    return ctx.mb.cast(x=ins[0], dtype=attrs["dtype"], name=nm)


register("cast", elementwise="unary", is_noop=lambda a, t: a["dtype"] == t[0].dtype, infer=_infer_cast, numpy=_cast, emit_mil=_emit_cast, flops=lambda i, o, a: 0,
         torch=lambda a, x: x.to(TORCH[a["dtype"]]),
         emit_coreai=lambda ctx, a, ins, node: ctx.ca.cast(ins[0], DTYPES[a["dtype"]].type))


def _infer_select(in_types, attrs):
    c, a, b = in_types
    if c.dtype != "bool":
        raise IRError(f"select condition must be bool, got {c.dtype}")
    dt = same_dtype([a, b])
    return [TensorType(dt, broadcast_shape(in_types))]


def _select(attrs, cond, a, b):
    """MIL ``select`` (control_flow.py): ``where(cond, a, b)`` with broadcasting."""
    return np.where(cond, a, b)


def _emit_select(ctx, attrs, ins, nm):
    # MIL's select infers its type from `a` and `b` only (iOS15 control_flow.py), so a branch
    # must already have the full output shape: broadcast a const branch, or add zeros.
    shape = ctx.node.out.type.shape
    a, b = ins[1], ins[2]
    if tuple(np.broadcast_shapes(tuple(a.shape), tuple(b.shape))) != shape:
        if a.val is not None:
            a = ctx.mb.const(val=np.broadcast_to(a.val, shape).copy(), name=nm + "_a")
        elif b.val is not None:
            b = ctx.mb.const(val=np.broadcast_to(b.val, shape).copy(), name=nm + "_b")
        elif ctx.node.out.type.dtype == "bool":
            a = ctx.mb.logical_or(x=a, y=np.zeros(shape, dtype=bool), name=nm + "_a")
        else:
            z = np.zeros(shape, dtype=np.float32 if ctx.node.out.type.dtype in FLOAT else np.int32)
            a = ctx.mb.add(x=a, y=z, name=nm + "_a")
    return ctx.mb.select(cond=ins[0], a=a, b=b, name=nm)


register("select", elementwise="ternary", scale=COMMUTES, infer=_infer_select, numpy=_select, emit_mil=_emit_select, mil_inputs=("cond", "a", "b"),
         torch=lambda a, cond, x, y: torch.where(cond, x, y),
         emit_coreai=lambda ctx, a, ins, node: ctx.ca.broadcasting_where(*ins))

__all__ = ["flops_elementwise"]
