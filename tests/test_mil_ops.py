"""Per-op numerics of tlc's MIL interpreter against torch.

Every MIL op the interpreter supports (every key of ``tlc.ops.OPS`` except ``const``) is built
with coremltools' MIL Builder over its attribute combinations, converted by ``ct.convert`` with
tlc's pass pipeline at FLOAT32 and FLOAT16 compute precision, saved, loaded and run by
:class:`tlc.runtime.MILInterpreter`, and compared with an independent torch reference computed in
float64:

* fp32 packages: rel-L2 <= 1e-5 (exact for int/bool results);
* fp16 packages: rel-L2 <= 1e-2 (exact for int/bool results), no NaN/inf where the reference is
  finite. With FLOAT16 coremltools casts the fp32 inputs (and const weights) to fp16, so the
  reference is computed from the fp16-rounded values: the tolerance measures the op, not the
  input rounding.

Each test also asserts that the op under test is present in the converted package (so that no
coremltools pass folded it away and the test is not vacuous).
"""
from __future__ import annotations

import contextlib
import io
import itertools
import logging
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, Program, types

import tlc
from tlc.runtime import MILInterpreter

PRECISIONS = ("fp32", "fp16")
TOL = {"fp32": 1e-5, "fp16": 1e-2}
_COMPUTE = {"fp32": ct.precision.FLOAT32, "fp16": ct.precision.FLOAT16}
_count = itertools.count()


# ----------------------------------------------------------------------------------- helpers


#: coremltools' own fp16 conversion, minimal: these tests check the interpreter on programs that
#: coremltools casts to fp16 (tlc's packages get their fp16 from tlc's IR instead).
FP16_PIPELINE = [
    "common::dedup_op_and_var_names",  # add_fp16_cast relies on its unique-name cache
    "common::add_fp16_cast",  # removed by ct.convert for compute_precision=FLOAT32
    "common::update_output_dtypes",
    "common::const_elimination",
    "common::dead_code_elimination",
    "common::cast_optimization",
    "common::dead_code_elimination",
]


def run_mil(tmp_path, build, inputs, precision, op, target=None, expect_fp16=True):
    """Build ``main(**inputs)`` with the MIL Builder (``build(**vars)`` returns a Var or a list
    of Vars), convert it at ``precision`` with tlc's pass pipeline, save it under ``tmp_path``,
    check that MIL op ``op`` is in the package, run it with :class:`MILInterpreter` and return
    the outputs as a list of arrays. For an fp16 package with float inputs, ``expect_fp16``
    asserts that some op computes in fp16 (that the FLOAT16 conversion took effect).

    Float inputs are fp32 placeholders, int inputs int32. Core ML has no bool I/O: a bool input
    is an int32 placeholder cast to bool inside the program, a bool output is cast to int32 and
    turned back into bool here (after checking it holds only 0/1).
    """
    target = target or ct.target.iOS17
    inputs = {k: np.asarray(v) for k, v in inputs.items()}
    feeds, phs = {}, {}
    for name, a in inputs.items():
        if a.dtype.kind == "f":
            feeds[name], dt = a.astype(np.float32), types.fp32
        elif a.dtype.kind in "iub":
            feeds[name], dt = a.astype(np.int32), types.int32
        else:
            raise TypeError(a.dtype)
        phs[name] = mb.placeholder(shape=a.shape, dtype=dt)
    with Function(phs, opset_version=target) as func:
        args = {n: (mb.cast(x=func.inputs[n], dtype="bool", name=f"{n}_bool") if inputs[n].dtype == np.bool_
                    else func.inputs[n]) for n in inputs}
        outs = build(**args)
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        is_bool = [o.dtype == types.bool for o in outs]
        outs = [mb.cast(x=o, dtype="int32", name=f"out{i}_int") if b else o for i, (o, b) in enumerate(zip(outs, is_bool))]
        func.set_outputs(outs)
    prog = Program()
    prog.add_function("main", func)
    pipeline = ct.PassPipeline(pass_names=list(FP16_PIPELINE), pipeline_name="t")
    path = tmp_path / f"{op}_{precision}_{next(_count)}.mlpackage"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        model = ct.convert(prog, convert_to="mlprogram", compute_precision=_COMPUTE[precision],
                           minimum_deployment_target=target, pass_pipeline=pipeline, skip_model_load=True)
        model.save(str(path))
    interp = MILInterpreter(path)
    hist = interp.op_histogram()
    assert op in hist, f"op {op} is not in the converted package (ops: {hist})"
    if expect_fp16 and precision == "fp16" and any(a.dtype.kind == "f" for a in inputs.values()):
        from tlc.runtime.mil_interpreter import _walk

        assert any(_is_fp16(o) for o in _walk(interp._ops)), "the FLOAT16 package computes nothing in fp16"
    res = interp.run(feeds)
    got = [res[n] for n in interp.outputs]
    for i, b in enumerate(is_bool):
        if b:
            assert got[i].dtype == np.int32 and set(np.unique(got[i]).tolist()) <= {0, 1}, got[i]
            got[i] = got[i].astype(bool)
    return got


def _is_fp16(op):
    return op.outputs and op.outputs[0].dtype == types.fp16


def R(a, precision):
    """The value a package computes with, as a torch tensor: float arrays in float64 (rounded to
    fp16 first for an fp16 package), int/bool arrays unchanged."""
    a = np.asarray(a)
    if a.dtype.kind == "f":
        if precision == "fp16":
            with np.errstate(over="ignore"):  # values above 65504 become inf, as in the package
                a = a.astype(np.float16)
        return torch.from_numpy(a.astype(np.float64))
    return torch.from_numpy(a.copy())


