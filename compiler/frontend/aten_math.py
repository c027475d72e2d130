"""ATen -> IR lowerings of math MIL lacks as one op, written as short decompositions into ops it has
(registered into :data:`tlc.frontend.aten.LOWERINGS`): inverse hyperbolic functions, accurate
``log1p`` / ``expm1``, ``trunc``, ``atan2``, ``fmod``, IEEE predicates, norms, variances,
log-softmax, tensor-bounded clamps, boolean reductions and the training-mode normalizations.

Each decomposition follows the formula named in its docstring; accuracy claims are for fp32 and
are checked against torch eager by benchmarks/bench_opinfo.py and tests/test_coverage_ops.py.
"""
from __future__ import annotations

import math

import torch

from ..errors import UnsupportedOpError
from .common import Const, lower, norm_axis, operand, shape_of

_FLOAT = ("fp32", "fp16")


def _n(L, tag):
    return f"{L.node.name}_{tag}"


def _f(L, x):
    """``x`` in the node's (first) float result dtype."""
    val = L.node.meta.get("val")
    return L.cast(x, L.out_type(0 if isinstance(val, (tuple, list)) else None).dtype)


def _c(L, v, dt):
    return L.scalar(v, dt)


for _name, _op in [("sinh", "sinh"), ("cosh", "cosh"), ("tan", "tan"), ("asin", "asin"), ("acos", "acos"),
                   ("atan", "atan"), ("atanh", "atanh"), ("exp2", "exp2"), ("square", "square")]:
    def _mk(op):
        def fn(L, x):
            return L.add(op, [_f(L, x)])

        return fn

    lower(f"aten.{_name}.default")(_mk(_op))


@lower("aten.asinh.default")
def _asinh(L, x):
    """asinh(x) = sign(x) log(|x| + sqrt(x^2 + 1)) (odd symmetry keeps negative x accurate)."""
    x = _f(L, x)
    dt = x.type.dtype
    a = L.add("abs", [x], name=_n(L, "abs"))
    r = L.add("sqrt", [L.add("add", [L.add("mul", [a, a], name=_n(L, "sq")), _c(L, 1.0, dt)], name=_n(L, "sq1"))],
              name=_n(L, "root"))
    lg = L.add("log", [L.add("add", [a, r], name=_n(L, "sum"))], {"epsilon": 0.0}, name=_n(L, "log"))
    return L.add("mul", [L.add("sign", [x], name=_n(L, "sign")), lg])


@lower("aten.acosh.default")
def _acosh(L, x):
    """acosh(x) = log(x + sqrt(x^2 - 1)) for x >= 1 (NaN below, as torch)."""
    x = _f(L, x)
    dt = x.type.dtype
    r = L.add("sqrt", [L.add("sub", [L.add("mul", [x, x], name=_n(L, "sq")), _c(L, 1.0, dt)], name=_n(L, "sq1"))],
              name=_n(L, "root"))
    return L.add("log", [L.add("add", [x, r], name=_n(L, "sum"))], {"epsilon": 0.0})


def _log_scaled(base: float):
    def fn(L, x):
        x = _f(L, x)
        lg = L.add("log", [x], {"epsilon": 0.0}, name=_n(L, "ln"))
        return L.add("mul", [lg, _c(L, 1.0 / math.log(base), x.type.dtype)])

    fn.__doc__ = f"log_{base:g}(x) = ln(x) / ln({base:g})."
    return fn


lower("aten.log2.default")(_log_scaled(2.0))
lower("aten.log10.default")(_log_scaled(10.0))


@lower("aten.log1p.default")
def _log1p(L, x):
    """log1p(x) without the cancellation of log(1 + x) for small x (D. Goldberg, "What every
    computer scientist should know about floating-point arithmetic", ACM Comput. Surv. 1991,
    Theorem 4): u = 1 + x; x if u == 1 else log(u) * x / (u - 1); +inf stays +inf."""
    x = _f(L, x)
    dt = x.type.dtype
    u = L.add("add", [x, _c(L, 1.0, dt)], name=_n(L, "u"))
    lg = L.add("log", [u], {"epsilon": 0.0}, name=_n(L, "lnu"))
    q = L.add("real_div", [L.add("mul", [lg, x], name=_n(L, "num")), L.add("sub", [u, _c(L, 1.0, dt)], name=_n(L, "den"))],
              name=_n(L, "q"))
    one = L.add("equal", [u, _c(L, 1.0, dt)], name=_n(L, "one"))
    y = L.add("select", [one, x, q], name=_n(L, "small"))
    inf = L.add("equal", [x, _c(L, float("inf"), dt)], name=_n(L, "inf"))
    return L.add("select", [inf, x, y])


