"""ATen -> IR lowerings of math MIL lacks as one op, written as short decompositions into ops it has
(registered into :data:`tlc.frontend.common.LOWERINGS`): inverse hyperbolic functions, accurate
``log1p`` / ``expm1``, ``trunc``, ``atan2``, ``fmod``, IEEE predicates, tensor-bounded clamps
and bitwise/logical ops (reductions and normalizations: :mod:`tlc.frontend.aten_reduce`).

Each decomposition follows the formula named in its docstring; accuracy claims are for fp32 and
are checked against torch eager by benchmarks/bench_opinfo.py and tests/test_coverage_ops.py.
"""
from __future__ import annotations

import math

import torch

from ..errors import UnsupportedOpError
from .common import Const, as_float_result, lower, operand, shape_of, sub_name

_FLOAT = ("fp32", "fp16")


for _name, _op in [("sinh", "sinh"), ("cosh", "cosh"), ("tan", "tan"), ("asin", "asin"), ("acos", "acos"),
                   ("atan", "atan"), ("atanh", "atanh"), ("exp2", "exp2"), ("square", "square")]:
    def _mk(op):
        def fn(L, x):
            return L.add(op, [as_float_result(L, x)])

        return fn

    lower(f"aten.{_name}.default")(_mk(_op))


@lower("aten.asinh.default")
def _asinh(L, x):
    """asinh(x) = sign(x) log(|x| + sqrt(x^2 + 1)) (odd symmetry keeps negative x accurate)."""
    x = as_float_result(L, x)
    dt = x.type.dtype
    a = L.add("abs", [x], name=sub_name(L, "abs"))
    r = L.add("sqrt", [L.add("add", [L.add("mul", [a, a], name=sub_name(L, "sq")), L.scalar(1.0, dt)], name=sub_name(L, "sq1"))],
              name=sub_name(L, "root"))
    lg = L.add("log", [L.add("add", [a, r], name=sub_name(L, "sum"))], {"epsilon": 0.0}, name=sub_name(L, "log"))
    return L.add("mul", [L.add("sign", [x], name=sub_name(L, "sign")), lg])


@lower("aten.acosh.default")
def _acosh(L, x):
    """acosh(x) = log(x + sqrt(x^2 - 1)) for x >= 1 (NaN below, as torch)."""
    x = as_float_result(L, x)
    dt = x.type.dtype
    r = L.add("sqrt", [L.add("sub", [L.add("mul", [x, x], name=sub_name(L, "sq")), L.scalar(1.0, dt)], name=sub_name(L, "sq1"))],
              name=sub_name(L, "root"))
    return L.add("log", [L.add("add", [x, r], name=sub_name(L, "sum"))], {"epsilon": 0.0})


def _log_scaled(base: float):
    def fn(L, x):
        x = as_float_result(L, x)
        lg = L.add("log", [x], {"epsilon": 0.0}, name=sub_name(L, "ln"))
        return L.add("mul", [lg, L.scalar(1.0 / math.log(base), x.type.dtype)])

    fn.__doc__ = f"log_{base:g}(x) = ln(x) / ln({base:g})."
    return fn


lower("aten.log2.default")(_log_scaled(2.0))
lower("aten.log10.default")(_log_scaled(10.0))


@lower("aten.log1p.default")
def _log1p(L, x):
    """log1p(x) without the cancellation of log(1 + x) for small x (D. Goldberg, "What every
    computer scientist should know about floating-point arithmetic", ACM Comput. Surv. 1991,
    Theorem 4): u = 1 + x; x if u == 1 else log(u) * x / (u - 1); +inf stays +inf."""
    x = as_float_result(L, x)
    dt = x.type.dtype
    u = L.add("add", [x, L.scalar(1.0, dt)], name=sub_name(L, "u"))
    lg = L.add("log", [u], {"epsilon": 0.0}, name=sub_name(L, "lnu"))
    q = L.add("real_div", [L.add("mul", [lg, x], name=sub_name(L, "num")), L.add("sub", [u, L.scalar(1.0, dt)], name=sub_name(L, "den"))],
              name=sub_name(L, "q"))
    one = L.add("equal", [u, L.scalar(1.0, dt)], name=sub_name(L, "one"))
    y = L.add("select", [one, x, q], name=sub_name(L, "small"))
    inf = L.add("equal", [x, L.scalar(float("inf"), dt)], name=sub_name(L, "inf"))
    return L.add("select", [inf, x, y])


