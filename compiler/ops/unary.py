"""Unary elementwise ops: math functions (``exp``, ``log``, ``sqrt``, trigonometric and
hyperbolic functions, ``erf``, rounding, ...) and activations (``relu``, ``sigmoid``, ``silu``,
``gelu`` in its three modes, ``softplus``, ``clip``, ``leaky_relu``, ...), one table per kernel
kind: NumPy (:data:`_UNARY`), torch (:data:`_TORCH_UNARY`) and Core AI (:data:`_COREAI_UNARY`),
each op's row made by :func:`_unary`.

Semantics: coremltools MIL ``elementwise_unary.py`` and ``activation.py`` (iOS15 opset, unchanged
through iOS18 for these ops). Kernels keep the input dtype; the torch kernels do the same with
torch ops. :func:`erf` is tlc's own fp32 error function (NumPy has none).
"""
from __future__ import annotations

import math

import numpy as np
from .._lazy import F, torch

from ..errors import IRError
from ..dtypes import DTYPES
from .table import COMMUTES, register
from .common import FLOAT
from .parallel import map_rows


def _erf_table(step: int, limit: int) -> tuple[np.ndarray, ...]:
    """fp32 Taylor coefficients of erf at the grid points k/step, |k/step| <= limit: erf, erf',
    erf''/2 and erf'''/6 (erf' = 2/sqrt(pi) exp(-x^2), erf'' = -2x erf', erf''' = (4x^2 - 2) erf'),
    computed in float64 (:func:`math.erf`)."""
    x0 = np.arange(-limit * step, limit * step + 1) / step
    d1 = 2.0 / math.sqrt(math.pi) * np.exp(-x0 * x0)
    cols = (np.array([math.erf(v) for v in x0]), d1, -x0 * d1, (4 * x0 * x0 - 2) * d1 / 6)
    return tuple(c.astype(np.float32) for c in cols)


_ERF_STEP, _ERF_LIMIT = 256, 4
_ERF_T0, _ERF_T1, _ERF_T2, _ERF_T3 = _erf_table(_ERF_STEP, _ERF_LIMIT)


def erf(x: np.ndarray) -> np.ndarray:
    """Error function computed in fp32, returned in ``x``'s dtype (NumPy has no erf of its own).

    Table-driven (the method of P. T. P. Tang, "Table-driven implementation of the exponential
    function", ACM TOMS 15(2), 1989): x is clipped to [-4, 4] (beyond, erf rounds to +/-1 in fp32:
    erf(4) = 1 - 1.5e-8), split exactly into a grid point x0 = k/256 plus h, |h| <= 1/512 (x * 256
    and x - x0 are exact in fp32), and erf(x0 + h) is the third-order Taylor expansion at x0 from
    :func:`_erf_table` (truncation error < 1e-12). Measured against float64 ``torch.erf`` on 2e6
    points of [-6, 6] and 1e5 of [1e-30, 1]: absolute error <= 6e-8 (about 1 fp32 ulp near 1),
    relative error <= 2.1 ulp near 0. NaN stays NaN.
    """
    x = np.asarray(x)
    xc = np.clip(x.astype(np.float32, copy=False).reshape(-1), np.float32(-_ERF_LIMIT), np.float32(_ERF_LIMIT))
    k = xc * np.float32(_ERF_STEP)
    np.rint(k, out=k)
    h = k * np.float32(1.0 / _ERF_STEP)
    np.subtract(xc, h, out=h)  # a NaN input gives a NaN h, hence a NaN result
    np.fmax(k, np.float32(-_ERF_LIMIT * _ERF_STEP), out=k)  # NaN -> a valid table index
    i = k.astype(np.intp)
    i += _ERF_LIMIT * _ERF_STEP
    r = np.take(_ERF_T3, i)
    r *= h
    r += np.take(_ERF_T2, i)
    r *= h
    r += np.take(_ERF_T1, i)
    r *= h
    r += np.take(_ERF_T0, i)
    return r.reshape(x.shape).astype(x.dtype, copy=False)