@lower("aten.expm1.default")
def _expm1(L, x):
    """expm1(x) without the cancellation of exp(x) - 1 (W. Kahan's formula, Goldberg 1991):
    u = exp(x); x if u == 1; -1 if u - 1 == -1; else (u - 1) * x / log(u); +inf for u = +inf."""
    x = _f(L, x)
    dt = x.type.dtype
    u = L.add("exp", [x], name=_n(L, "u"))
    um1 = L.add("sub", [u, _c(L, 1.0, dt)], name=_n(L, "um1"))
    q = L.add("real_div", [L.add("mul", [um1, x], name=_n(L, "num")),
                           L.add("log", [u], {"epsilon": 0.0}, name=_n(L, "lnu"))], name=_n(L, "q"))
    y = L.add("select", [L.add("equal", [u, _c(L, 1.0, dt)], name=_n(L, "one")), x, q], name=_n(L, "small"))
    y = L.add("select", [L.add("equal", [um1, _c(L, -1.0, dt)], name=_n(L, "neg")), um1, y], name=_n(L, "big_neg"))
    return L.add("select", [L.add("equal", [u, _c(L, float("inf"), dt)], name=_n(L, "inf")), u, y])


def trunc_value(L, x, tag="trunc"):
    """trunc(x) = sign(x) * floor(|x|) (exact)."""
    a = L.add("floor", [L.add("abs", [x], name=_n(L, tag + "_abs"))], name=_n(L, tag + "_floor"))
    return L.add("mul", [L.add("sign", [x], name=_n(L, tag + "_sign")), a], name=_n(L, tag))


@lower("aten.trunc.default", "aten.fix.default")
def _trunc(L, x):
    x = L.v(x)
    if x.type.dtype not in _FLOAT:
        return L.add("identity", [x])
    return trunc_value(L, x, "t")


@lower("aten.frac.default")
def _frac(L, x):
    x = L.v(x)
    return L.add("sub", [x, trunc_value(L, x)])


@lower("aten.round.decimals")
def _round_decimals(L, x, *, decimals=0):
    """torch's rule: round(x * 10^d) / 10^d for d >= 0, round(x / 10^-d) * 10^-d for d < 0
    (half to even, like MIL ``round``)."""
    x = _f(L, x)
    dt = x.type.dtype
    p = 10.0 ** abs(decimals)
    if decimals >= 0:
        r = L.add("round", [L.add("mul", [x, _c(L, p, dt)], name=_n(L, "scaled"))], name=_n(L, "r"))
        return L.add("real_div", [r, _c(L, p, dt)])
    r = L.add("round", [L.add("real_div", [x, _c(L, p, dt)], name=_n(L, "scaled"))], name=_n(L, "r"))
    return L.add("mul", [r, _c(L, p, dt)])


@lower("aten.isnan.default")
def _isnan(L, x):
    x = L.v(x)
    if x.type.dtype not in _FLOAT:
        return Const(torch.zeros(x.type.shape, dtype=torch.bool), _n(L, "false"))
    return L.add("not_equal", [x, x])


@lower("aten.isinf.default")
def _isinf(L, x):
    x = L.v(x)
    if x.type.dtype not in _FLOAT:
        return Const(torch.zeros(x.type.shape, dtype=torch.bool), _n(L, "false"))
    return L.add("equal", [L.add("abs", [x], name=_n(L, "abs")), _c(L, float("inf"), x.type.dtype)])


@lower("aten.isposinf.default", "aten.isneginf.default")
def _is_signed_inf(L, x):
    x = L.v(x)
    if x.type.dtype not in _FLOAT:
        return Const(torch.zeros(x.type.shape, dtype=torch.bool), _n(L, "false"))
    v = float("inf") if "posinf" in str(L.node.target) else float("-inf")
    return L.add("equal", [x, _c(L, v, x.type.dtype)])