@lower("aten.expm1.default")
def _expm1(L, x):
    """expm1(x) without the cancellation of exp(x) - 1 (W. Kahan's formula, Goldberg 1991):
    u = exp(x); x if u == 1; -1 if u - 1 == -1; else (u - 1) * x / log(u); +inf for u = +inf."""
    x = as_float_result(L, x)
    dt = x.type.dtype
    u = L.add("exp", [x], name=sub_name(L, "u"))
    um1 = L.add("sub", [u, L.scalar(1.0, dt)], name=sub_name(L, "um1"))
    q = L.add("real_div", [L.add("mul", [um1, x], name=sub_name(L, "num")),
                           L.add("log", [u], {"epsilon": 0.0}, name=sub_name(L, "lnu"))], name=sub_name(L, "q"))
    y = L.add("select", [L.add("equal", [u, L.scalar(1.0, dt)], name=sub_name(L, "one")), x, q], name=sub_name(L, "small"))
    y = L.add("select", [L.add("equal", [um1, L.scalar(-1.0, dt)], name=sub_name(L, "neg")), um1, y], name=sub_name(L, "big_neg"))
    return L.add("select", [L.add("equal", [u, L.scalar(float("inf"), dt)], name=sub_name(L, "inf")), u, y])


def trunc_value(L, x, tag="trunc"):
    """trunc(x) = sign(x) * floor(|x|) (exact)."""
    a = L.add("floor", [L.add("abs", [x], name=sub_name(L, tag + "_abs"))], name=sub_name(L, tag + "_floor"))
    return L.add("mul", [L.add("sign", [x], name=sub_name(L, tag + "_sign")), a], name=sub_name(L, tag))


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
    x = as_float_result(L, x)
    dt = x.type.dtype
    p = 10.0 ** abs(decimals)
    if decimals >= 0:
        r = L.add("round", [L.add("mul", [x, L.scalar(p, dt)], name=sub_name(L, "scaled"))], name=sub_name(L, "r"))
        return L.add("real_div", [r, L.scalar(p, dt)])
    r = L.add("round", [L.add("real_div", [x, L.scalar(p, dt)], name=sub_name(L, "scaled"))], name=sub_name(L, "r"))
    return L.add("mul", [r, L.scalar(p, dt)])


@lower("aten.isnan.default")
def _isnan(L, x):
    x = L.v(x)
    if x.type.dtype not in _FLOAT:
        return Const(torch.zeros(x.type.shape, dtype=torch.bool), sub_name(L, "false"))
    return L.add("not_equal", [x, x])


@lower("aten.isinf.default")
def _isinf(L, x):
    x = L.v(x)
    if x.type.dtype not in _FLOAT:
        return Const(torch.zeros(x.type.shape, dtype=torch.bool), sub_name(L, "false"))
    return L.add("equal", [L.add("abs", [x], name=sub_name(L, "abs")), L.scalar(float("inf"), x.type.dtype)])


@lower("aten.isposinf.default", "aten.isneginf.default")
def _is_signed_inf(L, x):
    x = L.v(x)
    if x.type.dtype not in _FLOAT:
        return Const(torch.zeros(x.type.shape, dtype=torch.bool), sub_name(L, "false"))
    v = float("inf") if "posinf" in str(L.node.target) else float("-inf")
    return L.add("equal", [x, L.scalar(v, x.type.dtype)])


@lower("aten.isfinite.default")
def _isfinite(L, x):
    x = L.v(x)
    if x.type.dtype not in _FLOAT:
        return Const(torch.ones(x.type.shape, dtype=torch.bool), sub_name(L, "true"))
    return L.add("less", [L.add("abs", [x], name=sub_name(L, "abs")), L.scalar(float("inf"), x.type.dtype)])