def check(got, ref, precision, what=""):
    """Compare an interpreter output with the float64 torch reference (see module docstring)."""
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    got = np.asarray(got)
    assert got.shape == ref.shape, f"{what}: shape {list(got.shape)}, reference {list(ref.shape)}"
    if ref.dtype == np.bool_:
        assert got.dtype == np.bool_, f"{what}: dtype {got.dtype}, expected bool"
        np.testing.assert_array_equal(got, ref, err_msg=what)
        return
    if ref.dtype.kind in "iu":
        assert got.dtype.kind in "iu", f"{what}: dtype {got.dtype}, expected an integer dtype"
        np.testing.assert_array_equal(got.astype(np.int64), ref.astype(np.int64), err_msg=what)
        return
    assert got.dtype == np.float32, f"{what}: dtype {got.dtype}, expected float32"
    g = got.astype(np.float64)
    fin = np.isfinite(ref)
    bad = fin & ~np.isfinite(g)
    assert not bad.any(), f"{what}: {precision} output has {int(bad.sum())} NaN/inf where the reference is finite"
    if not fin.all():  # where the reference overflows (inf) the output must hold the same value
        np.testing.assert_array_equal(g[~fin], ref[~fin], err_msg=what)
        g, ref = np.where(fin, g, 0.0), np.where(fin, ref, 0.0)
    err = float(np.linalg.norm((g - ref).ravel()) / max(float(np.linalg.norm(ref.ravel())), 1e-30))
    if not err <= TOL[precision]:
        d = np.abs(g - ref)
        i = np.unravel_index(np.nanargmax(np.where(np.isnan(d), np.inf, d)), d.shape) if d.size else ()
        raise AssertionError(f"{what}: rel-L2 error {err:.3g} > {TOL[precision]} ({precision}); worst at {i}: "
                             f"got {g[i]!r}, reference {ref[i]!r}")


def check_all(got, refs, precision, labels=None):
    assert len(got) == len(refs)
    for i, (g, r) in enumerate(zip(got, refs)):
        check(g, r, precision, labels[i] if labels else f"output {i}")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def f32(a):
    return np.asarray(a, dtype=np.float32)


precisions = pytest.mark.parametrize("precision", PRECISIONS)


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


# ---------------------------------------------------------------------------- data movement

# MIL reshape: -1 is inferred; 0 copies the input's dimension when len(shape) == rank(x).
RESHAPES = [([4, 6], (4, 6)), ([-1], (24,)), ([0, -1, 2], (2, 6, 2)), ([4, 0, 2], (4, 3, 2)),
            ([0, 4, -1], (2, 4, 3)), ([1, -1, 4, 2], (1, 3, 4, 2)), ([24, 1], (24, 1))]


@precisions
def test_reshape(precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 3, 4)))
    xi = rng.integers(-99, 99, (2, 3, 4)).astype(np.int32)

    def build(x, xi):
        return [mb.reshape(x=x, shape=s) for s, _ in RESHAPES] + [mb.reshape(x=xi, shape=[3, -1, 2])]

    got = run_mil(tmp_path, build, {"x": x, "xi": xi}, precision, "reshape")
    t, ti = R(x, precision), R(xi, precision)
    refs = [torch.reshape(t, want) for _, want in RESHAPES] + [torch.reshape(ti, (3, 4, 2))]
    check_all(got, refs, precision, [f"shape={s}" for s, _ in RESHAPES] + ["int32 [3,-1,2]"])


PERMS = [(0, 1, 2, 3), (3, 2, 1, 0), (0, 2, 3, 1), (1, 0, 3, 2), (2, 3, 0, 1)]


@precisions
def test_transpose(precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 3, 4, 5)))
    xi = rng.integers(-99, 99, (2, 3, 4)).astype(np.int32)

    def build(x, xi):
        return [mb.transpose(x=x, perm=list(p)) for p in PERMS] + [mb.transpose(x=xi, perm=[2, 0, 1])]

    got = run_mil(tmp_path, build, {"x": x, "xi": xi}, precision, "transpose")
    t = R(x, precision)
    refs = [t.permute(*p) for p in PERMS] + [R(xi, precision).permute(2, 0, 1)]
    check_all(got, refs, precision, [f"perm={p}" for p in PERMS] + ["int32"])


EXPAND_AXES = [[0], [-1], [1], [2], [0, 3], [-1, -4], [1, -2], [-3]]


def _expand_ref(t, axes):
    """MIL expand_dims: axes index the output (rank + len(axes)); inserted in ascending order."""
    out_rank = t.dim() + len(axes)
    for a in sorted(a % out_rank for a in axes):
        t = t.unsqueeze(a)
    return t


@precisions
def test_expand_dims(precision, tmp_path, rng):
    x = f32(rng.normal(size=(3, 4)))
    xi = rng.integers(-9, 9, (3, 4)).astype(np.int32)

    def build(x, xi):
        return [mb.expand_dims(x=x, axes=a) for a in EXPAND_AXES] + [mb.expand_dims(x=xi, axes=[1])]

    got = run_mil(tmp_path, build, {"x": x, "xi": xi}, precision, "expand_dims")
    t = R(x, precision)
    refs = [_expand_ref(t, a) for a in EXPAND_AXES] + [R(xi, precision).unsqueeze(1)]
    check_all(got, refs, precision, [f"axes={a}" for a in EXPAND_AXES] + ["int32"])


SQUEEZE_AXES = [[0], [-1], [0, 2], [2, -1], [-5, 4], None]


@precisions
def test_squeeze(precision, tmp_path, rng):
    x = f32(rng.normal(size=(1, 3, 1, 4, 1)))
    xi = rng.integers(-9, 9, (1, 3, 1)).astype(np.int32)

    def build(x, xi):
        return ([mb.squeeze(x=x, axes=a) if a is not None else mb.squeeze(x=x) for a in SQUEEZE_AXES]
                + [mb.squeeze(x=xi)])

    got = run_mil(tmp_path, build, {"x": x, "xi": xi}, precision, "squeeze")
    t = R(x, precision)
    refs = [t.squeeze(tuple(a)) if a is not None else t.squeeze() for a in SQUEEZE_AXES] + [R(xi, precision).squeeze()]
    check_all(got, refs, precision, [f"axes={a}" for a in SQUEEZE_AXES] + ["int32, no axes"])


def _interleave_ref(ts, axis):
    """MIL concat(interleave=True): output[..., i::n, ...] = values[i] along ``axis``."""
    n = len(ts)
    axis = axis % ts[0].dim()
    shape = list(ts[0].shape)
    shape[axis] *= n
    out = torch.empty(shape, dtype=ts[0].dtype)
    for i, t in enumerate(ts):
        out[(slice(None),) * axis + (slice(i, None, n),)] = t
    return out


