"""ATen -> IR lowerings of Bessel functions as elementwise MIL arithmetic (registered into
:data:`tlc.frontend.common.LOWERINGS`): ``i0``/``i0e``/``i1``/``i1e``, ``spherical_bessel_j0``,
Bessel J/Y/K of orders 0 and 1 (and e^x K). The other special functions are in
:mod:`tlc.frontend.aten_special`.

Methods (fp32 accuracy, checked against torch in tests/test_lowerings.py and by
benchmarks/bench_opinfo.py):

* i0 / i1 (and e^-|x| scaled): the power series to 40 terms for |x| <= 15 (all terms positive:
  no cancellation), the asymptotic series (A&S 9.7.1) beyond.
* Bessel J0/J1/Y0/Y1/K0/K1 (and e^x K): power series for |x| < 1, Hankel's integral by the
  trapezoid rule on a fixed 30-point grid beyond (a [N, 30] broadcast, reduce_sum).
"""
from __future__ import annotations

import math

from .common import Const, lower, with_shorthand


# ------------------------------------------------------------------- Bessel I (orders 0, 1), j0

_BESSEL_SERIES = 40
_BESSEL_SWITCH = 15.0


def _bessel_i(e, x, order: int, scaled: bool):
    """I_order(x) (order 0 or 1), times exp(-|x|) when ``scaled``."""
    a = e("abs", x)
    q = e("mul", e("mul", a, a), 0.25)
    term = e("mul", a, 0.5) if order == 1 else e("add", e("mul", a, 0.0), 1.0)
    total = term
    for k in range(1, _BESSEL_SERIES):
        term = e("mul", term, e("real_div", q, float(k * (k + order))))
        total = e("add", total, term)
    if scaled:
        total = e("mul", total, e("exp", e("mul", a, -1.0)))
    # A&S 9.7.1: I_v(x) e^-x ~ (1 - (mu-1)/(8x) + (mu-1)(mu-9)/(2!(8x)^2) - ...) / sqrt(2 pi x), mu = 4v^2
    mu = 4.0 * order * order
    r = e.inv(e("mul", e("maximum", a, _BESSEL_SWITCH), 8.0))
    coeffs, c = [1.0], 1.0
    for k in range(1, 12):
        c *= -(mu - (2 * k - 1) ** 2) / k
        coeffs.append(c)
    asym = e("real_div", e.horner(r, coeffs), e("sqrt", e("mul", e("maximum", a, _BESSEL_SWITCH), 2 * math.pi)))
    if not scaled:
        asym = e("mul", asym, e("exp", a))
    y = e("select", e("less_equal", a, _BESSEL_SWITCH), total, asym)
    return e("mul", y, e("sign", x)) if order == 1 else y


def _modified_bessel_i(order, scaled):
    def fn(L, x):
        x, e = with_shorthand(L, x)
        return _bessel_i(e, x, order, scaled)

    fn.__doc__ = f"I_{order}(x){' e^-|x|' if scaled else ''}: series for |x| <= 15, asymptotic beyond."
    return fn


lower("aten.i0.default", "aten.special_modified_bessel_i0.default")(_modified_bessel_i(0, False))
lower("aten.special_i0e.default")(_modified_bessel_i(0, True))
lower("aten.special_i1.default", "aten.special_modified_bessel_i1.default")(_modified_bessel_i(1, False))
lower("aten.special_i1e.default")(_modified_bessel_i(1, True))


@lower("aten.special_spherical_bessel_j0.default")
def _spherical_j0(L, x):
    """sin(x) / x, 1 at 0 (Taylor 1 - x^2/6 below 1e-3 for accuracy)."""
    x, e = with_shorthand(L, x)
    small = e("less", e("abs", x), 1e-3)
    safe = e("select", small, 1.0, x)
    return e("select", small, e("sub", 1.0, e("mul", e("mul", x, x), 1 / 6)), e("real_div", e("sin", safe), safe))


# ------------------------------------------------------------------ Bessel J, Y, K (orders 0, 1)