@lower("aten.signbit.default")
def _signbit(L, x):
    """x < 0, or x == -0.0 (1 / -0.0 = -inf): the IEEE sign bit for every non-NaN value."""
    x = L.v(x)
    dt = x.type.dtype
    if dt not in _FLOAT:
        return L.add("less", [x, L.scalar(0, dt)])
    neg = L.add("less", [x, L.scalar(0.0, dt)], name=sub_name(L, "neg"))
    zero = L.add("equal", [x, L.scalar(0.0, dt)], name=sub_name(L, "zero"))
    inv = L.add("inverse", [x], {"epsilon": 0.0}, name=sub_name(L, "inv"))
    negzero = L.add("logical_and", [zero, L.add("less", [inv, L.scalar(0.0, dt)], name=sub_name(L, "ninf"))], name=sub_name(L, "nz"))
    return L.add("logical_or", [neg, negzero])


@lower("aten.erfc.default")
def _erfc(L, x):
    """erfc(x) = 1 - erf(x) (absolute error ~1 ulp of 1, i.e. <= 6e-8)."""
    x = as_float_result(L, x)
    return L.add("sub", [L.scalar(1.0, x.type.dtype), L.add("erf", [x], name=sub_name(L, "erf"))])


@lower("aten.atan2.default")
def lower_atan2(L, y, x):
    """atan2(y, x): atan(y / x) with the quadrant fixed by the signs (+/-pi for x < 0; +/-pi/2 for
    x == 0, y != 0; 0 at the origin, as torch's +0 cases)."""
    dt = L.out_type().dtype
    y, x = operand(L, y, dt), operand(L, x, dt)
    base = L.add("atan", [L.add("real_div", [y, x], name=sub_name(L, "ratio"))], name=sub_name(L, "atan"))
    xneg = L.add("less", [x, L.scalar(0.0, dt)], name=sub_name(L, "xneg"))
    yneg = L.add("less", [y, L.scalar(0.0, dt)], name=sub_name(L, "yneg"))
    shift = L.add("select", [yneg, L.scalar(-math.pi, dt), L.scalar(math.pi, dt)], name=sub_name(L, "pi"))
    r = L.add("select", [xneg, L.add("add", [base, shift], name=sub_name(L, "turn")), base], name=sub_name(L, "quad"))
    xz = L.add("equal", [x, L.scalar(0.0, dt)], name=sub_name(L, "xz"))
    half = L.add("select", [yneg, L.scalar(-math.pi / 2, dt), L.scalar(math.pi / 2, dt)], name=sub_name(L, "half"))
    yz = L.add("equal", [y, L.scalar(0.0, dt)], name=sub_name(L, "yz"))
    axis = L.add("select", [yz, L.add("select", [xneg, shift, L.scalar(0.0, dt)], name=sub_name(L, "origin")), half],
                 name=sub_name(L, "axis"))
    return L.add("select", [xz, axis, r])


@lower("aten.hypot.default")
def _hypot(L, a, b):
    dt = L.out_type().dtype
    a, b = operand(L, a, dt), operand(L, b, dt)
    s = L.add("add", [L.add("mul", [a, a], name=sub_name(L, "a2")), L.add("mul", [b, b], name=sub_name(L, "b2"))], name=sub_name(L, "s"))
    return L.add("sqrt", [s])


@lower("aten.copysign.Tensor", "aten.copysign.Scalar")
def _copysign(L, a, b):
    dt = L.out_type().dtype
    a, b = operand(L, a, dt), operand(L, b, dt)
    neg = _signbit_of(L, b)
    mag = L.add("abs", [a], name=sub_name(L, "abs"))
    return L.add("select", [neg, L.add("mul", [mag, L.scalar(-1.0, dt)], name=sub_name(L, "negmag")), mag])


def _signbit_of(L, v):
    dt = v.type.dtype
    zero = L.add("equal", [v, L.scalar(0.0, dt)], name=sub_name(L, "bz"))
    inv = L.add("inverse", [v], {"epsilon": 0.0}, name=sub_name(L, "binv"))
    return L.add("logical_or", [L.add("less", [v, L.scalar(0.0, dt)], name=sub_name(L, "bneg")),
                                L.add("logical_and", [zero, L.add("less", [inv, L.scalar(0.0, dt)], name=sub_name(L, "bni"))],
                                      name=sub_name(L, "bnz"))], name=sub_name(L, "bsign"))