@precisions
def test_concat(precision, tmp_path, rng):
    a = f32(rng.normal(size=(2, 3, 4)))
    b = f32(rng.normal(size=(2, 1, 4)))
    c = f32(rng.normal(size=(2, 2, 4)))  # const operand
    d = f32(rng.normal(size=(2, 3, 4)))
    e = f32(rng.normal(size=(1, 3, 4)))
    ai, bi = rng.integers(-9, 9, (2, 3)).astype(np.int32), rng.integers(-9, 9, (2, 2)).astype(np.int32)

    def build(a, b, d, e, ai, bi):
        return [
            mb.concat(values=[a, b, c], axis=1),
            mb.concat(values=[a, b, c], axis=-2),
            mb.concat(values=[a, e, d], axis=0),
            mb.concat(values=[a, d], axis=-1),
            mb.concat(values=[a, d], axis=1, interleave=True),
            mb.concat(values=[a, d, a], axis=-1, interleave=True),
            mb.concat(values=[a, d], axis=0, interleave=True),
            mb.concat(values=[ai, bi], axis=1),
        ]

    got = run_mil(tmp_path, build, dict(a=a, b=b, d=d, e=e, ai=ai, bi=bi), precision, "concat")
    P = lambda v: R(v, precision)  # noqa: E731
    ta, tb, tc, td, te = P(a), P(b), P(c), P(d), P(e)
    refs = [torch.cat([ta, tb, tc], 1), torch.cat([ta, tb, tc], -2), torch.cat([ta, te, td], 0), torch.cat([ta, td], -1),
            _interleave_ref([ta, td], 1), _interleave_ref([ta, td, ta], -1), _interleave_ref([ta, td], 0),
            torch.cat([P(ai), P(bi)], 1)]
    check_all(got, refs, precision, ["axis 1 (const operand)", "axis -2", "axis 0", "axis -1", "interleave axis 1",
                                     "interleave 3 inputs axis -1", "interleave axis 0", "int32"])


@precisions
def test_split(precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 6, 5)))
    xi = rng.integers(-9, 9, (4, 3)).astype(np.int32)

    def build(x, xi):
        return [*mb.split(x=x, split_sizes=[1, 3, 2], axis=1), *mb.split(x=x, num_splits=5, axis=-1),
                *mb.split(x=x, num_splits=2, axis=0), *mb.split(x=x, split_sizes=[4, 1], axis=-1),
                *mb.split(x=xi, num_splits=2, axis=0)]

    got = run_mil(tmp_path, build, {"x": x, "xi": xi}, precision, "split")
    t = R(x, precision)
    refs = [*torch.split(t, [1, 3, 2], 1), *torch.chunk(t, 5, -1), *torch.chunk(t, 2, 0), *torch.split(t, [4, 1], -1),
            *torch.chunk(R(xi, precision), 2, 0)]
    labels = (["split_sizes [1,3,2] axis 1"] * 3 + ["num_splits 5 axis -1"] * 5 + ["num_splits 2 axis 0"] * 2
              + ["split_sizes [4,1] axis -1"] * 2 + ["int32"] * 2)
    check_all(got, refs, precision, [f"{lab} part {i}" for i, lab in enumerate(labels)])


# (kwargs for mb.slice_by_index, torch index)
SLICES = [
    ("plain, stride 2", dict(begin=[1, 0, 2], end=[3, 6, 7], stride=[1, 2, 2]),
     (slice(1, 3), slice(0, 6, 2), slice(2, 7, 2))),
    ("negative begin/end", dict(begin=[-3, -5, 0], end=[-1, -1, 7], stride=[1, 1, 3]),
     (slice(-3, -1), slice(-5, -1), slice(0, 7, 3))),
    ("begin_mask/end_mask", dict(begin=[2, 1, 5], end=[0, 4, 0], stride=[1, 1, 2], begin_mask=[False, True, True],
                                 end_mask=[True, False, True]),
     (slice(2, None), slice(None, 4), slice(None, None, 2))),
    ("squeeze_mask", dict(begin=[1, 0, -2], end=[2, 6, -1], squeeze_mask=[True, False, True]),
     (1, slice(0, 6), -2)),
    ("squeeze_mask + masks + stride 2", dict(begin=[-4, 3, 0], end=[0, 0, 0], stride=[2, 1, 3], begin_mask=[False, False, True],
                                             end_mask=[True, True, True], squeeze_mask=[False, True, False]),
     (slice(-4, None, 2), 3, slice(None, None, 3))),
    ("negative begin, stride 2", dict(begin=[-4, -6, -7], end=[4, -1, -2], stride=[2, 2, 2]),
     (slice(-4, 4, 2), slice(-6, -1, 2), slice(-7, -2, 2))),
    ("end past the size (clamped)", dict(begin=[0, 2, 1], end=[10, 100, 7], stride=[3, 1, 1]),
     (slice(0, 10, 3), slice(2, 100), slice(1, 7))),
]


@precisions
def test_slice_by_index(precision, tmp_path, rng):
    x = f32(rng.normal(size=(4, 6, 7)))
    xi = rng.integers(-99, 99, (4, 6)).astype(np.int32)

    def build(x, xi):
        return ([mb.slice_by_index(x=x, **kw) for _, kw, _ in SLICES]
                + [mb.slice_by_index(x=xi, begin=[1, -5], end=[0, 6], stride=[2, 2], end_mask=[True, False])])

    got = run_mil(tmp_path, build, {"x": x, "xi": xi}, precision, "slice_by_index")
    t = R(x, precision)
    refs = [t[idx] for _, _, idx in SLICES] + [R(xi, precision)[1::2, -5:6:2]]
    check_all(got, refs, precision, [lab for lab, _, _ in SLICES] + ["int32"])


def _index_lists_ref(t, idx):
    """x[idx] for numpy-style slices (negative steps included) through explicit index lists
    (torch tensors cannot be sliced with a negative step)."""
    for ax, sl in enumerate(idx):
        pos = torch.tensor(list(range(*sl.indices(t.shape[ax]))), dtype=torch.long)
        t = t.index_select(ax, pos)
    return t


NEG_SLICES = [
    ("reverse all axes", dict(begin=[0, 0, 0], end=[0, 0, 0], stride=[-1, -1, -1], begin_mask=[True] * 3,
                              end_mask=[True] * 3),
     (slice(None, None, -1),) * 3),
    # A negative index i means max(0, i + n) in MIL (coremltools' solve_slice_by_index_shape fixes
    # the declared output shape that way), so end=-8 on a size-7 axis is 0 and, with a negative
    # stride, element 0 is excluded — unlike NumPy's x[-1:-8:-3].
    ("negative strides with begin/end", dict(begin=[3, 5, -1], end=[0, 0, -8], stride=[-1, -2, -3],
                                             end_mask=[False, True, False]),
     (slice(3, 0, -1), slice(5, None, -2), slice(6, 0, -3))),
]