@lower("aten.isfinite.default")
def _isfinite(L, x):
    x = L.v(x)
    if x.type.dtype not in _FLOAT:
        return Const(torch.ones(x.type.shape, dtype=torch.bool), _n(L, "true"))
    return L.add("less", [L.add("abs", [x], name=_n(L, "abs")), _c(L, float("inf"), x.type.dtype)])


@lower("aten.signbit.default")
def _signbit(L, x):
    """x < 0, or x == -0.0 (1 / -0.0 = -inf): the IEEE sign bit for every non-NaN value."""
    x = L.v(x)
    dt = x.type.dtype
    if dt not in _FLOAT:
        return L.add("less", [x, _c(L, 0, dt)])
    neg = L.add("less", [x, _c(L, 0.0, dt)], name=_n(L, "neg"))
    zero = L.add("equal", [x, _c(L, 0.0, dt)], name=_n(L, "zero"))
    inv = L.add("inverse", [x], {"epsilon": 0.0}, name=_n(L, "inv"))
    negzero = L.add("logical_and", [zero, L.add("less", [inv, _c(L, 0.0, dt)], name=_n(L, "ninf"))], name=_n(L, "nz"))
    return L.add("logical_or", [neg, negzero])


@lower("aten.erfc.default")
def _erfc(L, x):
    """erfc(x) = 1 - erf(x) (absolute error ~1 ulp of 1, i.e. <= 6e-8)."""
    x = _f(L, x)
    return L.add("sub", [_c(L, 1.0, x.type.dtype), L.add("erf", [x], name=_n(L, "erf"))])


@lower("aten.atan2.default")
def lower_atan2(L, y, x):
    """atan2(y, x): atan(y / x) with the quadrant fixed by the signs (+/-pi for x < 0; +/-pi/2 for
    x == 0, y != 0; 0 at the origin, as torch's +0 cases)."""
    dt = L.out_type().dtype
    y, x = operand(L, y, dt), operand(L, x, dt)
    base = L.add("atan", [L.add("real_div", [y, x], name=_n(L, "ratio"))], name=_n(L, "atan"))
    xneg = L.add("less", [x, _c(L, 0.0, dt)], name=_n(L, "xneg"))
    yneg = L.add("less", [y, _c(L, 0.0, dt)], name=_n(L, "yneg"))
    shift = L.add("select", [yneg, _c(L, -math.pi, dt), _c(L, math.pi, dt)], name=_n(L, "pi"))
    r = L.add("select", [xneg, L.add("add", [base, shift], name=_n(L, "turn")), base], name=_n(L, "quad"))
    xz = L.add("equal", [x, _c(L, 0.0, dt)], name=_n(L, "xz"))
    half = L.add("select", [yneg, _c(L, -math.pi / 2, dt), _c(L, math.pi / 2, dt)], name=_n(L, "half"))
    yz = L.add("equal", [y, _c(L, 0.0, dt)], name=_n(L, "yz"))
    axis = L.add("select", [yz, L.add("select", [xneg, shift, _c(L, 0.0, dt)], name=_n(L, "origin")), half],
                 name=_n(L, "axis"))
    return L.add("select", [xz, axis, r])


@lower("aten.hypot.default")
def _hypot(L, a, b):
    dt = L.out_type().dtype
    a, b = operand(L, a, dt), operand(L, b, dt)
    s = L.add("add", [L.add("mul", [a, a], name=_n(L, "a2")), L.add("mul", [b, b], name=_n(L, "b2"))], name=_n(L, "s"))
    return L.add("sqrt", [s])


@lower("aten.copysign.Tensor", "aten.copysign.Scalar")
def _copysign(L, a, b):
    dt = L.out_type().dtype
    a, b = operand(L, a, dt), operand(L, b, dt)
    neg = _signbit_of(L, b)
    mag = L.add("abs", [a], name=_n(L, "abs"))
    return L.add("select", [neg, L.add("mul", [mag, _c(L, -1.0, dt)], name=_n(L, "negmag")), mag])