@lower("aten.fmod.Tensor", "aten.fmod.Scalar")
def _fmod(L, a, b):
    """C's fmod: a - trunc(a / b) * b (the sign of a; remainder is torch.remainder)."""
    dt = L.out_type().dtype
    a, b = operand(L, a, dt), operand(L, b, dt)
    if dt in _FLOAT:
        q = trunc_value(L, L.add("real_div", [a, b], name=sub_name(L, "q")))
    else:  # integer: trunc division from floor division on magnitudes
        qa = L.add("floor_div", [L.add("abs", [a], name=sub_name(L, "aa")), L.add("abs", [b], name=sub_name(L, "ab"))], name=sub_name(L, "qa"))
        sgn = L.add("mul", [L.add("sign", [a], name=sub_name(L, "sa")), L.add("sign", [b], name=sub_name(L, "sb"))], name=sub_name(L, "sab"))
        q = L.add("mul", [qa, sgn], name=sub_name(L, "q"))
    return L.add("sub", [a, L.add("mul", [q, b], name=sub_name(L, "qb"))])


@lower("aten.div.Tensor_mode", "aten.div.Scalar_mode")
def _div_mode(L, a, b, *, rounding_mode=None):
    dt = L.out_type().dtype
    x, y = operand(L, a, dt), operand(L, b, dt)
    if rounding_mode is None:
        return L.add("real_div", [x, y])
    if rounding_mode == "floor":
        return L.add("floor_div", [x, y])
    if dt in _FLOAT:
        return trunc_value(L, L.add("real_div", [x, y], name=sub_name(L, "q")), "t")
    qa = L.add("floor_div", [L.add("abs", [x], name=sub_name(L, "aa")), L.add("abs", [y], name=sub_name(L, "ab"))], name=sub_name(L, "qa"))
    sgn = L.add("mul", [L.add("sign", [x], name=sub_name(L, "sa")), L.add("sign", [y], name=sub_name(L, "sb"))], name=sub_name(L, "sab"))
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
    return L.add(op, [L.cast(x, dt), L.scalar(2 ** s, dt)])


@lower("aten.clamp.Tensor")
def _clamp_tensor(L, x, min=None, max=None):
    dt = L.out_type().dtype
    y = L.cast(x, dt)
    if min is not None:
        y = L.add("maximum", [y, operand(L, min, dt)], name=sub_name(L, "lo"))
    if max is not None:
        y = L.add("minimum", [y, operand(L, max, dt)])
    return y if (min is not None or max is not None) else L.add("identity", [y])


@lower("aten.elu.default")
def _elu(L, x, alpha=1.0, scale=1.0, input_scale=1.0):
    """elu: scale * x for x > 0, else scale * alpha * (exp(input_scale * x) - 1) (expm1 as in
    :func:`_expm1` is not needed: the negative branch is >= -alpha, no cancellation at fp32
    tolerances)."""
    x = as_float_result(L, x)
    dt = x.type.dtype
    e = L.add("sub", [L.add("exp", [L.add("mul", [x, L.scalar(float(input_scale), dt)], name=sub_name(L, "in"))], name=sub_name(L, "exp")),
                      L.scalar(1.0, dt)], name=sub_name(L, "em1"))
    neg = L.add("mul", [e, L.scalar(float(alpha) * float(scale), dt)], name=sub_name(L, "neg"))
    pos = L.add("mul", [x, L.scalar(float(scale), dt)], name=sub_name(L, "pos")) if scale != 1 else x
    return L.add("select", [L.add("greater", [x, L.scalar(0.0, dt)], name=sub_name(L, "gt")), pos, neg])


@lower("aten.log_sigmoid_forward.default")
def _log_sigmoid(L, x):
    """log(sigmoid(x)) = -softplus(-x); the second result (a buffer for backward) is unused."""
    x = as_float_result(L, x)
    dt = x.type.dtype
    sp = L.add("softplus", [L.add("mul", [x, L.scalar(-1.0, dt)], name=sub_name(L, "negx"))], name=sub_name(L, "sp"))
    if L.result_used(1):
        raise UnsupportedOpError("log_sigmoid_forward's buffer result is read")
    return (L.add("mul", [sp, L.scalar(-1.0, dt)]), None)


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
    r = L.add("select", [L.add("less", [v, L.scalar(0.0, dt)], name=sub_name(L, "neg")), L.scalar(math.pi, dt), L.scalar(0.0, dt)],
              name=sub_name(L, "pi"))
    return L.add("select", [L.add("not_equal", [v, v], name=sub_name(L, "isnan")), v, r])  # NaN stays NaN


