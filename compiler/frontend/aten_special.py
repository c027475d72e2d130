"""ATen -> IR lowerings of special functions as elementwise MIL arithmetic (registered into
:data:`tlc.frontend.common.LOWERINGS`): ``lgamma``, ``digamma``, ``polygamma``, ``erfinv``,
``ndtri``, ``erfcx``, ``log_ndtr``, ``zeta``, Chebyshev polynomials T/U/V/W (also shifted) of
tensor degree. The Bessel functions are in :mod:`tlc.frontend.aten_bessel`.

Methods (fp32 accuracy, checked against torch in tests/test_lowerings.py and by
benchmarks/bench_opinfo.py):

* lgamma / digamma / polygamma: the recurrence f(x) = f(x + 8) - (the 8 terms it shifts over),
  then the Stirling / asymptotic series at x + 8 >= 8 (Abramowitz & Stegun 6.1.41, 6.3.18,
  6.4.11), where five terms are below fp32 resolution; lgamma and digamma use the reflection
  formulas (A&S 6.1.17, 6.3.7, DLMF 5.15.6 with the n-th derivative of cot as a polynomial
  in cot) for x < 0.5.
* erfinv: M. Giles, "Approximating the erfinv function", GPU Computing Gems Jade (2011), the
  single-precision branch pair, then one Newton step on erf (which the op table has).
* erfcx: exp(x^2) erfc(x) for x < 2, the Laplace continued fraction evaluated backwards from 60
  terms for x >= 2 (A&S 7.1.14).
* zeta(s, q): Euler-Maclaurin summation with 9 terms and 6 Bernoulli corrections (the method of
  Cephes ``zeta``).
* Chebyshev T/U/V/W: closed forms in acos/acosh of x, so a tensor degree needs no loop.
  Hermite, Laguerre and Legendre polynomials have no such form and keep the fallback.
"""
from __future__ import annotations

import math

from ..errors import UnsupportedOpError
from .common import Shorthand, lower, operand, with_shorthand


# ------------------------------------------------------------------------- gamma family

_SHIFT = 8
#: Stirling: lgamma(z) ~ (z - 1/2) ln z - z + ln(2 pi)/2 + sum B_2k / (2k (2k-1) z^(2k-1)) (A&S 6.1.41)
_STIRLING = [1 / 12, -1 / 360, 1 / 1260, -1 / 1680, 1 / 1188]
#: digamma: psi(z) ~ ln z - 1/(2z) - sum B_2k / (2k z^2k) (A&S 6.3.18)
_PSI = [1 / 12, -1 / 120, 1 / 252, -1 / 240, 1 / 132]
_BERNOULLI = [1 / 6, -1 / 30, 1 / 42, -1 / 30, 5 / 66, -691 / 2730, 7 / 6]  # B_2, B_4, ...


def _lgamma_pos(e, z):
    """lgamma for z >= 1/2: Stirling at z + 8 minus the logs of the 8 shifted factors."""
    w = e("add", z, float(_SHIFT))
    r = e.inv(w)
    r2 = e("mul", r, r)
    series = e("mul", r, e.horner(r2, _STIRLING))
    s = e("add", e("sub", e("mul", e("sub", w, 0.5), e.log(w)), w), 0.5 * math.log(2 * math.pi))
    s = e("add", s, series)
    for k in range(_SHIFT):
        s = e("sub", s, e.log(e("add", z, float(k))))
    return s


def _reflect_sin(e, x):
    """|sin(pi x)| computed from x - round(x) (exact argument reduction)."""
    return e("abs", e("sin", e("mul", e("sub", x, e("round", x)), math.pi)))


@lower("aten.lgamma.default")
def _lgamma(L, x):
    """log|Gamma(x)|: Stirling with an 8-step shift for x >= 1/2; for x < 1/2 the reflection
    log(pi / |sin(pi x)|) - lgamma(1 - x); +inf at the poles (0, -1, ...), as torch."""
    x, e = with_shorthand(L, x)
    small = e("less", x, 0.5)
    z = e("select", small, e("sub", 1.0, x), x)
    lg = _lgamma_pos(e, z)
    refl = e("sub", e("sub", math.log(math.pi), e.log(_reflect_sin(e, x))), lg)
    return e("select", small, refl, lg)