def _signbit_of(L, v):
    dt = v.type.dtype
    zero = L.add("equal", [v, _c(L, 0.0, dt)], name=_n(L, "bz"))
    inv = L.add("inverse", [v], {"epsilon": 0.0}, name=_n(L, "binv"))
    return L.add("logical_or", [L.add("less", [v, _c(L, 0.0, dt)], name=_n(L, "bneg")),
                                L.add("logical_and", [zero, L.add("less", [inv, _c(L, 0.0, dt)], name=_n(L, "bni"))],
                                      name=_n(L, "bnz"))], name=_n(L, "bsign"))


@lower("aten.fmod.Tensor", "aten.fmod.Scalar")
def _fmod(L, a, b):
    """C's fmod: a - trunc(a / b) * b (the sign of a; remainder is torch.remainder)."""
    dt = L.out_type().dtype
    a, b = operand(L, a, dt), operand(L, b, dt)
    if dt in _FLOAT:
        q = trunc_value(L, L.add("real_div", [a, b], name=_n(L, "q")))
    else:  # integer: trunc division from floor division on magnitudes
        qa = L.add("floor_div", [L.add("abs", [a], name=_n(L, "aa")), L.add("abs", [b], name=_n(L, "ab"))], name=_n(L, "qa"))
        sgn = L.add("mul", [L.add("sign", [a], name=_n(L, "sa")), L.add("sign", [b], name=_n(L, "sb"))], name=_n(L, "sab"))
        q = L.add("mul", [qa, sgn], name=_n(L, "q"))
    return L.add("sub", [a, L.add("mul", [q, b], name=_n(L, "qb"))])


@lower("aten.div.Tensor_mode", "aten.div.Scalar_mode")
def _div_mode(L, a, b, *, rounding_mode=None):
    dt = L.out_type().dtype
    x, y = operand(L, a, dt), operand(L, b, dt)
    if rounding_mode is None:
        return L.add("real_div", [x, y])
    if rounding_mode == "floor":
        return L.add("floor_div", [x, y])
    if dt in _FLOAT:
        return trunc_value(L, L.add("real_div", [x, y], name=_n(L, "q")), "t")
    qa = L.add("floor_div", [L.add("abs", [x], name=_n(L, "aa")), L.add("abs", [y], name=_n(L, "ab"))], name=_n(L, "qa"))
    sgn = L.add("mul", [L.add("sign", [x], name=_n(L, "sa")), L.add("sign", [y], name=_n(L, "sb"))], name=_n(L, "sab"))
    return L.add("mul", [qa, sgn])


@lower("aten.pow.Scalar")
def _pow_scalar(L, base, exponent):
    dt = L.out_type().dtype
    return L.add("pow", [operand(L, base, dt), operand(L, exponent, dt)])


@lower("aten.bitwise_left_shift.Tensor_Scalar", "aten.bitwise_right_shift.Tensor_Scalar",
       "aten.__lshift__.Scalar", "aten.__rshift__.Scalar")
def _shift(L, x, s):
    """Shifts by a constant: x * 2^s / floor(x / 2^s) (int32 two's complement, as torch)."""
    dt = L.out_type().dtype
    if dt in _FLOAT or not isinstance(s, int) or not 0 <= s < 31:
        raise UnsupportedOpError("shift by a tensor or out-of-range amount has no MIL form")
    op = "mul" if "left" in str(L.node.target) or "lshift" in str(L.node.target) else "floor_div"
    return L.add(op, [L.cast(x, dt), _c(L, 2 ** s, dt)])


@lower("aten.clamp.Tensor")
def _clamp_tensor(L, x, min=None, max=None):
    dt = L.out_type().dtype
    y = L.cast(x, dt)
    if min is not None:
        y = L.add("maximum", [y, operand(L, min, dt)], name=_n(L, "lo"))
    if max is not None:
        y = L.add("minimum", [y, operand(L, max, dt)])
    return y if (min is not None or max is not None) else L.add("identity", [y])


def _red_axes(x, dim):
    r = x.type.rank
    if dim in (None, [], ()):
        return tuple(range(r))
    return tuple(sorted({norm_axis(d, r) for d in (dim if isinstance(dim, (list, tuple)) else [dim])}))