@precisions
def test_slice_by_index_negative_stride(precision, tmp_path, rng):
    """MIL slice_by_index allows negative strides (numpy semantics; coremltools'
    solve_slice_by_index_shape handles them)."""
    x = f32(rng.normal(size=(4, 6, 7)))

    def build(x):
        return [mb.slice_by_index(x=x, **kw) for _, kw, _ in NEG_SLICES]

    got = run_mil(tmp_path, build, {"x": x}, precision, "slice_by_index")
    t = R(x, precision)
    check_all(got, [_index_lists_ref(t, idx) for _, _, idx in NEG_SLICES], precision, [lab for lab, _, _ in NEG_SLICES])


@precisions
def test_gather(precision, tmp_path, rng):
    x = f32(rng.normal(size=(5, 4, 3)))
    i0 = rng.integers(0, 5, (2, 3)).astype(np.int32)
    i1 = np.array([3, 0, 3, 1], np.int32)  # const indices
    xi = rng.integers(-99, 99, (4, 6)).astype(np.int32)
    i2 = rng.integers(0, 6, (3,)).astype(np.int32)
    i3 = rng.integers(0, 3, (2, 2)).astype(np.int32)

    def build(x, i0, xi, i2, i3):
        return [mb.gather(x=x, indices=i0, axis=0), mb.gather(x=x, indices=i1, axis=1),
                mb.gather(x=x, indices=i3, axis=-1), mb.gather(x=xi, indices=i2, axis=1),
                mb.gather(x=x, indices=i0, axis=0, validate_indices=True)]

    got = run_mil(tmp_path, build, {"x": x, "i0": i0, "xi": xi, "i2": i2, "i3": i3}, precision, "gather")
    t, ti = R(x, precision), R(xi, precision)
    L = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    refs = [t[L(i0)], t[:, L(i1)], t[:, :, L(i3)], ti[:, L(i2)], t[L(i0)]]
    check_all(got, refs, precision, ["axis 0, [2,3] indices", "axis 1, const indices", "axis -1", "int32 x, axis 1",
                                     "validate_indices=True"])


@precisions
def test_tile(precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 3)))
    y = f32(rng.normal(size=(2, 1, 3)))
    xi = rng.integers(-9, 9, (2, 2)).astype(np.int32)

    def build(x, y, xi):
        return [mb.tile(x=x, reps=[2, 3]), mb.tile(x=y, reps=[1, 4, 2]), mb.tile(x=x, reps=[1, 1]),
                mb.tile(x=xi, reps=[3, 1])]

    got = run_mil(tmp_path, build, {"x": x, "y": y, "xi": xi}, precision, "tile")
    t = R(x, precision)
    refs = [t.repeat(2, 3), R(y, precision).repeat(1, 4, 2), t.repeat(1, 1), R(xi, precision).repeat(3, 1)]
    check_all(got, refs, precision, ["reps [2,3]", "reps [1,4,2]", "reps [1,1]", "int32"])


@precisions
def test_reverse(precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 3, 4)))
    xi = rng.integers(-9, 9, (3, 5)).astype(np.int32)

    def build(x, xi):
        return [mb.reverse(x=x, axes=[0, 2]), mb.reverse(x=x, axes=[-2]), mb.reverse(x=x), mb.reverse(x=xi, axes=[1])]

    got = run_mil(tmp_path, build, {"x": x, "xi": xi}, precision, "reverse")
    t = R(x, precision)
    refs = [torch.flip(t, (0, 2)), torch.flip(t, (1,)), torch.flip(t, (0, 1, 2)), torch.flip(R(xi, precision), (1,))]
    check_all(got, refs, precision, ["axes [0,2]", "axes [-2]", "all axes", "int32"])


def _torch_pad(p):
    """MIL pad lists (before, after) from the first padded axis on; F.pad from the last axis."""
    pairs = [p[i:i + 2] for i in range(0, len(p), 2)]
    return [v for pair in reversed(pairs) for v in pair]


# (mode, pad, constant_val or None, torch pad list or None for _torch_pad(pad))
PADS = [
    ("constant", [1, 2, 0, 3], 1.5),
    ("constant", [2, 1], None),  # last axis only, default constant_val 0
    ("constant", [0, 1, 1, 0, 2, 2], -2.0),  # three axes
    ("reflect", [2, 1, 1, 3], None),
    ("reflect", [0, 0, 4, 5], None),
    ("replicate", [3, 1, 2, 0], None),
    ("replicate", [0, 0, 6, 2], None),
]


@precisions
def test_pad(precision, tmp_path, rng):
    x = f32(rng.normal(size=(1, 2, 5, 6)))

    def build(x):
        outs = []
        for mode, p, cv in PADS:
            kw = {"constant_val": np.float32(cv)} if cv is not None else {}
            outs.append(mb.pad(x=x, pad=np.array(p, np.int32), mode=mode, **kw))
        return outs

    got = run_mil(tmp_path, build, {"x": x}, precision, "pad")
    t = R(x, precision)
    refs = []
    for mode, p, cv in PADS:
        if mode == "constant":
            refs.append(F.pad(t, _torch_pad(p), mode="constant", value=cv or 0.0))
        else:
            refs.append(F.pad(t, _torch_pad(p if len(p) == 4 else [0, 0] + p), mode=mode))
    check_all(got, refs, precision, [f"{m} pad={p} constant_val={cv}" for m, p, cv in PADS])


@precisions
def test_identity(precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 3)))
    xi = rng.integers(-9, 9, (4,)).astype(np.int32)
    got = run_mil(tmp_path, lambda x, xi: [mb.identity(x=x), mb.identity(x=xi)], {"x": x, "xi": xi}, precision, "identity")
    check_all(got, [R(x, precision), R(xi, precision)], precision, ["fp32", "int32"])


# ---------------------------------------------------------------------------------- reductions

REDUCE_AXES = [[1], [-1], [0, 2], [-3, 1], None]


def _dims(axes, rank):
    return tuple(range(rank)) if axes is None else tuple(a % rank for a in axes)


def _prod(t, dims, keep):
    for d in sorted(dims, reverse=True):
        t = torch.prod(t, dim=d, keepdim=keep)
    return t


