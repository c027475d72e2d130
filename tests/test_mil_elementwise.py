"""MIL interpreter numerics: unary and binary elementwise ops, cast, select, fp16 overflow.

Helpers and tolerances: tests/milcheck.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from milcheck import (PRECISIONS, R, check, check_all, ct, explicit_pads, f32, mb, precisions, rng,  # noqa: F401
                      run_mil, same_pads, torch_pad, types)


# ------------------------------------------------------------------------------------- unary

S = (3, 4, 5)


def _normal(scale=1.0):
    return lambda r: f32(r.normal(0, scale, S))


def _uniform(lo, hi, signed=False):
    def gen(r):
        a = r.uniform(lo, hi, S)
        return f32(a * r.choice([-1, 1], S) if signed else a)

    return gen


def _with(values, scale=3.0):
    """Normal values with some fixed ones (ties for rounding, zeros for sign) mixed in."""

    def gen(r):
        a = r.normal(0, scale, S).ravel()
        a[: len(values)] = values
        return f32(r.permutation(a).reshape(S))

    return gen


_TIES = [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.0, -0.0, 3.0, -3.0, 0.25, -0.75]

# id -> (MIL builder on x, input generator, torch reference, MIL op name)
UNARY = {
    "exp": (lambda x: mb.exp(x=x), _normal(2), torch.exp, "exp"),
    "log": (lambda x: mb.log(x=x), _uniform(0.05, 6), torch.log, "log"),  # default epsilon 1e-45
    "log_epsilon": (lambda x: mb.log(x=x, epsilon=0.5), _uniform(0, 6), lambda t: torch.log(t + 0.5), "log"),
    "sqrt": (lambda x: mb.sqrt(x=x), _uniform(0, 6), torch.sqrt, "sqrt"),
    "rsqrt": (lambda x: mb.rsqrt(x=x), _uniform(0.05, 6), lambda t: torch.rsqrt(t + 1e-12), "rsqrt"),  # default 1e-12
    "rsqrt_epsilon": (lambda x: mb.rsqrt(x=x, epsilon=0.25), _uniform(0, 6), lambda t: torch.rsqrt(t + 0.25), "rsqrt"),
    # MIL inverse: 1 / (x + epsilon), epsilon defaults to 1e-4 (iOS15 elementwise_unary.py)
    "inverse": (lambda x: mb.inverse(x=x), _uniform(0.5, 4, signed=True), lambda t: torch.reciprocal(t + 1e-4), "inverse"),
    "inverse_epsilon": (lambda x: mb.inverse(x=x, epsilon=0.5), _uniform(0, 4), lambda t: torch.reciprocal(t + 0.5), "inverse"),
    "tanh": (lambda x: mb.tanh(x=x), _normal(2), torch.tanh, "tanh"),
    "sigmoid": (lambda x: mb.sigmoid(x=x), _normal(4), torch.sigmoid, "sigmoid"),
    "relu": (lambda x: mb.relu(x=x), _normal(), torch.relu, "relu"),
    "erf": (lambda x: mb.erf(x=x), _normal(1.5), torch.erf, "erf"),
    "abs": (lambda x: mb.abs(x=x), _normal(), torch.abs, "abs"),
    "sign": (lambda x: mb.sign(x=x), _with([0.0, -0.0, 1e-3, -1e-3]), torch.sign, "sign"),
    "sin": (lambda x: mb.sin(x=x), _normal(3), torch.sin, "sin"),
    "cos": (lambda x: mb.cos(x=x), _normal(3), torch.cos, "cos"),
    "floor": (lambda x: mb.floor(x=x), _with(_TIES), torch.floor, "floor"),
    "ceil": (lambda x: mb.ceil(x=x), _with(_TIES), torch.ceil, "ceil"),
    # MIL round: to nearest, 0.5 -> 0 (ties to even, as np.round in its value_inference and torch.round)
    "round": (lambda x: mb.round(x=x), _with(_TIES), torch.round, "round"),
    "square": (lambda x: mb.square(x=x), _normal(2), torch.square, "square"),
    "silu": (lambda x: mb.silu(x=x), _normal(3), F.silu, "silu"),
    "softplus": (lambda x: mb.softplus(x=x), _normal(4), F.softplus, "softplus"),
    "gelu_default": (lambda x: mb.gelu(x=x), _normal(2), F.gelu, "gelu"),  # mode defaults to EXACT
    "gelu_exact": (lambda x: mb.gelu(x=x, mode="EXACT"), _normal(2), F.gelu, "gelu"),
    "gelu_tanh": (lambda x: mb.gelu(x=x, mode="TANH_APPROXIMATION"), _normal(2),
                  lambda t: F.gelu(t, approximate="tanh"), "gelu"),
    "gelu_sigmoid": (lambda x: mb.gelu(x=x, mode="SIGMOID_APPROXIMATION"), _normal(2),
                     lambda t: t * torch.sigmoid(1.702 * t), "gelu"),
    "clip": (lambda x: mb.clip(x=x, alpha=-0.5, beta=1.25), _normal(2), lambda t: torch.clamp(t, -0.5, 1.25), "clip"),
    "leaky_relu": (lambda x: mb.leaky_relu(x=x, alpha=0.125), _normal(2), lambda t: F.leaky_relu(t, 0.125), "leaky_relu"),
    "sigmoid_hard": (lambda x: mb.sigmoid_hard(x=x, alpha=1 / 6, beta=0.5), _normal(4), F.hardsigmoid, "sigmoid_hard"),
    "sigmoid_hard_ab": (lambda x: mb.sigmoid_hard(x=x, alpha=0.25, beta=0.375), _normal(4),
                        lambda t: torch.clamp(0.25 * t + 0.375, 0, 1), "sigmoid_hard"),
    # int32 forms (MIL elementwise_unary_with_int)
    "abs_int32": (lambda x: mb.abs(x=x), lambda r: r.integers(-9, 10, S).astype(np.int32), torch.abs, "abs"),
    "sign_int32": (lambda x: mb.sign(x=x), lambda r: r.integers(-3, 4, S).astype(np.int32), torch.sign, "sign"),
    "square_int32": (lambda x: mb.square(x=x), lambda r: r.integers(-9, 10, S).astype(np.int32), torch.square, "square"),
    "logical_not": (lambda x: mb.logical_not(x=x), lambda r: r.random(S) < 0.5, torch.logical_not, "logical_not"),
    # issue 10: MIL's other elementwise_unary ops
    "sinh": (lambda x: mb.sinh(x=x), _normal(2), torch.sinh, "sinh"),
    "cosh": (lambda x: mb.cosh(x=x), _normal(2), torch.cosh, "cosh"),
    "tan": (lambda x: mb.tan(x=x), _uniform(-1.4, 1.4), torch.tan, "tan"),
    "asin": (lambda x: mb.asin(x=x), _uniform(-0.95, 0.95), torch.asin, "asin"),
    "acos": (lambda x: mb.acos(x=x), _uniform(-0.95, 0.95), torch.acos, "acos"),
    "atan": (lambda x: mb.atan(x=x), _normal(3), torch.atan, "atan"),
    "atanh": (lambda x: mb.atanh(x=x), _uniform(-0.9, 0.9), torch.atanh, "atanh"),
    "exp2": (lambda x: mb.exp2(x=x), _normal(3), torch.exp2, "exp2"),
}


@precisions
@pytest.mark.parametrize("case", list(UNARY))
def test_unary(case, precision, tmp_path, rng):
    build, gen, ref, op = UNARY[case]
    x = gen(rng)
    (got,) = run_mil(tmp_path, build, {"x": x}, precision, op)
    check(got, ref(R(x, precision)), precision, case)


# ------------------------------------------------------------------------------------ binary


def _q(r, shape):
    """Values on a coarse grid (multiples of 0.5 in [-2, 2]) so that comparisons see ties."""
    return f32(r.integers(-4, 5, shape) / 2)


def _pos(r, shape):
    return f32(r.uniform(0.5, 3, shape))


def _nonzero(r, shape):
    return f32(r.uniform(0.5, 3, shape) * r.choice([-1, 1], shape))


def _norm(r, shape):
    return f32(r.normal(0, 2, shape))


def _bool(r, shape):
    return r.random(shape) < 0.5


# name -> (x generator, y generator, torch reference)
BINARY_FLOAT = {
    "add": (_norm, _norm, torch.add),
    "sub": (_norm, _norm, torch.sub),
    "mul": (_norm, _norm, torch.mul),
    "real_div": (_norm, _nonzero, torch.div),
    "floor_div": (lambda r, s: f32(r.normal(0, 5, s)), _nonzero, lambda a, b: torch.div(a, b, rounding_mode="floor")),
    "mod": (lambda r, s: f32(r.normal(0, 5, s)), _nonzero, torch.remainder),  # Python %: sign of y
    "pow": (_pos, lambda r, s: f32(r.uniform(-2, 2, s)), torch.pow),
    "maximum": (_q, _q, torch.maximum),
    "minimum": (_q, _q, torch.minimum),
    "equal": (_q, _q, torch.eq),
    "not_equal": (_q, _q, torch.ne),
    "less": (_q, _q, torch.lt),
    "less_equal": (_q, _q, torch.le),
    "greater": (_q, _q, torch.gt),
    "greater_equal": (_q, _q, torch.ge),
    "logical_and": (_bool, _bool, torch.logical_and),
    "logical_or": (_bool, _bool, torch.logical_or),
    "logical_xor": (_bool, _bool, torch.logical_xor),
}


def _int(lo, hi, nonzero=False):
    def gen(r, s):
        a = r.integers(lo, hi, s)
        if nonzero:
            a = np.where(a == 0, 1, a)
        return a.astype(np.int32)

    return gen


BINARY_INT = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul,
    "floor_div": lambda a, b: torch.div(a, b, rounding_mode="floor"),
    "mod": torch.remainder,
    "pow": torch.pow,  # non-negative exponents
    "maximum": torch.maximum, "minimum": torch.minimum,
    "equal": torch.eq, "not_equal": torch.ne, "less": torch.lt, "less_equal": torch.le,
    "greater": torch.gt, "greater_equal": torch.ge,
}


def _binary_case(tmp_path, rng, precision, name, xg, yg, ref):
    """One program, four broadcasting patterns: [2,3,4] op [3,1]; [1,4] op [3,1] (both sides
    broadcast); [2,3,4] op rank-0 const; const [4] op [2,3,4] (const on the x side)."""
    x1, y1, x2, y2 = xg(rng, (2, 3, 4)), yg(rng, (3, 1)), xg(rng, (1, 4)), yg(rng, (3, 1))
    y3 = yg(rng, (2, 3, 4))
    c = yg(rng, ())
    cx = xg(rng, (4,))
    fn = getattr(mb, name)

    def build(x1, y1, x2, y2, y3):
        return [fn(x=x1, y=y1), fn(x=x2, y=y2), fn(x=x1, y=c), fn(x=cx, y=y3)]

    got = run_mil(tmp_path, build, {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "y3": y3}, precision, name)
    P = lambda a: R(a, precision)  # noqa: E731
    refs = [ref(P(x1), P(y1)), ref(P(x2), P(y2)), ref(P(x1), P(c)), ref(P(cx), P(y3))]
    check_all(got, refs, precision, [f"{name} [2,3,4]x[3,1]", f"{name} [1,4]x[3,1]", f"{name} x op const",
                                      f"{name} const op x"])


@precisions
@pytest.mark.parametrize("name", list(BINARY_FLOAT))
def test_binary(name, precision, tmp_path, rng):
    xg, yg, ref = BINARY_FLOAT[name]
    _binary_case(tmp_path, rng, precision, name, xg, yg, ref)


@precisions
@pytest.mark.parametrize("name", list(BINARY_INT))
def test_binary_int32(name, precision, tmp_path, rng):
    if name in ("floor_div", "mod"):
        xg, yg = _int(-9, 10), _int(-4, 5, nonzero=True)
    elif name == "pow":
        xg, yg = _int(-5, 6), _int(0, 4)
    else:
        xg, yg = _int(-9, 10), _int(-9, 10)
    _binary_case(tmp_path, rng, precision, name, xg, yg, BINARY_INT[name])


# ------------------------------------------------------------------------------- cast, select


@precisions
def test_cast(precision, tmp_path, rng):
    xf = f32(rng.normal(0, 5, (3, 8)))
    xf.ravel()[:8] = [0.0, -0.0, 2.7, -2.7, 0.5, -0.5, 7.99, -7.99]
    xi = rng.integers(-1000, 1000, (3, 8)).astype(np.int32)
    xi.ravel()[:2] = 0
    xb = rng.random((3, 8)) < 0.5
    xh = f32([1.0001, 3.14159, -2.0e-8, 65519.0, 65520.0, -1.0e5, 70000.0, 6.1e-5])  # fp16 rounding and overflow

    def build(xf, xi, xb, xh):
        return [mb.cast(x=xf, dtype="int32"), mb.cast(x=xf, dtype="bool"), mb.cast(x=xb, dtype="fp32"),
                mb.cast(x=xi, dtype="fp32"), mb.cast(x=xi, dtype="bool"),
                mb.cast(x=mb.cast(x=xh, dtype="fp16"), dtype="fp32")]

    # add_fp16_cast leaves cast ops alone: fp32 -> int32/bool reads the fp32 input directly
    got = run_mil(tmp_path, build, {"xf": xf, "xi": xi, "xb": xb, "xh": xh}, precision, "cast", expect_fp16=False)
    tf, ti, tb = R(xf, precision), R(xi, precision), R(xb, precision)
    refs = [tf.to(torch.int32),  # truncation toward zero
            tf != 0, tb.to(torch.float64), ti.to(torch.float64), ti != 0,
            R(xh, precision).to(torch.float16).to(torch.float64)]
    check_all(got, refs, precision, ["fp32->int32", "fp32->bool", "bool->fp32", "int32->fp32", "int32->bool",
                                     "fp32->fp16->fp32"])


@precisions
def test_select(precision, tmp_path, rng):
    c1, c2 = rng.random((2, 3, 4)) < 0.5, rng.random((1, 3, 1)) < 0.5
    a, b = f32(rng.normal(size=(2, 3, 4))), f32(rng.normal(size=(2, 3, 4)))
    b2 = f32(rng.normal(size=(3, 1)))
    ai, bi = rng.integers(-9, 9, (2, 3, 4)).astype(np.int32), rng.integers(-9, 9, (2, 3, 4)).astype(np.int32)

    def build(c1, c2, a, b, b2, ai, bi):
        return [mb.select(cond=c1, a=a, b=b), mb.select(cond=c2, a=a, b=b),  # cond broadcasts
                mb.select(cond=c1, a=a, b=b2),  # b broadcasts
                mb.select(cond=c1, a=a, b=np.float32(-7.5)),  # scalar const branch
                mb.select(cond=c1, a=ai, b=bi)]

    got = run_mil(tmp_path, build, dict(c1=c1, c2=c2, a=a, b=b, b2=b2, ai=ai, bi=bi), precision, "select")
    P = lambda v: R(v, precision)  # noqa: E731
    refs = [torch.where(P(c1), P(a), P(b)), torch.where(P(c2), P(a), P(b)), torch.where(P(c1), P(a), P(b2)),
            torch.where(P(c1), P(a), torch.tensor(-7.5, dtype=torch.float64)), torch.where(P(c1), P(ai), P(bi))]
    check_all(got, refs, precision, ["same shape", "cond broadcast", "b broadcast", "scalar branch", "int32"])



# ----------------------------------------------------------------------------- fp16 overflow


@pytest.mark.parametrize("name,x,build,value", [
    ("mul", 100.0, lambda x: mb.mul(x=x, y=np.float32(1000.0)), 100000.0),
    ("exp", 12.0, lambda x: mb.exp(x=x), math.exp(12.0)),
])
def test_fp16_overflow_is_inf(name, x, build, value, tmp_path):
    """Results above 65504 overflow to +inf in an fp16 package, as on device; the fp32 package
    gives the finite value."""
    feed = {"x": f32([x, 1.0])}
    (g16,) = run_mil(tmp_path, build, feed, "fp16", name)
    (g32,) = run_mil(tmp_path, build, feed, "fp32", name)
    assert g16[0] == np.inf, f"fp16 {name}: got {g16[0]}, expected +inf"
    assert np.isfinite(g16[1])
    assert abs(float(g32[0]) - value) <= 1e-6 * value, f"fp32 {name}: got {g32[0]}, expected {value}"


#: MIL ops this file tests (tests/test_mil_ops.py checks every interpreter op is covered).
COVERED = ({case[3] for case in UNARY.values()} | set(BINARY_FLOAT) | set(BINARY_INT) | {"cast", "select"})