def _bool_reduce(op):
    def fn(L, x, dim=None, keepdim=False):
        x = L.v(x)
        if x.type.rank == 0:
            return L.cast(x, "bool")
        t = L.add("not_equal", [x, _c(L, 0, x.type.dtype)], name=_n(L, "nz")) if x.type.dtype != "bool" else x
        i = L.add(op, [L.cast(t, "int32")], {"axes": _red_axes(x, dim), "keep_dims": bool(keepdim)}, name=_n(L, "red"))
        return L.add("cast", [i], {"dtype": "bool"})

    fn.__doc__ = f"``{op}`` of (x != 0) as int32 (MIL reductions have no bool domain)."
    return fn


lower("aten.any.default", "aten.any.dim", "aten.any.dims")(_bool_reduce("reduce_max"))
lower("aten.all.default", "aten.all.dim", "aten.all.dims")(_bool_reduce("reduce_min"))


@lower("aten.count_nonzero.dim_IntList", "aten.count_nonzero.default")
def _count_nonzero(L, x, dim=None):
    x = L.v(x)
    t = L.add("not_equal", [x, _c(L, 0, x.type.dtype)], name=_n(L, "nz")) if x.type.dtype != "bool" else x
    if x.type.rank == 0:
        return L.cast(t, "int32")
    return L.add("reduce_sum", [L.cast(t, "int32")], {"axes": _red_axes(x, dim), "keep_dims": False})


@lower("aten.linalg_vector_norm.default")
def lower_vector_norm(L, x, ord=2, dim=None, keepdim=False, *, dtype=None):
    """Every order: 2 and 1 as MIL's l2/l1 reductions, inf/-inf as max/min of |x|, 0 as the count
    of non-zeros, any other p as (sum |x|^p)^(1/p)."""
    x = _f(L, x)
    dt = x.type.dtype
    if x.type.rank == 0:
        a = L.add("abs", [x], name=_n(L, "abs"))
        return L.cast(L.add("not_equal", [x, _c(L, 0.0, dt)]), dt) if ord == 0 else a
    attrs = {"axes": _red_axes(x, dim), "keep_dims": bool(keepdim)}
    if ord == 2:
        return L.add("reduce_l2_norm", [x], attrs)
    if ord == 1:
        return L.add("reduce_l1_norm", [x], attrs)
    a = L.add("abs", [x], name=_n(L, "abs"))
    if ord == float("inf"):
        return L.add("reduce_max", [a], attrs)
    if ord == float("-inf"):
        return L.add("reduce_min", [a], attrs)
    if ord == 0:
        nz = L.cast(L.add("not_equal", [x, _c(L, 0.0, dt)], name=_n(L, "nz")), dt)
        return L.add("reduce_sum", [nz], attrs)
    p = L.add("pow", [a, _c(L, float(ord), dt)], name=_n(L, "pow"))
    s = L.add("reduce_sum", [p], attrs, name=_n(L, "sum"))
    return L.add("pow", [s, _c(L, 1.0 / float(ord), dt)])


def var_mean(L, x, dim, correction, keepdim, tag="var"):
    """Variance over ``dim`` with ``correction`` (Bessel's = 1): sum((x - mean)^2) / (N - correction),
    the two-pass formula (no cancellation of E[x^2] - E[x]^2). Also returns the mean."""
    x = L.v(x)
    dt = x.type.dtype
    axes = _red_axes(x, dim)
    n = 1
    for a in axes:
        n *= x.type.shape[a]
    mean_k = L.add("reduce_mean", [x], {"axes": axes, "keep_dims": True}, name=_n(L, tag + "_meank"))
    d = L.add("sub", [x, mean_k], name=_n(L, tag + "_d"))
    ss = L.add("reduce_sum", [L.add("mul", [d, d], name=_n(L, tag + "_d2"))], {"axes": axes, "keep_dims": bool(keepdim)},
               name=_n(L, tag + "_ss"))
    corr = 1 if correction is None else correction
    denom = max(n - corr, 0)
    v = L.add("real_div", [ss, _c(L, float(denom), dt)], name=_n(L, tag))  # n - corr <= 0 gives inf/NaN, as torch
    mean = mean_k if keepdim else L.add("reduce_mean", [x], {"axes": axes, "keep_dims": False}, name=_n(L, tag + "_mean"))
    return v, mean