def _sigmoid(x):
    # exp(-|x|) never overflows; both branches are exact rearrangements of 1/(1+exp(-x)).
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def _relu(x):
    # np.clip has a SIMD loop; np.maximum with a scalar runs ~3x slower (NumPy 2.4, measured).
    # Both keep NaN.
    if x.dtype.kind == "f":
        return np.clip(x, np.zeros((), x.dtype), np.asarray(np.inf, x.dtype))
    return np.maximum(x, np.zeros((), x.dtype))


def _silu(x):
    return x * _sigmoid(x)


def _softplus(x):
    return (np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))).astype(x.dtype, copy=False)


_SQRT_2_PI = np.float32(np.sqrt(2 / np.pi))


def _gelu_exact(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2).astype(x.dtype)))


def _gelu_tanh(x):
    # fp32 throughout (x*x*x, not x**3: NumPy's float power is ~300x slower than two multiplies)
    return 0.5 * x * (1 + np.tanh(_SQRT_2_PI.astype(x.dtype) * (x + np.asarray(0.044715, x.dtype) * (x * x * x))))


def _gelu_sigmoid(x):
    return x * _sigmoid(np.asarray(1.702, x.dtype) * x)


_GELU = {"EXACT": _gelu_exact, "TANH_APPROXIMATION": _gelu_tanh, "SIGMOID_APPROXIMATION": _gelu_sigmoid}


def _gelu(x, mode):
    """MIL ``gelu`` (activation.py) in ``mode`` EXACT (0.5 x (1 + erf(x / sqrt 2))),
    TANH_APPROXIMATION or SIGMOID_APPROXIMATION; computed tile by tile (:func:`map_rows`)."""
    if mode not in _GELU:
        raise IRError(f"gelu mode {mode!r} unknown")
    return map_rows(_GELU[mode], x)