@lower("aten.digamma.default")
def _digamma(L, x):
    """digamma: the asymptotic series at x + 8 minus sum 1/(x + k); reflection
    psi(1 - x) - pi / tan(pi x) for x < 1/2; -inf at 0 and NaN at negative integers (torch)."""
    x, e = with_shorthand(L, x)
    small = e("less", x, 0.5)
    z = e("select", small, e("sub", 1.0, x), x)
    w = e("add", z, float(_SHIFT))
    r = e.inv(w)
    r2 = e("mul", r, r)
    psi = e("sub", e("sub", e.log(w), e("mul", r, 0.5)), e("mul", r2, e.horner(r2, _PSI)))
    for k in range(_SHIFT):
        psi = e("sub", psi, e.inv(e("add", z, float(k))))
    frac = e("sub", x, e("round", x))
    cot = e("real_div", math.pi, e("tan", e("mul", frac, math.pi)))
    refl = e("sub", psi, cot)
    y = e("select", small, refl, psi)
    pole = e("logical_and", e("less_equal", x, 0.0), e("equal", frac, 0.0))
    y = e("select", pole, float("nan"), y)
    return e("select", e("equal", x, 0.0), float("-inf"), y)


def _cot_derivative(n: int) -> list[float]:
    """Coefficients (lowest first) of P_n with d^n/du^n cot u = P_n(cot u): P_0(c) = c,
    P_(k+1)(c) = -(1 + c^2) P_k'(c) (the chain rule on cot' = -(1 + cot^2))."""
    p = [0.0, 1.0]
    for _ in range(n):
        d = [i * p[i] for i in range(1, len(p))]  # P'
        q = [0.0] * (len(d) + 2)
        for i, c in enumerate(d):
            q[i] -= c
            q[i + 2] -= c
        p = q
    return p


@lower("aten.polygamma.default")
def _polygamma(L, n, x):
    """polygamma(n, x): n = 0 is digamma; n >= 1 for z >= 1/2: (-1)^(n+1) n! sum_k 1/(z+k)^(n+1)
    over the 8 shifted terms plus the asymptotic series at z + 8 (A&S 6.4.11); for x < 1/2 the
    reflection psi^(n)(x) = (-1)^n psi^(n)(1 - x) - pi^(n+1) P_n(cot(pi x)) (DLMF 5.15.6, P_n
    from :func:`_cot_derivative`); (-1)^(n+1) inf at 0, -1, ... (torch's zeta-based kernel)."""
    if not isinstance(n, int):
        raise UnsupportedOpError("polygamma with a tensor order")
    if n == 0:
        return _digamma(L, x)
    x, e = with_shorthand(L, x)
    small = e("less", x, 0.5)
    z = e("select", small, e("sub", 1.0, x), x)
    w = e("add", z, float(_SHIFT))
    fact = math.factorial(n)
    sign = 1.0 if n % 2 == 1 else -1.0
    # asymptotic: (n-1)!/w^n + n!/(2 w^(n+1)) + sum_k B_2k (2k+n-1)!/(2k)! / w^(2k+n)
    r = e.inv(w)
    series = e("mul", e("pow", r, float(n)), float(math.factorial(n - 1)))
    series = e("add", series, e("mul", e("pow", r, float(n + 1)), fact / 2.0))
    for k, b2k in enumerate(_BERNOULLI[:6], start=1):
        c = b2k * math.factorial(2 * k + n - 1) / math.factorial(2 * k)
        series = e("add", series, e("mul", e("pow", r, float(2 * k + n)), c))
    acc = series
    for k in range(_SHIFT):
        acc = e("add", acc, e("mul", e("pow", e.inv(e("add", z, float(k))), float(n + 1)), float(fact)))
    direct = e("mul", acc, sign)  # psi^(n)(z)
    frac = e("sub", x, e("round", x))
    cot = e.inv(e("tan", e("mul", frac, math.pi)))
    refl = e("sub", e("mul", direct, -sign), e("mul", e.horner(cot, _cot_derivative(n)), math.pi ** (n + 1)))
    y = e("select", small, refl, direct)
    pole = e("logical_and", e("less_equal", x, 0.0), e("equal", frac, 0.0))
    return e("select", pole, sign * float("inf"), y)


# ----------------------------------------------------------------------- error function

#: Giles (2011), single precision: central branch (w < 5) and tail branch coefficients.
_ERFINV_C = [1.50140941, 0.246640727, -0.00417768164, -0.00125372503, 0.00021858087, -4.39150654e-06,
             -3.5233877e-06, 3.43273939e-07, 2.81022636e-08]
_ERFINV_T = [2.83297682, 1.00167406, 0.00943887047, -0.0076224613, 0.00573950773, -0.00367342844,
             0.00134934322, 0.000100950558, -0.000200214257]