@lower("aten.var.correction", "aten.var.dim", "aten.var.default")
def _var_op(L, x, dim=None, *args, correction=None, keepdim=False, unbiased=None):
    if L.node.target == torch.ops.aten.var.dim:  # var(x, dim, unbiased=True, keepdim=False)
        unbiased = args[0] if args else (True if unbiased is None else unbiased)
        keepdim = args[1] if len(args) > 1 else keepdim
        correction = 1 if unbiased else 0
    elif L.node.target == torch.ops.aten.var.default:  # var(x, unbiased=True)
        correction = 1 if (dim is None or dim) else 0
        dim = None
    x = _f(L, x)
    if x.type.rank == 0:
        return L.add("real_div", [L.add("sub", [x, x], name=_n(L, "z")),
                                  _c(L, float(max(1 - (1 if correction is None else correction), 0)), x.type.dtype)])
    return var_mean(L, x, dim, correction, keepdim)[0]


@lower("aten.var_mean.correction")
def _var_mean(L, x, dim=None, *, correction=None, keepdim=False):
    x = _f(L, x)
    return var_mean(L, x, dim, correction, keepdim)


@lower("aten._log_softmax.default", "aten.log_softmax.int")
def _log_softmax(L, x, dim, half_to_float=False, dtype=None):
    """log_softmax = (x - max) - log(sum(exp(x - max))) along ``dim`` (no log of a rounded-to-0
    probability, unlike log(softmax))."""
    x = _f(L, x)
    if x.type.rank == 0:
        return L.add("sub", [x, x])
    ax = norm_axis(dim, x.type.rank)
    m = L.add("reduce_max", [x], {"axes": (ax,), "keep_dims": True}, name=_n(L, "max"))
    s = L.add("sub", [x, m], name=_n(L, "shift"))
    lse = L.add("log", [L.add("reduce_sum", [L.add("exp", [s], name=_n(L, "exp"))], {"axes": (ax,), "keep_dims": True},
                              name=_n(L, "sum"))], {"epsilon": 0.0}, name=_n(L, "lse"))
    return L.add("sub", [s, lse])


@lower("aten.native_layer_norm.default")
def _native_layer_norm(L, x, shape, w, b, eps):
    from .aten_nn import lower_layer_norm

    y = lower_layer_norm(L, x, shape, w, b, eps)
    if not (L.result_used(1) or L.result_used(2)):
        return (y, None, None)
    v = L.v(x)  # mean / rstd over the normalized axes, kept as size-1 axes (torch's shapes)
    axes = tuple(range(v.type.rank - len(shape), v.type.rank))
    var, mean = var_mean(L, v, axes, 0, True, "stats")
    rstd = L.add("rsqrt", [L.add("add", [var, _c(L, float(eps), v.type.dtype)], name=_n(L, "veps"))], {"epsilon": 0.0},
                 name=_n(L, "rstd"))
    return (y, mean, rstd)


@lower("aten._native_batch_norm_legit.default", "aten.native_batch_norm.default",
       "aten._native_batch_norm_legit.no_stats", "aten._native_batch_norm_legit_functional.default",
       "aten._batch_norm_with_update.default", "aten._batch_norm_with_update_functional.default")
