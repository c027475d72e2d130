"""Elementwise ops: binary arithmetic/comparison/logical (NumPy broadcasting), unary math and
activations, ``cast``, ``select``, ``clip``.

Semantics: coremltools MIL ``elementwise_binary.py``, ``elementwise_unary.py`` and
``activation.py`` (iOS15 opset, unchanged through iOS18 for these ops). Binary ops broadcast like
NumPy. Kernels keep the input dtype (NumPy 2 / NEP 50 keeps fp32 when mixing with Python scalars).
Torch kernels (``torch=`` of each row) do the same with torch ops; a Python-scalar operand never
changes a tensor's dtype in torch either.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import IRError
from ..ir import DTYPES, TensorType
from . import flops_elementwise, register

FLOAT = ("fp32", "fp16")


def _broadcast(in_types) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*[t.shape for t in in_types]))
    except ValueError:
        raise IRError(
            "shapes " + " and ".join(str(list(t.shape)) for t in in_types) + " do not broadcast"
        ) from None


def _same_dtype(in_types, allowed=None) -> str:
    dts = {t.dtype for t in in_types}
    if len(dts) != 1:
        raise IRError(f"operands have different dtypes {sorted(dts)}; insert a cast")
    dt = dts.pop()
    if allowed and dt not in allowed:
        raise IRError(f"dtype {dt} not supported (expected one of {', '.join(allowed)})")
    return dt


# ------------------------------------------------------------------------------------ binary


#: IR dtype name -> torch dtype (the torch executor's tensors).
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "int32": torch.int32, "bool": torch.bool}


def _binary(name: str, fn, tfn, *, out_dtype=None, allowed=None, doc=""):
    def infer(in_types, attrs):
        if len(in_types) != 2:
            raise IRError(f"expects 2 inputs, got {len(in_types)}")
        dt = _same_dtype(in_types, allowed)
        return [TensorType(out_dtype or dt, _broadcast(in_types))]

    def kernel(attrs, x, y):
        r = fn(x, y)
        return r.astype(DTYPES[out_dtype], copy=False) if out_dtype else r.astype(x.dtype, copy=False)

    kernel.__doc__ = doc or f"MIL ``{name}`` (elementwise_binary.py): broadcasting {name}(x, y)."

    def torch_kernel(attrs, x, y):
        return tfn(x, y)  # same-dtype operands (infer): torch keeps the dtype, comparisons give bool

    def emit(ctx, attrs, ins, nm):
        return getattr(ctx.mb, name)(x=ins[0], y=ins[1], name=nm)

    register(name, infer=infer, numpy=kernel, emit_mil=emit, mil_inputs=("x", "y"),
             torch=torch_kernel)


def _floor_div(x, y):
    return np.floor_divide(x, y)


def _real_div(x, y):
    return np.divide(x, y)


_binary("add", np.add, torch.add)
_binary("sub", np.subtract, torch.sub)
_binary("mul", np.multiply, torch.mul)
_binary("real_div", _real_div, torch.div, allowed=FLOAT, doc="MIL ``real_div``: x / y in floating point.")
_binary("floor_div", _floor_div, torch.floor_divide, doc="MIL ``floor_div``: floor(x / y).")
_binary("mod", np.mod, torch.remainder,
        doc="MIL ``mod``: x - floor(x / y) * y (sign of y, like Python/torch.remainder).")
_binary("pow", np.power, torch.pow, allowed=FLOAT)
_binary("maximum", np.maximum, torch.maximum)
_binary("minimum", np.minimum, torch.minimum)
for _n, _f, _t in [
    ("equal", np.equal, torch.eq),
    ("not_equal", np.not_equal, torch.ne),
    ("less", np.less, torch.lt),
    ("less_equal", np.less_equal, torch.le),
    ("greater", np.greater, torch.gt),
    ("greater_equal", np.greater_equal, torch.ge),
]:
    _binary(_n, _f, _t, out_dtype="bool")
for _n, _f, _t in [("logical_and", np.logical_and, torch.logical_and), ("logical_or", np.logical_or, torch.logical_or),
                   ("logical_xor", np.logical_xor, torch.logical_xor)]:
    _binary(_n, _f, _t, out_dtype="bool", allowed=("bool",))


# ------------------------------------------------------------------------------------- unary


_ERFC_COEF = (0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418,
              0.37409196, 1.00002368, -1.26551223)


def erf(x: np.ndarray) -> np.ndarray:
    """Error function, computed in float64 and returned in ``x``'s dtype.

    Uses the Chebyshev-fitted erfc of Numerical Recipes (2nd ed., §6.2, ``erfcc``), fractional
    error < 1.2e-7 everywhere — below fp32 resolution (NumPy has no erf of its own) — and the
    Maclaurin series for |x| < 0.1, where 1 - erfc loses relative accuracy.
    """
    xd = x.astype(np.float64)
    z = np.abs(xd)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = np.full_like(t, _ERFC_COEF[0])
    for c in _ERFC_COEF[1:]:  # Horner, in place
        poly *= t
        poly += c
    poly -= z * z
    np.exp(poly, out=poly)
    poly *= t
    r = np.asarray(1.0 - poly)  # erf(|x|); asarray keeps 0-d inputs assignable
    small = z < 0.1
    if small.any():
        zs = z[small]
        z2 = zs * zs
        r[small] = 2.0 / np.sqrt(np.pi) * zs * (1 - z2 / 3 + z2 * z2 / 10 - z2 * z2 * z2 / 42)
    return np.copysign(r, xd).astype(x.dtype, copy=False)


def _sigmoid(x):
    # exp(-|x|) never overflows; both branches are exact rearrangements of 1/(1+exp(-x)).
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def _softplus(x):
    return (np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))).astype(x.dtype, copy=False)


def _gelu(x, mode):
    if mode == "EXACT":
        return (0.5 * x * (1 + erf(x / np.sqrt(2).astype(x.dtype)))).astype(x.dtype, copy=False)
    if mode == "TANH_APPROXIMATION":
        c = np.sqrt(2 / np.pi)
        return (0.5 * x * (1 + np.tanh(c * (x + 0.044715 * x**3)))).astype(x.dtype, copy=False)
    if mode == "SIGMOID_APPROXIMATION":
        return (x * _sigmoid(1.702 * x)).astype(x.dtype, copy=False)
    raise IRError(f"gelu mode {mode!r} unknown")


# name -> (kernel(attrs, x), MIL emission kwargs from attrs, dtypes allowed, doc)
_UNARY = {
    "exp": (lambda a, x: np.exp(x), None, FLOAT),
    "log": (lambda a, x: np.log(x + np.asarray(a.get("epsilon", 0.0), x.dtype)), ("epsilon",), FLOAT),
    "sqrt": (lambda a, x: np.sqrt(x), None, FLOAT),
    "rsqrt": (lambda a, x: 1 / np.sqrt(x + np.asarray(a.get("epsilon", 0.0), x.dtype)), ("epsilon",), FLOAT),
    "inverse": (lambda a, x: 1 / (x + np.asarray(a.get("epsilon", 0.0), x.dtype)), ("epsilon",), FLOAT),
    "tanh": (lambda a, x: np.tanh(x), None, FLOAT),
    "sigmoid": (lambda a, x: _sigmoid(x), None, FLOAT),
    "relu": (lambda a, x: np.maximum(x, np.zeros((), x.dtype)), None, None),
    "erf": (lambda a, x: erf(x), None, FLOAT),
    "abs": (lambda a, x: np.abs(x), None, None),
    "sign": (lambda a, x: np.sign(x), None, None),
    "sin": (lambda a, x: np.sin(x), None, FLOAT),
    "cos": (lambda a, x: np.cos(x), None, FLOAT),
    "floor": (lambda a, x: np.floor(x), None, FLOAT),
    "ceil": (lambda a, x: np.ceil(x), None, FLOAT),
    "round": (lambda a, x: np.round(x), None, FLOAT),
    "square": (lambda a, x: x * x, None, None),
    "logical_not": (lambda a, x: np.logical_not(x), None, ("bool",)),
    "silu": (lambda a, x: x * _sigmoid(x), None, FLOAT),
    "softplus": (lambda a, x: _softplus(x), None, FLOAT),
    "gelu": (lambda a, x: _gelu(x, a.get("mode", "EXACT")), ("mode",), FLOAT),
    "clip": (lambda a, x: np.clip(x, np.asarray(a["alpha"], x.dtype), np.asarray(a["beta"], x.dtype)), ("alpha", "beta"), FLOAT),
    "leaky_relu": (lambda a, x: np.where(x >= 0, x, x * np.asarray(a["alpha"], x.dtype)), ("alpha",), FLOAT),
    "sigmoid_hard": (
        lambda a, x: np.clip(x * np.asarray(a["alpha"], x.dtype) + np.asarray(a["beta"], x.dtype), 0, 1).astype(x.dtype),
        ("alpha", "beta"),
        FLOAT,
    ),
}


def _t_gelu(x, mode):
    if mode == "EXACT":
        return F.gelu(x)
    if mode == "TANH_APPROXIMATION":
        return F.gelu(x, approximate="tanh")
    if mode == "SIGMOID_APPROXIMATION":
        return x * torch.sigmoid(1.702 * x)
    raise IRError(f"gelu mode {mode!r} unknown")


#: name -> torch kernel(attrs, x), the same semantics as :data:`_UNARY`'s NumPy kernels. torch's
#: ``round`` rounds half to even like NumPy's; ``softplus`` uses torch's threshold 20 (above it,
#: x itself: equal to NumPy's formula in fp32 and fp16).
_TORCH_UNARY = {
    "exp": lambda a, x: torch.exp(x),
    "log": lambda a, x: torch.log(x + a.get("epsilon", 0.0)),
    "sqrt": lambda a, x: torch.sqrt(x),
    "rsqrt": lambda a, x: torch.rsqrt(x + a.get("epsilon", 0.0)),
    "inverse": lambda a, x: torch.reciprocal(x + a.get("epsilon", 0.0)),
    "tanh": lambda a, x: torch.tanh(x),
    "sigmoid": lambda a, x: torch.sigmoid(x),
    "relu": lambda a, x: torch.relu(x),
    "erf": lambda a, x: torch.erf(x),
    "abs": lambda a, x: torch.abs(x),
    "sign": lambda a, x: torch.sign(x),
    "sin": lambda a, x: torch.sin(x),
    "cos": lambda a, x: torch.cos(x),
    "floor": lambda a, x: torch.floor(x),
    "ceil": lambda a, x: torch.ceil(x),
    "round": lambda a, x: torch.round(x),
    "square": lambda a, x: x * x,
    "logical_not": lambda a, x: torch.logical_not(x),
    "silu": lambda a, x: F.silu(x),
    "softplus": lambda a, x: F.softplus(x),
    "gelu": lambda a, x: _t_gelu(x, a.get("mode", "EXACT")),
    "clip": lambda a, x: torch.clamp(x, a["alpha"], a["beta"]),
    "leaky_relu": lambda a, x: torch.where(x >= 0, x, x * a["alpha"]),
    "sigmoid_hard": lambda a, x: torch.clamp(x * a["alpha"] + a["beta"], 0, 1),
}


def _unary(name, kernel, attr_names, allowed):
    def infer(in_types, attrs):
        if len(in_types) != 1:
            raise IRError(f"expects 1 input, got {len(in_types)}")
        t = in_types[0]
        if allowed and t.dtype not in allowed:
            raise IRError(f"dtype {t.dtype} not supported (expected one of {', '.join(allowed)})")
        return [t]

    def numpy_kernel(attrs, x):
        return np.asarray(kernel(attrs, x)).astype(x.dtype, copy=False)

    numpy_kernel.__doc__ = f"MIL ``{name}`` (elementwise_unary.py / activation.py)."

    def emit(ctx, attrs, ins, nm):
        kw = {}
        for k in attr_names or ():
            if k in attrs:
                kw[k] = attrs[k]
        return getattr(ctx.mb, name)(x=ins[0], name=nm, **kw)

    register(name, infer=infer, numpy=numpy_kernel, emit_mil=emit,
             torch=_TORCH_UNARY[name])


for _n, (_k, _a, _d) in _UNARY.items():
    _unary(_n, _k, _a, _d)


# -------------------------------------------------------------------------------- cast, select


def _infer_cast(in_types, attrs):
    dt = attrs["dtype"]
    if dt not in DTYPES:
        raise IRError(f"cast to unknown dtype {dt!r}")
    return [TensorType(dt, in_types[0].shape)]


def _cast(attrs, x):
    """MIL ``cast`` (elementwise_unary.py): convert to ``dtype``; float -> int truncates toward 0."""
    return x.astype(DTYPES[attrs["dtype"]])


def _emit_cast(ctx, attrs, ins, nm):
    return ctx.mb.cast(x=ins[0], dtype=attrs["dtype"], name=nm)


register("cast", infer=_infer_cast, numpy=_cast, emit_mil=_emit_cast, flops=lambda i, o, a: 0,
         torch=lambda a, x: x.to(TORCH_DTYPES[a["dtype"]]))


def _infer_select(in_types, attrs):
    c, a, b = in_types
    if c.dtype != "bool":
        raise IRError(f"select condition must be bool, got {c.dtype}")
    dt = _same_dtype([a, b])
    return [TensorType(dt, _broadcast(in_types))]


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


register("select", infer=_infer_select, numpy=_select, emit_mil=_emit_select, mil_inputs=("cond", "a", "b"),
         torch=lambda a, cond, x, y: torch.where(cond, x, y))

__all__ = ["erf", "flops_elementwise", "TORCH_DTYPES"]