REDUCE = {
    "reduce_sum": lambda t, d, k: torch.sum(t, dim=d, keepdim=k),
    "reduce_mean": lambda t, d, k: torch.mean(t, dim=d, keepdim=k),
    "reduce_max": lambda t, d, k: torch.amax(t, dim=d, keepdim=k),
    "reduce_min": lambda t, d, k: torch.amin(t, dim=d, keepdim=k),
    "reduce_prod": _prod,
    "reduce_l2_norm": lambda t, d, k: torch.linalg.vector_norm(t, ord=2, dim=d, keepdim=k),
    "reduce_l1_norm": lambda t, d, k: torch.linalg.vector_norm(t, ord=1, dim=d, keepdim=k),
}


def _reduce_case(tmp_path, precision, name, x):
    variants = [(a, k) for a in REDUCE_AXES for k in (False, True)]

    def build(x):
        fn = getattr(mb, name)
        return [fn(x=x, axes=a, keep_dims=k) if a is not None else fn(x=x, keep_dims=k) for a, k in variants]

    got = run_mil(tmp_path, build, {"x": x}, precision, name)
    t = R(x, precision)
    refs = [REDUCE[name](t, _dims(a, t.dim()), k) for a, k in variants]
    check_all(got, refs, precision, [f"{name} axes={a} keep_dims={k}" for a, k in variants])


@precisions
@pytest.mark.parametrize("name", list(REDUCE))
def test_reduce(name, precision, tmp_path, rng):
    if name == "reduce_prod":  # |values| around 1 so that the 24-element product stays in range
        x = f32(rng.uniform(0.6, 1.6, (2, 3, 4)) * rng.choice([-1, 1], (2, 3, 4)))
    else:
        x = f32(rng.normal(0, 2, (2, 3, 4)))
    _reduce_case(tmp_path, precision, name, x)


@precisions
@pytest.mark.parametrize("name", ["reduce_sum", "reduce_max", "reduce_min", "reduce_prod"])
def test_reduce_int32(name, precision, tmp_path, rng):
    x = rng.choice([-2, -1, 1, 2] if name == "reduce_prod" else list(range(-50, 50)), (2, 3, 4)).astype(np.int32)
    _reduce_case(tmp_path, precision, name, x)


# ------------------------------------------------------------------------------ normalization


@precisions
def test_softmax(precision, tmp_path, rng):
    x = f32(rng.normal(0, 3, (2, 3, 4)))
    axes = [0, 1, 2, -1, -3]

    def build(x):
        return [mb.softmax(x=x, axis=a) for a in axes] + [mb.softmax(x=x)]  # default axis -1

    got = run_mil(tmp_path, build, {"x": x}, precision, "softmax")
    t = R(x, precision)
    check_all(got, [torch.softmax(t, a) for a in axes] + [torch.softmax(t, -1)], precision,
              [f"axis={a}" for a in axes] + ["default axis"])


def _layer_norm_ref(t, axes, gamma, beta, eps):
    """Move the normalized axes (ascending) to the end, F.layer_norm, move back. MIL gamma/beta
    have shape x.shape[axes] in ascending axis order (iOS15 normalization.py)."""
    r = t.dim()
    ax = sorted(a % r for a in axes)
    rest = [i for i in range(r) if i not in ax]
    perm = rest + ax
    y = F.layer_norm(t.permute(*perm), [t.shape[a] for a in ax], gamma, beta, eps)
    inv = [perm.index(i) for i in range(r)]
    return y.permute(*inv)


# (axes, gamma, beta, epsilon or None for the default 1e-5).
# Not tested because coremltools 9 rejects them at build time: beta without gamma
# (layer_norm.type_inference reads gamma.shape to check beta: AttributeError) and an omitted
# ``axes`` (its default range(rank) cannot be made a const: ValueError).
LAYER_NORMS = [
    ([-1], False, False, None),
    ([-1], True, True, None),
    ([2, 3], True, False, None),
    ([-2, -1], True, True, 1e-3),
    ([1, 3], True, True, None),
    ([3, 1], True, True, None),
    ([1], False, False, 1e-2),
    ([0, 1, 2, 3], True, True, None),
]


def _given(**kw):
    """The keyword arguments that are not None (MIL's optional inputs)."""
    return {k: v for k, v in kw.items() if v is not None}


@precisions
@pytest.mark.parametrize("axes,gamma,beta,eps", LAYER_NORMS, ids=[f"{a}-g{int(g)}-b{int(b)}-eps{e}" for a, g, b, e in LAYER_NORMS])
def test_layer_norm(axes, gamma, beta, eps, precision, tmp_path, rng):
    x = f32(rng.normal(1.0, 2.0, (2, 3, 4, 5)))
    nshape = [x.shape[a] for a in sorted(a % 4 for a in axes)]
    g = f32(rng.normal(1.0, 0.5, nshape)) if gamma else None
    b = f32(rng.normal(0.0, 0.5, nshape)) if beta else None

    def build(x):
        kw = _given(gamma=g, beta=b, epsilon=None if eps is None else np.float32(eps))
        return mb.layer_norm(x=x, axes=axes, **kw)

    (got,) = run_mil(tmp_path, build, {"x": x}, precision, "layer_norm")
    P = lambda v: None if v is None else R(v, precision)  # noqa: E731
    check(got, _layer_norm_ref(P(x), axes, P(g), P(b), 1e-5 if eps is None else eps), precision)


@precisions
@pytest.mark.parametrize("shape,gamma,beta,eps", [((2, 3, 4, 5), True, True, 1e-3), ((2, 3, 4, 5), False, False, None),
                                                  ((2, 3, 7), True, False, None), ((2, 3, 7), False, True, 0.5),
                                                  ((1, 3, 2, 2, 3), True, True, None)])
def test_batch_norm(shape, gamma, beta, eps, precision, tmp_path, rng):
    c = shape[1]
    x = f32(rng.normal(0.5, 2.0, shape))
    mean, var = f32(rng.normal(0, 1, c)), f32(rng.uniform(0.2, 3, c))
    g = f32(rng.normal(1.0, 0.5, c)) if gamma else None
    b = f32(rng.normal(0.0, 0.5, c)) if beta else None

    def build(x):
        kw = _given(gamma=g, beta=b, epsilon=None if eps is None else np.float32(eps))
        return mb.batch_norm(x=x, mean=mean, variance=var, **kw)

    (got,) = run_mil(tmp_path, build, {"x": x}, precision, "batch_norm")
    P = lambda v: None if v is None else R(v, precision)  # noqa: E731
    ref = F.batch_norm(P(x), P(mean), P(var), P(g), P(b), training=False, eps=1e-5 if eps is None else eps)
    check(got, ref, precision)