_EULER_GAMMA = 0.5772156649015329
#: Gaussian quadrature grid for the Hankel integrals: s_k = k h, k < 30 (e^-s^2 < 1e-14 beyond)
_HANKEL_H, _HANKEL_K = 0.2, 30
#: below this |x| the power series is used (z = x^2/4 <= 1/4: 10 terms reach fp32 resolution);
#: above it the trapezoid rule's error e^(-2 pi sqrt(x) / h) is below 1e-13
_SERIES_BELOW = 1.0
_SERIES_TERMS = 10


def _harmonic(k: int) -> float:
    return sum(1.0 / j for j in range(1, k + 1))


def _hankel_sums(L, e, x, nu: int, modified: bool):
    """The Hankel integrals over u = s^2 (G. N. Watson, "A Treatise on the Theory of Bessel
    Functions" (1944) 7.2, the integral behind Hankel's asymptotic expansion, for H^(1); DLMF
    10.32 for K): int_0^inf 2 s^(2 nu) e^(-s^2) (1 + i s^2 / (2x))^(nu - 1/2) ds (``modified``: with
    s^2/(2x) real), by the trapezoid rule on the even, analytic integrand (exponentially
    convergent; Trefethen & Weideman, SIAM Review 56 (2014)). Returns (re, im) of shape x
    (im is None when ``modified``). x > 0; elements outside the branch may be inf/NaN."""
    import torch

    s = torch.arange(_HANKEL_K, dtype=torch.float64) * _HANKEL_H
    w = torch.full((_HANKEL_K,), _HANKEL_H, dtype=torch.float64)
    w[0] /= 2
    c = w * 2 * s ** (2 * nu) * torch.exp(-s * s)
    tdt = torch.float16 if e.dt == "fp16" else torch.float32
    s2 = Const((s * s).to(tdt), f"{L.node.name}_s2")
    cw = Const(c.to(tdt), f"{L.node.name}_weights")
    shape = L.v(x).type.shape
    col = e("reshape", x, shape=(math.prod(shape), 1))
    a = e("mul", e.inv(e("mul", col, 2.0)), s2)  # s^2 / (2x): [N, K]
    p = nu - 0.5
    if modified:
        re = e("reduce_sum", e("mul", e("pow", e("add", a, 1.0), p), cw), axes=(-1,), keep_dims=False)
        return e("reshape", re, shape=shape), None
    mag = e("mul", e("pow", e("add", e("mul", a, a), 1.0), p / 2), cw)
    ph = e("mul", e("atan", a), p)
    re = e("reduce_sum", e("mul", mag, e("cos", ph)), axes=(-1,), keep_dims=False)
    im = e("reduce_sum", e("mul", mag, e("sin", ph)), axes=(-1,), keep_dims=False)
    return e("reshape", re, shape=shape), e("reshape", im, shape=shape)


def _bessel(kind: str, nu: int, scaled: bool = False):
    def fn(L, x):
        """Bessel J / Y / K of order 0 or 1 (``scaled``: e^x K), fp32 to about 1e-7 absolute:
        for |x| < 1 the power series (A&S 9.1.10, 9.1.11, 9.6.11, 9.6.13); beyond, H^(1) = J + iY
        or K from the Hankel integral (:func:`_hankel_sums`) times sqrt(2/(pi x)) e^(i(x - nu pi/2
        - pi/4)) / Gamma(nu + 1/2) (sqrt(pi/(2x)) e^-x / Gamma(nu + 1/2) for K), so no
        asymptotic switch is needed at large x. Edge values as torch: J1 odd, Y(0) = -inf, K(0)
        = inf, NaN for x < 0 (Y, K)."""
        x, e = with_shorthand(L, x)
        ax = e("abs", x) if kind == "j" else x
        pos = e("maximum", ax, _SERIES_BELOW)  # the integral branch's argument (x >= 1)
        re, im = _hankel_sums(L, e, pos, nu, kind == "k")
        g = math.gamma(nu + 0.5)
        if kind == "k":
            big = e("mul", e("mul", re, e("sqrt", e("mul", e.inv(pos), math.pi / 2))), 1.0 / g)
            if not scaled:
                big = e("mul", big, e("exp", e("mul", pos, -1.0)))
        else:
            amp = e("mul", e("sqrt", e("mul", e.inv(pos), 2 / math.pi)), 1.0 / g)
            chi = e("sub", pos, nu * math.pi / 2 + math.pi / 4)
            cs, sn = e("cos", chi), e("sin", chi)
            part = e("sub", e("mul", re, cs), e("mul", im, sn)) if kind == "j" else \
                e("add", e("mul", re, sn), e("mul", im, cs))
            big = e("mul", part, amp)
        small = _bessel_series(e, kind, nu, e("minimum", ax, _SERIES_BELOW))
        if kind == "k" and scaled:
            small = e("mul", small, e("exp", x))
        y = e("select", e("less", ax, _SERIES_BELOW), small, big)
        if kind == "j":
            return e("mul", y, e("sign", x)) if nu == 1 else y
        y = e("select", e("equal", x, 0.0), float("-inf") if kind == "y" else float("inf"), y)
        return e("select", e("less", x, 0.0), float("nan"), y)
    return fn