# name -> (kernel(attrs, x), MIL emission kwargs from attrs, dtypes allowed, doc)
_UNARY = {
    "exp": (lambda a, x: np.exp(x), None, FLOAT),
    "log": (lambda a, x: np.log(x + np.asarray(a.get("epsilon", 0.0), x.dtype)), ("epsilon",), FLOAT),
    "sqrt": (lambda a, x: np.sqrt(x), None, FLOAT),
    "rsqrt": (lambda a, x: 1 / np.sqrt(x + np.asarray(a.get("epsilon", 0.0), x.dtype)), ("epsilon",), FLOAT),
    "inverse": (lambda a, x: 1 / (x + np.asarray(a.get("epsilon", 0.0), x.dtype)), ("epsilon",), FLOAT),
    "tanh": (lambda a, x: np.tanh(x), None, FLOAT),
    "sinh": (lambda a, x: np.sinh(x), None, FLOAT),
    "cosh": (lambda a, x: np.cosh(x), None, FLOAT),
    "tan": (lambda a, x: np.tan(x), None, FLOAT),
    "asin": (lambda a, x: np.arcsin(x), None, FLOAT),
    "acos": (lambda a, x: np.arccos(x), None, FLOAT),
    "atan": (lambda a, x: np.arctan(x), None, FLOAT),
    "atanh": (lambda a, x: np.arctanh(x), None, FLOAT),
    "exp2": (lambda a, x: np.exp2(x), None, FLOAT),
    "sigmoid": (lambda a, x: map_rows(_sigmoid, x), None, FLOAT),
    "relu": (lambda a, x: _relu(x), None, None),
    "erf": (lambda a, x: map_rows(erf, x), None, FLOAT),
    "abs": (lambda a, x: np.abs(x), None, None),
    "sign": (lambda a, x: np.sign(x), None, None),
    "sin": (lambda a, x: np.sin(x), None, FLOAT),
    "cos": (lambda a, x: np.cos(x), None, FLOAT),
    "floor": (lambda a, x: np.floor(x), None, FLOAT),
    "ceil": (lambda a, x: np.ceil(x), None, FLOAT),
    "round": (lambda a, x: np.round(x), None, FLOAT),
    "square": (lambda a, x: x * x, None, None),
    "logical_not": (lambda a, x: np.logical_not(x), None, ("bool",)),
    "silu": (lambda a, x: map_rows(_silu, x), None, FLOAT),
    "softplus": (lambda a, x: _softplus(x), None, FLOAT),
    "gelu": (lambda a, x: _gelu(x, a.get("mode", "EXACT")), ("mode",), FLOAT),
    "clip": (lambda a, x: np.clip(x, np.asarray(a["alpha"], x.dtype), np.asarray(a["beta"], x.dtype)), ("alpha", "beta"), FLOAT),
    "leaky_relu": (lambda a, x: np.where(x >= 0, x, x * np.asarray(a["alpha"], x.dtype)), ("alpha",), FLOAT),
    "sigmoid_hard": (
        lambda a, x: np.clip(x * np.asarray(a["alpha"], x.dtype) + np.asarray(a["beta"], x.dtype), 0, 1).astype(x.dtype),
        ("alpha", "beta"),
        FLOAT,
    ),
    # activation.py ops tlc's front-end does not produce (other converters' packages use them)
    "clamped_relu": (lambda a, x: np.minimum(np.where(x >= 0, x, x * np.asarray(a.get("alpha", 0.0), x.dtype)),
                                             np.asarray(a.get("beta", 6.0), x.dtype)), ("alpha", "beta"), FLOAT),
    "elu": (lambda a, x: np.where(x > 0, x, np.asarray(a.get("alpha", 1.0), x.dtype) * np.expm1(np.minimum(x, 0))),
            ("alpha",), FLOAT),
    "linear_activation": (lambda a, x: x * np.asarray(a["alpha"], x.dtype) + np.asarray(a.get("beta", 0.0), x.dtype),
                          ("alpha", "beta"), FLOAT),
    "relu6": (lambda a, x: np.clip(x, 0, 6).astype(x.dtype), None, FLOAT),
    "scaled_tanh": (lambda a, x: np.asarray(a.get("alpha", 1.0), x.dtype) * np.tanh(x * np.asarray(a.get("beta", 1.0), x.dtype)),
                    ("alpha", "beta"), FLOAT),
    "softsign": (lambda a, x: x / (1 + np.abs(x)), None, FLOAT),
    "threshold": (lambda a, x: np.maximum(x, np.asarray(a.get("alpha", 1.0), x.dtype)), ("alpha",), FLOAT),
    "thresholded_relu": (lambda a, x: np.where(x >= np.asarray(a.get("alpha", 1.0), x.dtype), x, 0).astype(x.dtype),
                         ("alpha",), FLOAT),
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
    "sinh": lambda a, x: torch.sinh(x),
    "cosh": lambda a, x: torch.cosh(x),
    "tan": lambda a, x: torch.tan(x),
    "asin": lambda a, x: torch.asin(x),
    "acos": lambda a, x: torch.acos(x),
    "atan": lambda a, x: torch.atan(x),
    "atanh": lambda a, x: torch.atanh(x),
    "exp2": lambda a, x: torch.exp2(x),
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
    "clamped_relu": lambda a, x: torch.clamp(torch.where(x >= 0, x, x * a.get("alpha", 0.0)), max=a.get("beta", 6.0)),
    "elu": lambda a, x: F.elu(x, a.get("alpha", 1.0)),
    "linear_activation": lambda a, x: x * a["alpha"] + a.get("beta", 0.0),
    "relu6": lambda a, x: F.relu6(x),
    "scaled_tanh": lambda a, x: a.get("alpha", 1.0) * torch.tanh(x * a.get("beta", 1.0)),
    "softsign": lambda a, x: F.softsign(x),
    "threshold": lambda a, x: torch.clamp(x, min=a.get("alpha", 1.0)),
    "thresholded_relu": lambda a, x: torch.where(x >= a.get("alpha", 1.0), x, torch.zeros_like(x)),
}


def _ca_eps(ctx, x, attrs, fn):
    eps = attrs.get("epsilon", 0.0)
    if eps:
        x = ctx.ca.broadcasting_add(x, ctx.const(np.asarray(eps, DTYPES[ctx.node.inputs[0].type.dtype])))
    return getattr(ctx.ca, fn)(x)


def _ca_scalar(ctx, v):
    """A scalar constant in the dtype of the node's first input."""
    return ctx.const(np.asarray(v, DTYPES[ctx.node.inputs[0].type.dtype]))