# ----------------------------------------------------------------------------------- linalg


@precisions
def test_linear(precision, tmp_path, rng):
    x = f32(rng.normal(size=(2, 3, 8)))
    x1 = f32(rng.normal(size=(8,)))
    w, b = f32(rng.normal(size=(5, 8))), f32(rng.normal(size=(5,)))

    def build(x, x1):
        return [mb.linear(x=x, weight=w, bias=b), mb.linear(x=x, weight=w), mb.linear(x=x1, weight=w, bias=b)]

    got = run_mil(tmp_path, build, {"x": x, "x1": x1}, precision, "linear")
    P = lambda v: R(v, precision)  # noqa: E731
    refs = [F.linear(P(x), P(w), P(b)), F.linear(P(x), P(w)), F.linear(P(x1), P(w), P(b))]
    check_all(got, refs, precision, ["with bias", "without bias", "rank-1 x"])


MATMULS = [
    ((3, 4), (4, 5), False, False),
    ((4, 3), (4, 5), True, False),
    ((3, 4), (5, 4), False, True),
    ((2, 4, 3), (2, 5, 4), True, True),
    ((2, 1, 3, 4), (5, 4, 6), False, False),  # batch broadcasting
    ((3, 4), (2, 4, 5), False, False),  # rank-2 x, batched y
    ((2, 3, 6, 4), (1, 3, 5, 4), False, True),
    # rank-1 operands are not tested: coremltools 9 rejects a rank-1 y (IndexError in
    # matmul.type_inference) and declares [1, N] instead of [B, N] for x[K] @ y[B, K, N].
]


@precisions
def test_matmul(precision, tmp_path, rng):
    xs = [f32(rng.normal(size=xs)) for xs, _, _, _ in MATMULS]
    ys = [f32(rng.normal(size=ys)) for _, ys, _, _ in MATMULS]
    yc = f32(rng.normal(size=(4, 5)))  # const y

    def build(**v):
        outs = [mb.matmul(x=v[f"x{i}"], y=v[f"y{i}"], transpose_x=tx, transpose_y=ty) for i, (_, _, tx, ty) in enumerate(MATMULS)]
        return outs + [mb.matmul(x=v["x0"], y=yc)]

    feeds = {**{f"x{i}": a for i, a in enumerate(xs)}, **{f"y{i}": a for i, a in enumerate(ys)}}
    got = run_mil(tmp_path, build, feeds, precision, "matmul")
    P = lambda v: R(v, precision)  # noqa: E731
    refs = []
    for (x, y, (_, _, tx, ty)) in zip(xs, ys, MATMULS):
        tx_, ty_ = P(x), P(y)
        refs.append(torch.matmul(tx_.transpose(-1, -2) if tx else tx_, ty_.transpose(-1, -2) if ty else ty_))
    refs.append(torch.matmul(P(xs[0]), P(yc)))
    check_all(got, refs, precision, [f"{a}@{b} tx={tx} ty={ty}" for a, b, tx, ty in MATMULS] + ["const y"])


@precisions
def test_scaled_dot_product_attention(precision, tmp_path, rng):
    q, k, v = (f32(rng.normal(size=s)) for s in [(2, 2, 5, 8), (2, 2, 7, 8), (2, 2, 7, 6)])
    bmask = rng.random((5, 7)) < 0.6
    bmask[:, 0] = True  # every query attends to something (torch gives NaN on fully masked rows)
    fmask = f32(rng.normal(0, 2, (2, 1, 5, 7)))
    bconst = rng.random((1, 1, 5, 7)) < 0.5
    bconst[..., 3] = True
    q3, k3, v3 = (f32(rng.normal(size=s)) for s in [(2, 4, 16), (2, 3, 16), (2, 3, 4)])

    def build(q, k, v, bmask, fmask, q3, k3, v3):
        sdpa = mb.scaled_dot_product_attention
        return [sdpa(query=q, key=k, value=v), sdpa(query=q, key=k, value=v, attn_mask=bmask),
                sdpa(query=q, key=k, value=v, attn_mask=fmask), sdpa(query=q, key=k, value=v, attn_mask=bconst),
                sdpa(query=q3, key=k3, value=v3)]

    got = run_mil(tmp_path, build, dict(q=q, k=k, v=v, bmask=bmask, fmask=fmask, q3=q3, k3=k3, v3=v3), precision,
                  "scaled_dot_product_attention", target=ct.target.iOS18)
    P = lambda a: R(a, precision)  # noqa: E731
    sdpa = F.scaled_dot_product_attention
    refs = [sdpa(P(q), P(k), P(v)), sdpa(P(q), P(k), P(v), attn_mask=P(bmask)), sdpa(P(q), P(k), P(v), attn_mask=P(fmask)),
            sdpa(P(q), P(k), P(v), attn_mask=P(bconst)), sdpa(P(q3), P(k3), P(v3))]
    check_all(got, refs, precision, ["no mask", "bool mask [5,7]", "float mask [2,1,5,7]", "const bool mask",
                                     "rank 3"])


# ------------------------------------------------------------------------------ conv & pools


def same_pads(pad_type, in_sp, kernel, strides, dilations):
    """MIL pad_type same / same_lower as explicit (before, after) pairs: output = ceil(in /
    stride), total = max((out - 1) * stride + (k - 1) * dilation + 1 - in, 0); 'same' puts the
    odd unit after, 'same_lower' before."""
    pads = []
    for i, k, s, d in zip(in_sp, kernel, strides, dilations):
        out = math.ceil(i / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - i, 0)
        lo, hi = total // 2, total - total // 2
        pads += [hi, lo] if pad_type == "same_lower" else [lo, hi]
    return pads


def explicit_pads(pad_type, pad, in_sp, kernel, strides, dilations):
    if pad_type == "valid":
        return [0] * (2 * len(in_sp))
    if pad_type == "custom":
        return list(pad)
    return same_pads(pad_type, in_sp, kernel, strides, dilations)