def _bessel_series(e, kind: str, nu: int, x):
    """The small-argument series of J, Y, K (orders 0, 1) at 0 < x <= 1, z = x^2/4; x = 0 gives
    the limits only through the caller's selects."""
    z = e("mul", e("mul", x, x), 0.25)
    f = math.factorial
    n = _SERIES_TERMS
    sgn = -1.0 if kind in "jy" else 1.0  # J, Y: (-z)^k; I, K: z^k
    # the regular series: J_nu or I_nu = (x/2)^nu sum (sgn z)^k / (k! (k+nu)!)
    reg = e.horner(z, [sgn ** k / (f(k) * f(k + nu)) for k in range(n)])
    if nu == 1:
        reg = e("mul", reg, e("mul", x, 0.5))
    if kind == "j":
        return reg
    log_half = e("sub", e.log(x), math.log(2.0))
    if nu == 0:
        # Y0 = (2/pi)[(ln(x/2) + gamma) J0 + sum (-1)^(k+1) H_k z^k/(k!)^2];
        # K0 = -(ln(x/2) + gamma) I0 + sum H_k z^k / (k!)^2
        tail = e.horner(z, [0.0] + [(-(sgn ** k)) * _harmonic(k) / f(k) ** 2 for k in range(1, n)])
        lead = e("mul", e("add", log_half, _EULER_GAMMA), reg)
        if kind == "y":
            return e("mul", e("add", lead, tail), 2 / math.pi)
        return e("add", e("mul", lead, -1.0), e("mul", tail, -1.0))
    # nu = 1, psi(k+1) + psi(k+2) = 2 H_k + 1/(k+1) - 2 gamma
    tail = e.horner(z, [sgn ** k * (2 * _harmonic(k) + 1.0 / (k + 1) - 2 * _EULER_GAMMA) / (f(k) * f(k + 1))
                        for k in range(n)])
    tail = e("mul", tail, e("mul", x, 0.5))
    if kind == "y":  # Y1 = -2/(pi x) + (2/pi) ln(x/2) J1 - (1/pi)(x/2) sum ...
        return e("sub", e("sub", e("mul", e("mul", log_half, reg), 2 / math.pi), e("mul", e.inv(x), 2 / math.pi)),
                 e("mul", tail, 1 / math.pi))
    # K1 = 1/x + ln(x/2) I1 - (1/2)(x/2) sum ...
    return e("sub", e("add", e.inv(x), e("mul", log_half, reg)), e("mul", tail, 0.5))


for _name, _args in {"bessel_j0": ("j", 0), "bessel_j1": ("j", 1), "bessel_y0": ("y", 0), "bessel_y1": ("y", 1),
                     "modified_bessel_k0": ("k", 0), "modified_bessel_k1": ("k", 1),
                     "scaled_modified_bessel_k0": ("k", 0, True), "scaled_modified_bessel_k1": ("k", 1, True)}.items():
    lower(f"aten.special_{_name}.default")(_bessel(*_args))