def _ca_gelu(ctx, attrs, x):
    mode = attrs.get("mode", "EXACT")
    if mode == "SIGMOID_APPROXIMATION":  # x * sigmoid(1.702 x)
        k = ctx.const(np.asarray(1.702, DTYPES[ctx.node.inputs[0].type.dtype]))
        return ctx.ca.broadcasting_mul(x, ctx.ca.sigmoid(ctx.ca.broadcasting_mul(x, k)))
    return ctx.ca.gelu(x, approximate="tanh" if mode == "TANH_APPROXIMATION" else "none")


def _ca_ge(ctx, x, v):
    """``x >= v`` as ``x > v or x == v`` (false for NaN, as NumPy's; ``not (v > x)`` would be true)."""
    c = _ca_scalar(ctx, v)
    return ctx.ca.broadcasting_or(ctx.ca.broadcasting_greater(x, c), ctx.ca.broadcasting_equal(x, c))


def _ca_affine(ctx, x, alpha, beta):
    return ctx.ca.broadcasting_add(ctx.ca.broadcasting_mul(x, _ca_scalar(ctx, alpha)), _ca_scalar(ctx, beta))


def _ca_floor(ctx, x):
    """``floor`` as Core AI ``broadcasting_floor_divide(x, 1)`` (Core AI has no floor op). That
    gives NaN for +-inf (coreai-core 1.0.0b3), so values at or beyond 2^mantissa bits (all
    integers already: 2^23 in fp32, 2^10 in fp16) and the infinities pass through unchanged."""
    big = 2.0 ** (10 if ctx.node.inputs[0].type.dtype == "fp16" else 23)
    whole = ctx.ca.broadcasting_greater(ctx.ca.abs_(x), _ca_scalar(ctx, big))
    return ctx.ca.broadcasting_where(whole, x, ctx.ca.broadcasting_floor_divide(x, _ca_scalar(ctx, 1.0)))