def _batch_norm_any(L, x, w, b, *args):
    """Batch norm as torch's training mode computes it (batch statistics over every axis but 1;
    the biased variance normalizes, saved rstd = 1/sqrt(var + eps)) or, for the no-training
    overloads with running statistics, the inference ``batch_norm``. The running-statistics
    updates are buffer mutations, not outputs (tlc drops them)."""
    from .aten_nn import batch_norm_value

    target = str(L.node.target)
    if "no_stats" in target:
        mean = var = None
        training, momentum, eps = args
    elif "with_update" in target:
        mean, var, momentum, eps = args
        training = True
    else:
        mean, var, training, momentum, eps = args
    n_out = len(L.node.meta["val"])
    if not training:
        return (batch_norm_value(L, x, w, b, mean, var, eps),) + (None,) * (n_out - 1)
    x = L.v(x)
    dt = x.type.dtype
    r = x.type.rank
    axes = tuple(i for i in range(r) if i != 1)
    shape = tuple(x.type.shape[1] if i == 1 else 1 for i in range(r))
    var_k, mean_k = var_mean(L, x, axes, 0, True, "bn")
    rstd_k = L.add("rsqrt", [L.add("add", [var_k, _c(L, float(eps), dt)], name=_n(L, "veps"))], {"epsilon": 0.0},
                   name=_n(L, "rstd_k"))
    y = L.add("mul", [L.add("sub", [x, mean_k], name=_n(L, "cent")), rstd_k], name=_n(L, "norm"))
    if w is not None:
        y = L.add("mul", [y, L.add("reshape", [L.cast(w, dt)], {"shape": shape}, name=_n(L, "w"))], name=_n(L, "scaled"))
    if b is not None:
        y = L.add("add", [y, L.add("reshape", [L.cast(b, dt)], {"shape": shape}, name=_n(L, "b"))], name=_n(L, "out"))
    c = x.type.shape[1]
    mean = L.add("reshape", [mean_k], {"shape": (c,)}, name=_n(L, "mean"))
    rstd = L.add("reshape", [rstd_k], {"shape": (c,)}, name=_n(L, "rstd"))
    return (y, mean, rstd) + (None,) * (n_out - 3)


@lower("aten.elu.default")
def _elu(L, x, alpha=1.0, scale=1.0, input_scale=1.0):
    """elu: scale * x for x > 0, else scale * alpha * (exp(input_scale * x) - 1) (expm1 as in
    :func:`_expm1` is not needed: the negative branch is >= -alpha, no cancellation at fp32
    tolerances)."""
    x = _f(L, x)
    dt = x.type.dtype
    e = L.add("sub", [L.add("exp", [L.add("mul", [x, _c(L, float(input_scale), dt)], name=_n(L, "in"))], name=_n(L, "exp")),
                      _c(L, 1.0, dt)], name=_n(L, "em1"))
    neg = L.add("mul", [e, _c(L, float(alpha) * float(scale), dt)], name=_n(L, "neg"))
    pos = L.add("mul", [x, _c(L, float(scale), dt)], name=_n(L, "pos")) if scale != 1 else x
    return L.add("select", [L.add("greater", [x, _c(L, 0.0, dt)], name=_n(L, "gt")), pos, neg])


@lower("aten.log_sigmoid_forward.default")
def _log_sigmoid(L, x):
    """log(sigmoid(x)) = -softplus(-x); the second result (a buffer for backward) is unused."""
    x = _f(L, x)
    dt = x.type.dtype
    sp = L.add("softplus", [L.add("mul", [x, _c(L, -1.0, dt)], name=_n(L, "negx"))], name=_n(L, "sp"))
    if L.result_used(1):
        raise UnsupportedOpError("log_sigmoid_forward's buffer result is read")
    return (L.add("mul", [sp, _c(L, -1.0, dt)]), None)


@lower("aten.sgn.default")
def _sgn(L, x):
    return L.add("sign", [L.v(x)])


@lower("aten.logical_and.default", "aten.logical_or.default", "aten.logical_xor.default")
def _logical_any(L, a, b):
    op = str(L.node.target).split(".")[1]
    return L.add(op, [L.cast(a, "bool") if not isinstance(a, (bool, int, float)) else L.scalar(bool(a), "bool"),
                      L.cast(b, "bool") if not isinstance(b, (bool, int, float)) else L.scalar(bool(b), "bool")])


@lower("aten.bitwise_and.Tensor", "aten.bitwise_or.Tensor", "aten.bitwise_xor.Tensor",
       "aten.bitwise_and.Scalar", "aten.bitwise_or.Scalar", "aten.bitwise_xor.Scalar")
def _bitwise(L, a, b):
    op = {"and": "logical_and", "or": "logical_or", "xor": "logical_xor"}[str(L.node.target).split(".")[1].split("_")[1]]
    if L.out_type().dtype != "bool":
        raise UnsupportedOpError("bitwise and/or/xor of integer tensors has no MIL op; only bool is lowered")
    return L.add(op, [operand(L, a, "bool"), operand(L, b, "bool")])