@lower("aten._conj_physical.default", "aten.conj_physical.default")
def _conj_real(L, x):
    return L.add("identity", [L.v(x)])


def _nan_aware(op):
    def fn(L, a, b):
        """fmax / fmin: the max / min ignoring NaN (NaN only where both are NaN)."""
        dt = L.out_type().dtype
        a, b = operand(L, a, dt), operand(L, b, dt)
        m = L.add(op, [a, b], name=sub_name(L, "m"))
        if dt not in _FLOAT:
            return m
        an = L.add("not_equal", [a, a], name=sub_name(L, "anan"))
        bn = L.add("not_equal", [b, b], name=sub_name(L, "bnan"))
        return L.add("select", [an, b, L.add("select", [bn, a, m], name=sub_name(L, "b_ok"))])

    return fn


lower("aten.fmax.default")(_nan_aware("maximum"))
lower("aten.fmin.default")(_nan_aware("minimum"))


@lower("aten.ldexp.Tensor", "aten.ldexp.default")
def _ldexp(L, x, e):
    """x * 2^e (``exp2`` of the exponent, exact for integer e within fp32's range)."""
    dt = L.out_type().dtype
    return L.add("mul", [operand(L, x, dt), L.add("exp2", [operand(L, e, dt)], name=sub_name(L, "p2"))])


@lower("aten.frexp.Tensor")
def _frexp(L, x):
    """frexp: x = m * 2^e with 0.5 <= |m| < 1 (m = e = 0 for x = 0): e = floor(log2 |x|) + 1,
    then one correction step each way for log2's rounding; inf/NaN keep m = x, e = 0 (as C)."""
    x = L.v(x)
    dt = x.type.dtype
    a = L.add("abs", [x], name=sub_name(L, "abs"))
    zero = L.add("equal", [a, L.scalar(0.0, dt)], name=sub_name(L, "zero"))
    finite = L.add("less", [a, L.scalar(float("inf"), dt)], name=sub_name(L, "fin"))
    safe = L.add("select", [L.add("logical_and", [finite, L.add("logical_not", [zero], name=sub_name(L, "nz"))],
                                  name=sub_name(L, "ok")), a, L.scalar(1.0, dt)], name=sub_name(L, "safe"))
    lg = L.add("mul", [L.add("log", [safe], {"epsilon": 0.0}, name=sub_name(L, "ln")), L.scalar(1.0 / math.log(2.0), dt)],
               name=sub_name(L, "lg2"))
    e = L.add("add", [L.add("floor", [lg], name=sub_name(L, "fl")), L.scalar(1.0, dt)], name=sub_name(L, "e0"))
    for k, (cmp, bound, step) in enumerate((("greater_equal", 1.0, 1.0), ("less", 0.5, -1.0))):
        m = L.add("mul", [safe, L.add("exp2", [L.add("mul", [e, L.scalar(-1.0, dt)], name=sub_name(L, f"ne{k}"))],
                                      name=sub_name(L, f"p{k}"))], name=sub_name(L, f"m{k}"))
        fix = L.add(cmp, [m, L.scalar(bound, dt)], name=sub_name(L, f"fix{k}"))
        e = L.add("select", [fix, L.add("add", [e, L.scalar(step, dt)], name=sub_name(L, f"e{k}s")), e], name=sub_name(L, f"e{k}"))
    ok = L.add("logical_and", [finite, L.add("logical_not", [zero], name=sub_name(L, "nz2"))], name=sub_name(L, "ok2"))
    e = L.add("select", [ok, e, L.scalar(0.0, dt)], name=sub_name(L, "e"))
    m = L.add("mul", [x, L.add("exp2", [L.add("mul", [e, L.scalar(-1.0, dt)], name=sub_name(L, "neg_e"))], name=sub_name(L, "scale"))],
              name=sub_name(L, "mant"))
    return (m, L.cast(e, "int32"))


__all__ = ["shape_of"]