#: IR unary op -> its Core AI form ``f(ctx, attrs, x)``
_COREAI_UNARY = {
    **{n: (lambda n: lambda ctx, a, x: getattr(ctx.ca, n)(x))(n)
       for n in ("exp", "sqrt", "tanh", "sinh", "cosh", "tan", "asin", "acos", "atan", "atanh", "sigmoid", "relu",
                 "erf", "sin", "cos", "silu")},
    "abs": lambda ctx, a, x: ctx.ca.abs_(x),
    "round": lambda ctx, a, x: ctx.ca.round_(x),
    "logical_not": lambda ctx, a, x: ctx.ca.not_(x),
    "square": lambda ctx, a, x: ctx.ca.broadcasting_mul(x, x),
    "log": lambda ctx, a, x: _ca_eps(ctx, x, a, "log"),
    "rsqrt": lambda ctx, a, x: _ca_eps(ctx, x, a, "rsqrt"),
    "gelu": _ca_gelu,
    "leaky_relu": lambda ctx, a, x: ctx.ca.broadcasting_where(
        _ca_ge(ctx, x, 0.0), x, ctx.ca.broadcasting_mul(x, _ca_scalar(ctx, a["alpha"]))),
    "sign": lambda ctx, a, x: ctx.ca.broadcasting_sub(
        ctx.ca.cast(ctx.ca.broadcasting_greater(x, _ca_scalar(ctx, 0)), DTYPES[ctx.node.inputs[0].type.dtype].type),
        ctx.ca.cast(ctx.ca.broadcasting_greater(_ca_scalar(ctx, 0), x), DTYPES[ctx.node.inputs[0].type.dtype].type)),
    "relu6": lambda ctx, a, x: ctx.ca.broadcasting_minimum(ctx.ca.relu(x), _ca_scalar(ctx, 6.0)),
    "softsign": lambda ctx, a, x: ctx.ca.broadcasting_divide(x, ctx.ca.broadcasting_add(ctx.ca.abs_(x), _ca_scalar(ctx, 1.0))),
    "softplus": lambda ctx, a, x: ctx.ca.broadcasting_add(  # max(x, 0) + log(1 + exp(-|x|)): no overflow
        ctx.ca.relu(x), ctx.ca.log(ctx.ca.broadcasting_add(ctx.ca.exp(ctx.ca.broadcasting_mul(ctx.ca.abs_(x), _ca_scalar(ctx, -1.0))),
                                                           _ca_scalar(ctx, 1.0)))),
    "exp2": lambda ctx, a, x: ctx.ca.exp(ctx.ca.broadcasting_mul(x, _ca_scalar(ctx, math.log(2.0)))),
    "inverse": lambda ctx, a, x: ctx.ca.broadcasting_divide(_ca_scalar(ctx, 1.0), ctx.ca.broadcasting_add(
        x, _ca_scalar(ctx, a.get("epsilon", 0.0)))),
    "clip": lambda ctx, a, x: ctx.ca.broadcasting_maximum(
        ctx.ca.broadcasting_minimum(x, ctx.const(np.asarray(a["beta"], DTYPES[ctx.node.inputs[0].type.dtype]))),
        ctx.const(np.asarray(a["alpha"], DTYPES[ctx.node.inputs[0].type.dtype]))),
    "floor": lambda ctx, a, x: _ca_floor(ctx, x),
    "ceil": lambda ctx, a, x: ctx.ca.broadcasting_mul(_ca_floor(ctx, ctx.ca.broadcasting_mul(x, _ca_scalar(ctx, -1.0))),
                                                      _ca_scalar(ctx, -1.0)),
    "sigmoid_hard": lambda ctx, a, x: ctx.ca.broadcasting_maximum(ctx.ca.broadcasting_minimum(
        _ca_affine(ctx, x, a["alpha"], a["beta"]), _ca_scalar(ctx, 1.0)), _ca_scalar(ctx, 0.0)),
    "clamped_relu": lambda ctx, a, x: ctx.ca.broadcasting_minimum(ctx.ca.broadcasting_where(
        _ca_ge(ctx, x, 0.0), x, ctx.ca.broadcasting_mul(x, _ca_scalar(ctx, a.get("alpha", 0.0)))),
        _ca_scalar(ctx, a.get("beta", 6.0))),
    "elu": lambda ctx, a, x: ctx.ca.broadcasting_where(ctx.ca.broadcasting_greater(x, _ca_scalar(ctx, 0.0)), x,
                                                       _ca_affine(ctx, ctx.ca.exp(ctx.ca.broadcasting_minimum(
                                                           x, _ca_scalar(ctx, 0.0))), a.get("alpha", 1.0),
                                                           -a.get("alpha", 1.0))),
    "linear_activation": lambda ctx, a, x: _ca_affine(ctx, x, a["alpha"], a.get("beta", 0.0)),
    "scaled_tanh": lambda ctx, a, x: ctx.ca.broadcasting_mul(
        ctx.ca.tanh(ctx.ca.broadcasting_mul(x, _ca_scalar(ctx, a.get("beta", 1.0)))), _ca_scalar(ctx, a.get("alpha", 1.0))),
    "threshold": lambda ctx, a, x: ctx.ca.broadcasting_maximum(x, _ca_scalar(ctx, a.get("alpha", 1.0))),
    "thresholded_relu": lambda ctx, a, x: ctx.ca.broadcasting_where(_ca_ge(ctx, x, a.get("alpha", 1.0)), x,
                                                                    _ca_scalar(ctx, 0.0)),
}


#: unary ops of degree 1 for a positive scale: relu(s x) = s relu(x); leaky_relu's slope and abs keep s
_HOMOGENEOUS = ("relu", "leaky_relu", "abs")


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

    half = {"epsilon": "epsilon"} if "epsilon" in (attr_names or ()) else {}
    if name == "clip":
        half = {"alpha": "bound", "beta": "bound"}
    ca = _COREAI_UNARY.get(name)
    register(name, infer=infer, numpy=numpy_kernel, emit_mil=emit, elementwise="unary",
             torch=_TORCH_UNARY[name], half_attrs=half, scale=COMMUTES if name in _HOMOGENEOUS else None,
             emit_coreai=None if ca is None else (lambda ctx, attrs, ins, node, _f=ca: _f(ctx, attrs, ins[0])))


for _n, (_k, _a, _d) in _UNARY.items():
    _unary(_n, _k, _a, _d)


__all__ = ["erf"]