@lower("aten.angle.default")
def _angle_real(L, x):
    """angle of a real tensor: pi where x < 0, else 0 (NaN stays NaN)."""
    dt = L.out_type().dtype
    v = L.cast(x, dt)
    r = L.add("select", [L.add("less", [v, _c(L, 0.0, dt)], name=_n(L, "neg")), _c(L, math.pi, dt), _c(L, 0.0, dt)],
              name=_n(L, "pi"))
    return L.add("select", [L.add("not_equal", [v, v], name=_n(L, "isnan")), v, r])  # NaN stays NaN


@lower("aten._conj_physical.default", "aten.conj_physical.default")
def _conj_real(L, x):
    return L.add("identity", [L.v(x)])


def _nan_aware(op):
    def fn(L, a, b):
        """fmax / fmin: the max / min ignoring NaN (NaN only where both are NaN)."""
        dt = L.out_type().dtype
        a, b = operand(L, a, dt), operand(L, b, dt)
        m = L.add(op, [a, b], name=_n(L, "m"))
        if dt not in _FLOAT:
            return m
        an = L.add("not_equal", [a, a], name=_n(L, "anan"))
        bn = L.add("not_equal", [b, b], name=_n(L, "bnan"))
        return L.add("select", [an, b, L.add("select", [bn, a, m], name=_n(L, "b_ok"))])

    return fn


lower("aten.fmax.default")(_nan_aware("maximum"))
lower("aten.fmin.default")(_nan_aware("minimum"))


@lower("aten.ldexp.Tensor", "aten.ldexp.default")
def _ldexp(L, x, e):
    """x * 2^e (``exp2`` of the exponent, exact for integer e within fp32's range)."""
    dt = L.out_type().dtype
    return L.add("mul", [operand(L, x, dt), L.add("exp2", [operand(L, e, dt)], name=_n(L, "p2"))])


@lower("aten.frexp.Tensor")
def _frexp(L, x):
    """frexp: x = m * 2^e with 0.5 <= |m| < 1 (m = e = 0 for x = 0): e = floor(log2 |x|) + 1,
    then one correction step each way for log2's rounding; inf/NaN keep m = x, e = 0 (as C)."""
    x = L.v(x)
    dt = x.type.dtype
    a = L.add("abs", [x], name=_n(L, "abs"))
    zero = L.add("equal", [a, _c(L, 0.0, dt)], name=_n(L, "zero"))
    finite = L.add("less", [a, _c(L, float("inf"), dt)], name=_n(L, "fin"))
    safe = L.add("select", [L.add("logical_and", [finite, L.add("logical_not", [zero], name=_n(L, "nz"))],
                                  name=_n(L, "ok")), a, _c(L, 1.0, dt)], name=_n(L, "safe"))
    lg = L.add("mul", [L.add("log", [safe], {"epsilon": 0.0}, name=_n(L, "ln")), _c(L, 1.0 / math.log(2.0), dt)],
               name=_n(L, "lg2"))
    e = L.add("add", [L.add("floor", [lg], name=_n(L, "fl")), _c(L, 1.0, dt)], name=_n(L, "e0"))
    for k, (cmp, bound, step) in enumerate((("greater_equal", 1.0, 1.0), ("less", 0.5, -1.0))):
        m = L.add("mul", [safe, L.add("exp2", [L.add("mul", [e, _c(L, -1.0, dt)], name=_n(L, f"ne{k}"))],
                                      name=_n(L, f"p{k}"))], name=_n(L, f"m{k}"))
        fix = L.add(cmp, [m, _c(L, bound, dt)], name=_n(L, f"fix{k}"))
        e = L.add("select", [fix, L.add("add", [e, _c(L, step, dt)], name=_n(L, f"e{k}s")), e], name=_n(L, f"e{k}"))
    ok = L.add("logical_and", [finite, L.add("logical_not", [zero], name=_n(L, "nz2"))], name=_n(L, "ok2"))
    e = L.add("select", [ok, e, _c(L, 0.0, dt)], name=_n(L, "e"))
    m = L.add("mul", [x, L.add("exp2", [L.add("mul", [e, _c(L, -1.0, dt)], name=_n(L, "neg_e"))], name=_n(L, "scale"))],
              name=_n(L, "mant"))
    return (m, L.cast(e, "int32"))


__all__ = ["shape_of"]