# (x shape, weight shape, pad_type, pad, strides, dilations, groups, bias)
CONVS = [
    ((2, 4, 9, 8), (6, 4, 3, 3), "valid", None, [1, 1], [1, 1], 1, True),
    ((2, 4, 9, 8), (6, 4, 3, 2), "valid", None, [2, 2], [1, 1], 1, False),
    ((2, 4, 9, 8), (6, 4, 3, 3), "custom", [1, 2, 0, 1], [1, 1], [1, 1], 1, True),
    ((2, 4, 9, 8), (6, 4, 3, 3), "custom", [2, 2, 1, 1], [2, 1], [2, 1], 1, False),
    ((2, 4, 9, 8), (6, 4, 3, 3), "same", None, [1, 1], [1, 1], 1, True),
    ((2, 4, 9, 8), (6, 4, 4, 2), "same", None, [1, 1], [1, 1], 1, False),  # odd totals: extra unit after
    ((2, 4, 9, 8), (6, 4, 3, 3), "same", None, [2, 2], [1, 1], 1, True),  # 9 -> even total, 8 -> odd total
    ((2, 4, 9, 8), (6, 4, 3, 3), "same", None, [1, 1], [2, 3], 1, False),
    ((2, 4, 9, 8), (6, 4, 4, 2), "same_lower", None, [1, 1], [1, 1], 1, True),  # odd totals: extra unit before
    ((2, 4, 9, 8), (6, 4, 3, 3), "same_lower", None, [2, 2], [1, 1], 1, False),
    ((2, 4, 9, 8), (6, 4, 2, 3), "same_lower", None, [3, 2], [2, 1], 1, True),
    ((2, 4, 9, 8), (6, 2, 3, 3), "custom", [1, 1, 1, 1], [1, 1], [1, 1], 2, True),  # groups 2
    ((2, 4, 9, 8), (4, 1, 3, 3), "same", None, [1, 1], [1, 1], 4, True),  # depthwise
    ((2, 4, 9, 8), (4, 1, 3, 3), "custom", [0, 1, 2, 0], [2, 1], [1, 2], 4, False),  # depthwise, strided, dilated
    ((2, 4, 9, 8), (8, 1, 3, 3), "valid", None, [1, 1], [1, 1], 4, True),  # depthwise, multiplier 2
    ((2, 4, 9, 8), (6, 4, 1, 1), "valid", None, [1, 1], [1, 1], 1, True),  # 1x1
    ((2, 4, 9, 8), (6, 4, 1, 1), "valid", None, [2, 3], [1, 1], 1, False),  # strided 1x1
    # 1-D
    ((2, 4, 11), (6, 4, 3), "valid", None, [1], [1], 1, True),
    ((2, 4, 11), (6, 4, 3), "custom", [2, 1], [2], [1], 1, False),
    ((2, 4, 11), (6, 4, 4), "same", None, [1], [1], 1, True),
    ((2, 4, 11), (6, 4, 4), "same_lower", None, [1], [1], 1, False),
    ((2, 4, 11), (6, 4, 3), "same", None, [3], [2], 1, True),
    ((2, 4, 11), (6, 4, 3), "same_lower", None, [2], [2], 1, False),
    ((2, 4, 11), (6, 2, 3), "custom", [1, 0], [1], [3], 2, True),
    ((2, 4, 11), (4, 1, 5), "same", None, [2], [1], 4, False),
    # 3-D (MIL conv allows up to 3 spatial axes)
    ((1, 2, 5, 6, 7), (3, 2, 3, 2, 3), "same", None, [2, 1, 2], [1, 1, 1], 1, True),
    ((1, 2, 5, 6, 7), (4, 1, 2, 3, 2), "custom", [1, 0, 0, 2, 1, 1], [1, 2, 1], [2, 1, 1], 2, False),
]


def _conv_id(c):
    xs, ws, pt, pad, s, d, g, b = c
    return f"{len(xs) - 2}d-w{'x'.join(map(str, ws))}-{pt}{pad or ''}-s{s}-d{d}-g{g}-{'bias' if b else 'nobias'}"


@precisions
@pytest.mark.parametrize("case", CONVS, ids=[_conv_id(c) for c in CONVS])
def test_conv(case, precision, tmp_path, rng):
    xs, ws, pad_type, pad, strides, dil, groups, bias = case
    x = f32(rng.normal(size=xs))
    w = f32(rng.normal(size=ws) / np.sqrt(np.prod(ws[1:])))
    b = f32(rng.normal(size=ws[0])) if bias else None

    def build(x):
        kw = {"bias": b} if b is not None else {}
        if pad is not None:
            kw["pad"] = pad
        return mb.conv(x=x, weight=w, pad_type=pad_type, strides=strides, dilations=dil, groups=groups, **kw)

    (got,) = run_mil(tmp_path, build, {"x": x}, precision, "conv")
    P = lambda v: None if v is None else R(v, precision)  # noqa: E731
    pads = explicit_pads(pad_type, pad, xs[2:], ws[2:], strides, dil)
    xp = F.pad(P(x), _torch_pad(pads))
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[len(xs)]
    ref = conv(xp, P(w), P(b), stride=strides, padding=0, dilation=dil, groups=groups)
    check(got, ref, precision, _conv_id(case))


@precisions
def test_conv_dynamic_weight(precision, tmp_path, rng):
    """conv whose weight is a runtime tensor (MIL allows it without dilations)."""
    x, w = f32(rng.normal(size=(2, 4, 9, 8))), f32(rng.normal(size=(6, 2, 3, 3)) / 4)
    b = f32(rng.normal(size=6))

    def build(x, w):
        return mb.conv(x=x, weight=w, bias=b, pad_type="same", strides=[2, 1], groups=2)

    (got,) = run_mil(tmp_path, build, {"x": x, "w": w}, precision, "conv")
    P = lambda v: R(v, precision)  # noqa: E731
    pads = same_pads("same", (9, 8), (3, 3), (2, 1), (1, 1))
    check(got, F.conv2d(F.pad(P(x), _torch_pad(pads)), P(w), P(b), stride=(2, 1), groups=2), precision)