def _erfinv_from(e, y, one_minus, one_plus, newton=True):
    """erfinv(y) with 1 - y and 1 + y given (ndtri passes them without cancellation)."""
    w = e("mul", e.log(e("mul", one_minus, one_plus)), -1.0)
    central = e.horner(e("sub", w, 2.5), _ERFINV_C)
    tail = e.horner(e("sub", e("sqrt", w), 3.0), _ERFINV_T)
    x = e("mul", e("select", e("less", w, 5.0), central, tail), y)
    if newton:  # x -= (erf(x) - y) / (2/sqrt(pi) exp(-x^2)), skipped where that derivative underflows
        deriv = e("mul", e("exp", e("mul", e("mul", x, x), -1.0)), 2.0 / math.sqrt(math.pi))
        step = e("real_div", e("sub", e("erf", x), y), deriv)
        ok = e("logical_and", e("greater", deriv, 1e-30), e("less", e("abs", step), 1.0))
        x = e("select", ok, e("sub", x, step), x)
    return x


@lower("aten.erfinv.default")
def _erfinv(L, x):
    y, e = with_shorthand(L, x)
    x = _erfinv_from(e, y, e("sub", 1.0, y), e("add", 1.0, y))
    return e("select", e("equal", e("abs", y), 1.0), e("mul", y, float("inf")), x)


@lower("aten.special_ndtri.default")
def _ndtri(L, p):
    """ndtri(p) = sqrt(2) erfinv(2p - 1), with 1 -/+ (2p - 1) formed as 2(1 - p) and 2p."""
    p, e = with_shorthand(L, p)
    y = e("sub", e("mul", p, 2.0), 1.0)
    x = _erfinv_from(e, y, e("mul", e("sub", 1.0, p), 2.0), e("mul", p, 2.0), newton=False)
    x = e("mul", x, math.sqrt(2.0))
    x = e("select", e("equal", p, 0.0), float("-inf"), x)
    return e("select", e("equal", p, 1.0), float("inf"), x)


def _erfcx_value(e, x):
    """exp(x^2) erfc(x): directly for x < 2, the continued fraction for x >= 2."""
    direct = e("mul", e("exp", e("mul", x, x)), e("sub", 1.0, e("erf", x)))
    z = e("maximum", x, 2.0)
    t = z
    for k in range(60, 0, -1):  # x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))
        t = e("add", z, e("real_div", k / 2.0, t))
    cf = e("real_div", 1.0 / math.sqrt(math.pi), t)
    return e("select", e("less", x, 2.0), direct, cf)


@lower("aten.special_erfcx.default")
def _erfcx(L, x):
    x, e = with_shorthand(L, x)
    return _erfcx_value(e, x)


@lower("aten.special_log_ndtr.default")
def _log_ndtr(L, x):
    """log Phi(x) = log(erfc(-x / sqrt 2) / 2): through erfcx in the lower tail (no underflow),
    log1p(-erfc(x / sqrt 2) / 2) in the upper one."""
    x, e = with_shorthand(L, x)
    t = e("mul", x, -1.0 / math.sqrt(2.0))
    lower_tail = e("add", e("sub", e.log(_erfcx_value(e, t)), e("mul", t, t)), math.log(0.5))
    u = e("mul", e("sub", 1.0, e("erf", e("mul", x, 1.0 / math.sqrt(2.0)))), 0.5)  # upper tail mass
    uu = e("add", e("mul", u, -1.0), 1.0)
    upper_tail = e("select", e("equal", uu, 1.0), e("mul", u, -1.0),
                   e("mul", e("real_div", e.log(uu), e("sub", uu, 1.0)), e("mul", u, -1.0)))
    return e("select", e("less", x, 0.0), lower_tail, upper_tail)


@lower("aten.special_zeta.default", "aten.special_zeta.other_scalar", "aten.special_zeta.self_scalar")
def _zeta(L, s, q):
    """Hurwitz zeta(s, q) = sum_k (q + k)^-s: 9 terms summed, then Euler-Maclaurin's tail
    (q+N)^(1-s)/(s-1) + (q+N)^-s / 2 + sum_j B_2j/(2j)! s(s+1)...(s+2j-2) (q+N)^(-s-2j+1).
    s = 1 gives +inf; s < 1 NaN (torch)."""
    dt = L.out_type().dtype
    e = Shorthand(L, dt)
    s, q = operand(L, s, dt), operand(L, q, dt)
    n = 9
    total = None
    for k in range(n):
        t = e("pow", e("add", q, float(k)), e("mul", s, -1.0))
        total = t if total is None else e("add", total, t)
    a = e("add", q, float(n))
    tail = e("real_div", e("pow", a, e("sub", 1.0, s)), e("sub", s, 1.0))
    tail = e("add", tail, e("mul", e("pow", a, e("mul", s, -1.0)), 0.5))
    fact = e("mul", s, 1.0)
    power = e("pow", a, e("sub", -1.0, s))  # a^(-s-1)
    inv_a2 = e.inv(e("mul", a, a))
    for j, b in enumerate(_BERNOULLI[:6], start=1):
        tail = e("add", tail, e("mul", e("mul", fact, power), b / math.factorial(2 * j)))
        fact = e("mul", fact, e("mul", e("add", s, float(2 * j - 1)), e("add", s, float(2 * j))))
        power = e("mul", power, inv_a2)
    y = e("add", total, tail)
    y = e("select", e("equal", s, 1.0), float("inf"), y)
    return e("select", e("less", s, 1.0), float("nan"), y)