# (x shape, kernel, strides, pad_type, pad, ceil_mode, exclude_padding_from_average)
# ceil_mode needs symmetric pads (MIL) and is not allowed with pad_type same (coremltools).
POOLS = [
    ((2, 3, 9, 8), [2, 2], [2, 2], "valid", None, False, False),
    ((2, 3, 9, 8), [3, 3], [1, 1], "valid", None, False, False),
    ((2, 3, 9, 8), [3, 2], [2, 1], "custom", [1, 1, 1, 0], False, False),
    ((2, 3, 9, 8), [3, 3], [2, 2], "custom", [1, 1, 1, 1], False, True),
    ((2, 3, 9, 8), [3, 3], [2, 2], "custom", [0, 2, 1, 0], False, True),
    ((2, 3, 9, 8), [3, 3], [2, 2], "same", None, False, False),
    ((2, 3, 9, 8), [2, 3], [1, 1], "same", None, False, True),
    ((2, 3, 9, 8), [2, 2], [1, 1], "same_lower", None, False, False),
    ((2, 3, 9, 8), [3, 2], [2, 3], "same_lower", None, False, True),
    ((2, 3, 9, 8), [3, 3], [2, 2], "valid", None, True, False),  # 9: exact fit, 8: last window overhangs
    ((2, 3, 9, 8), [2, 3], [2, 2], "custom", [1, 1, 1, 1], True, False),
    ((2, 3, 9, 8), [3, 3], [2, 2], "custom", [1, 1, 1, 1], True, True),
    ((2, 3, 9, 8), [3, 2], [3, 2], "valid", None, True, True),
    ((2, 3, 11), [3], [2], "valid", None, False, False),
    ((2, 3, 11), [4], [1], "same", None, False, True),
    ((2, 3, 11), [4], [3], "same_lower", None, False, False),
    ((2, 3, 11), [3], [2], "custom", [2, 0], False, True),
    ((2, 3, 10), [3], [2], "custom", [1, 1], True, False),
    # 3-D (ceil_mode is 1-D/2-D only in MIL)
    ((1, 2, 5, 6, 7), [2, 2, 3], [1, 2, 2], "valid", None, False, False),
    ((1, 2, 5, 6, 7), [2, 3, 3], [2, 1, 2], "same_lower", None, False, True),
    ((1, 2, 5, 6, 7), [3, 2, 3], [1, 2, 2], "custom", [1, 1, 0, 1, 1, 1], False, True),
]


def _pool_id(c):
    xs, k, s, pt, pad, ceil, exc = c
    return f"{len(xs) - 2}d-k{k}-s{s}-{pt}{pad or ''}{'-ceil' if ceil else ''}{'-excl' if exc else ''}"


def _pool_ref(kind, t, kernel, strides, pads, ceil_mode, exclude):
    nsp = len(kernel)
    maxp = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nsp]
    avgp = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nsp]
    if ceil_mode:  # symmetric pads: torch's own padding and ceil_mode rules
        p = [pads[2 * i] for i in range(nsp)]
        if kind == "max_pool":
            return maxp(t, kernel, strides, p, ceil_mode=True)
        return avgp(t, kernel, strides, p, ceil_mode=True, count_include_pad=not exclude)
    tp = _torch_pad(pads)
    if kind == "max_pool":
        return maxp(F.pad(t, tp, value=-math.inf), kernel, strides)
    y = avgp(F.pad(t, tp), kernel, strides)  # padding counted in the divisor
    if exclude:
        ones = F.pad(torch.ones_like(t), tp)
        y = y / avgp(ones, kernel, strides)  # divide by the fraction of real elements instead
    return y


# exclude_padding_from_average is an avg_pool attribute: max_pool takes the other cases
POOL_CASES = [(kind, c) for c in POOLS for kind in ("max_pool", "avg_pool") if kind == "avg_pool" or not c[-1]]


@precisions
@pytest.mark.parametrize("kind,case", POOL_CASES, ids=[f"{k}-{_pool_id(c)}" for k, c in POOL_CASES])
def test_pool(kind, case, precision, tmp_path, rng):
    xs, kernel, strides, pad_type, pad, ceil_mode, exclude = case
    x = f32(rng.normal(size=xs))

    def build(x):
        kw = {"pad": pad} if pad is not None else {}
        if kind == "avg_pool":
            kw["exclude_padding_from_average"] = exclude
        return getattr(mb, kind)(x=x, kernel_sizes=kernel, strides=strides, pad_type=pad_type, ceil_mode=ceil_mode, **kw)

    (got,) = run_mil(tmp_path, build, {"x": x}, precision, kind)
    pads = explicit_pads(pad_type, pad, xs[2:], kernel, strides, [1] * len(kernel))
    check(got, _pool_ref(kind, R(x, precision), kernel, strides, pads, ceil_mode, exclude), precision, _pool_id(case))


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


# ----------------------------------------------------------------------------------- coverage

COVERED = ({case[3] for case in UNARY.values()} | set(BINARY_FLOAT) | set(BINARY_INT) | set(REDUCE)
           | {"cast", "select", "reshape", "transpose", "expand_dims", "squeeze", "concat", "split", "slice_by_index",
              "gather", "tile", "reverse", "pad", "identity", "softmax", "layer_norm", "batch_norm", "linear", "matmul",
              "scaled_dot_product_attention", "conv", "max_pool", "avg_pool"})


#: IR ops with no MIL op of that name: emitted as several MIL ops (each covered above) and tested
#: end to end elsewhere (rms_norm: tests/test_rms_norm.py; group_norm: tests/test_one_package.py,
#: tests/test_lowerings.py).
IR_ONLY = {"rms_norm", "group_norm"}

#: test modules that each define ``INTERPRETER_ONLY``, the interpreter-only rows they test
INTERPRETER_ONLY_TESTS = ("test_mil_ops_extra", "test_mil_compression", "test_mil_recurrent", "test_mil_resize",
                         "test_mil_ops_more")



def test_every_interpreter_op_is_covered():
    import importlib

    from test_mil_ops_extra import COVERED as extra_covered  # issue 12's MIL ops
    from test_mil_ops_index import COVERED as index_covered  # issue 10's MIL ops

    # the files that test interpreter-only rows (compiler/ops/mil_only.py, compression.py, ...)
    INTERPRETER_ONLY = set().union(*(importlib.import_module(m).INTERPRETER_ONLY for m in INTERPRETER_ONLY_TESTS))

    mil_ops = {name for name, row in tlc.ops.OPS.items() if row.emit_mil is not None}  # not fallback-only ops
    missing = mil_ops - {"const"} - IR_ONLY - COVERED - index_covered - extra_covered
    interpreter_only = {name for name, row in tlc.ops.OPS.items() if row.interpreter_only}
    assert interpreter_only == INTERPRETER_ONLY, f"untested interpreter-only rows: {sorted(interpreter_only - INTERPRETER_ONLY)}"
    assert not missing, f"MIL ops the interpreter supports but this file does not test: {sorted(missing)}"