# ------------------------------------------------------------- Chebyshev polynomials

#: kind -> (T/U/V/W inside [-1, 1] as (trig, offset, half-angle divisor); value at x = 1; at
#: x = -1) with m = trunc(n) >= 0; the x = +-1 values are torch's special cases (ATen Math.h).
_CHEBYSHEV = {
    "t": ("cos", 0.0, None, lambda e, m, s: 1.0, lambda e, m, s: s),
    "u": ("sin", 1.0, "sin", lambda e, m, s: e("add", m, 1.0), lambda e, m, s: e("mul", e("add", m, 1.0), s)),
    "v": ("cos", 0.5, "cos", lambda e, m, s: 1.0, lambda e, m, s: e("mul", e("add", e("mul", m, 2.0), 1.0), s)),
    "w": ("sin", 0.5, "sin", lambda e, m, s: e("add", e("mul", m, 2.0), 1.0), lambda e, m, s: s),
}
#: parity: P_m(-y) = (-1)^m Q_m(y) with Q the kind below (V and W swap, A&S 22.5 / Mason &
#: Handscomb, "Chebyshev Polynomials" (2003) 1.2.3)
_MIRROR = {"t": "t", "u": "u", "v": "w", "w": "v"}


def _cheb_closed(e, kind, a, m, hyperbolic: bool):
    """T/U/V/W_m at cos(a) (or cosh(a) when ``hyperbolic``): cos(m a); sin((m+1)a)/sin a;
    cos((m+1/2)a)/cos(a/2); sin((m+1/2)a)/sin(a/2) (cosh/sinh for the hyperbolic branch)."""
    trig, off, den, _, _ = _CHEBYSHEV[kind]
    f = {"cos": "cosh", "sin": "sinh"} if hyperbolic else {"cos": "cos", "sin": "sin"}
    num = e(f[trig], e("mul", e("add", m, off), a))
    if den is None:
        return num
    return e("real_div", num, e(f[den], e("mul", a, 1.0 if kind == "u" else 0.5)))


def _chebyshev(kind: str, shifted: bool):
    def fn(L, x, n):
        """Chebyshev polynomial of the first to fourth kind (T, U, V, W; ``shifted``: of 2x - 1)
        with a per-element degree n (truncated to an integer as torch does; 0 for n < 0), in
        closed form instead of torch's degree-long recurrence, so any tensor n stays static:
        cos/sin of m acos(x) inside [-1, 1], cosh/sinh of m acosh|x| outside, mirrored by
        parity for x < -1; x = +-1 takes torch's special values. fp32: about 1e-6 relative
        inside, growing like m * 1e-7 outside."""
        from .aten_math import trunc_value

        dt = L.out_type().dtype
        e = Shorthand(L, dt)
        x, n = operand(L, x, dt), operand(L, n, dt)
        if shifted:
            x = e("sub", e("mul", x, 2.0), 1.0)
        m = trunc_value(L, n, f"{L.node.name}_m")
        sgn = e("sub", 1.0, e("mul", e("sub", m, e("mul", e("floor", e("mul", m, 0.5)), 2.0)), 2.0))  # (-1)^m
        inside = _cheb_closed(e, kind, e("acos", e("clip", x, alpha=-1.0, beta=1.0)), m, False)
        y = e("maximum", e("abs", x), 1.0)
        t = e.log(e("add", y, e("sqrt", e("sub", e("mul", y, y), 1.0))))  # acosh |x|
        right = _cheb_closed(e, kind, t, m, True)
        left = e("mul", _cheb_closed(e, _MIRROR[kind], t, m, True), sgn)
        r = e("select", e("less", x, -1.0), left, e("select", e("greater", x, 1.0), right, inside))
        _, _, _, at_one, at_minus_one = _CHEBYSHEV[kind]
        r = e("select", e("equal", x, 1.0), at_one(e, m, sgn), r)
        r = e("select", e("equal", x, -1.0), at_minus_one(e, m, sgn), r)
        return e("select", e("less", m, 0.0), 0.0, r)
    return fn


for _kind in "tuvw":
    lower(*(f"aten.special_chebyshev_polynomial_{_kind}.{o}" for o in ("default", "n_scalar", "x_scalar")))(
        _chebyshev(_kind, False))
    lower(*(f"aten.special_shifted_chebyshev_polynomial_{_kind}.{o}" for o in ("default", "n_scalar", "x_scalar")))(
        _chebyshev(_kind, True))
