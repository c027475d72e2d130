"""Complex values as (real, imaginary) pairs of float IR values, and FFTs as matmuls: how ``stft``,
``rfft``/``fft``/``irfft`` of static length and the complex arithmetic after them stay in Core ML.

Core ML has no complex dtype and MIL no FFT op (coremltools MIL op set, iOS15-iOS18). When a model
only passes complex values between real inputs and real outputs (a spectrogram: stft -> power ->
mel -> log), every complex value can live as a :class:`Complex` pair in the front-end: each torch
op on it lowers to real MIL ops on the two parts. A DFT of length n along an axis is a matmul with
the constant cos / sin matrices (normalization folded in): O(n^2) multiply-adds instead of the
FFT's O(n log n), but one dense op the ANE runs, with no complex type anywhere in the program.

An op with no pair lowering here (or a complex model output) makes the pair a real complex64 IR
value again (``aten.complex.default``, a fallback op) and the torch op runs in tlc's fallback
runtime, as before.

Lowerings receive pairs for complex arguments and return a pair for a complex result. Ops that act
on both parts alike (views, slicing, concatenation, sums: they are real-linear) reuse the real
lowering on each part (:data:`PARTWISE`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import IRError, UnsupportedOpError
from ..ir import Value
from .common import LOWERINGS, Const, sub_name

COMPLEX_LOWERINGS: dict[str, Callable] = {}


@dataclass(eq=False)
class Complex:
    """A complex tensor as two float IR values of the same type (``re``, ``im``). ``value``: its
    complex64 IR value once materialized for a fallback op (:meth:`tlc.frontend.lower.Lowerer.materialize`)."""

    re: Value
    im: Value
    value: Value | None = None


def clower(*names: str):
    """Decorator: register the complex lowering of the ATen ops ``names``; a second one for a
    name raises :class:`~tlc.errors.IRError`."""
    def deco(fn):
        for n in names:
            if n in COMPLEX_LOWERINGS:
                raise IRError(f"ATen op {n!r} has two complex lowerings")
            COMPLEX_LOWERINGS[n] = fn
        return fn

    return deco


def _pair(L, x) -> Complex:
    """A complex argument as a pair (a complex Const split; a real value or scalar with im = 0)."""
    if isinstance(x, Complex):
        return x
    if isinstance(x, Const) and x.tensor.is_complex():
        t = x.tensor.resolve_conj()
        return Complex(L.v(Const(t.real.float().contiguous(), x.name + "_re")),
                       L.v(Const(t.imag.float().contiguous(), x.name + "_im")))
    if isinstance(x, complex):
        return Complex(L.scalar(x.real, "fp32"), L.scalar(x.imag, "fp32"))
    if isinstance(x, Value) and x.type.dtype == "complex64":
        raise UnsupportedOpError("a complex64 value computed by a fallback op")
    if isinstance(x, (int, float, bool)):
        return Complex(L.scalar(float(x), "fp32"), L.scalar(0.0, "fp32"))
    re = L.cast(x, "fp32")
    return Complex(re, None)


def _is_real(c: Complex) -> bool:
    return c.im is None


def _zeros_like(L, v, tag):
    return L.add("mul", [v, L.scalar(0.0, v.type.dtype)], name=sub_name(L, tag))


def _im(L, c: Complex, tag="im0"):
    return c.im if c.im is not None else _zeros_like(L, c.re, tag)


# ------------------------------------------------------------------------------------ DFTs


def _fft_scale(n: int, normalization: int) -> float:
    """torch's ``fft_norm_mode``: 0 none, 1 by 1/sqrt(n), 2 by 1/n."""
    return (1.0, 1.0 / math.sqrt(n), 1.0 / n)[normalization]


def _along(L, x: Value, ax: int, M: np.ndarray, tag: str) -> Value:
    """``M`` [n_out, n_in] applied along axis ``ax`` of ``x`` (a matmul with a constant)."""
    from .aten_resample import apply_axis_matrices

    saved = L.node.name
    try:
        L.node.name = f"{saved}_{tag}"
        return apply_axis_matrices(L, x, {ax: M})
    finally:
        L.node.name = saved


def _cos_sin(p: np.ndarray, n: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """scale * cos / sin of 2 pi p / n (p reduced mod n: the angle is exact for large k t), with
    exact zeros and ones at the multiples of pi / 2 (so the imaginary part of a real signal's DC
    and Nyquist bins is exactly 0, as in an FFT: its sign decides ``angle``)."""
    ang = 2 * np.pi * p / n
    c, s = np.cos(ang), np.sin(ang)
    quarter = (4 * p) % n == 0
    q = (4 * p) // n  # 0, 1, 2, 3 at the quarter turns
    c = np.where(quarter, np.choose(q % 4, [1.0, 0.0, -1.0, 0.0]), c)
    s = np.where(quarter, np.choose(q % 4, [0.0, 1.0, 0.0, -1.0]), s)
    return c * scale, s * scale


def _dft(L, c: Complex, ax: int, n_out: int, forward: bool, scale: float, tag: str) -> Complex:
    """Complex DFT along ``ax`` (input length n = n_in, output bins 0..n_out-1):
    X_k = scale * sum_t z_t exp(-/+ 2 pi i k t / n) as cos / sin matrices."""
    n = c.re.type.shape[ax]
    k = np.arange(n_out)[:, None]
    t = np.arange(n)[None, :]
    C, S = _cos_sin((k * t) % n, n, scale)
    s = 1.0 if forward else -1.0  # exp(-i s theta) = cos - i s sin
    a, b = c.re, c.im
    re = _along(L, a, ax, C, f"{tag}_ac")
    im = _along(L, a, ax, -s * S, f"{tag}_as")
    if b is not None:
        re = L.add("add", [re, _along(L, b, ax, s * S, f"{tag}_bs")], name=sub_name(L, f"{tag}_re"))
        im = L.add("add", [im, _along(L, b, ax, C, f"{tag}_bc")], name=sub_name(L, f"{tag}_im"))
    return Complex(re, im)


@clower("aten._fft_r2c.default")
def _fft_r2c(L, x, dim, normalization, onesided):
    """torch ``_fft_r2c`` (rfft / fft of real input / stft): the last of ``dim`` real-to-complex
    (bins 0..n/2 when ``onesided``), the others complex DFTs."""
    dims = [d % L.v(x).type.rank for d in dim]
    total = int(np.prod([L.v(x).type.shape[d] for d in dims]))
    c = Complex(L.cast(x, "fp32"), None)
    last = dims[-1]
    n = c.re.type.shape[last]
    c = _dft(L, c, last, n // 2 + 1 if onesided else n, True, _fft_scale(total, normalization), "r2c")
    for d in dims[:-1]:
        c = _dft(L, c, d, c.re.type.shape[d], True, 1.0, f"c2c{d}")
    return c


@clower("aten._fft_c2c.default")
def _fft_c2c(L, x, dim, normalization, forward):
    c = _pair(L, x)
    dims = [d % c.re.type.rank for d in dim]
    total = int(np.prod([c.re.type.shape[d] for d in dims]))
    for i, d in enumerate(dims):
        c = _dft(L, c, d, c.re.type.shape[d], bool(forward), _fft_scale(total, normalization) if i == 0 else 1.0,
                 f"c2c{d}")
    return c


@clower("aten._fft_c2r.default")
def _fft_c2r(L, x, dim, normalization, last_dim_size):
    """torch ``_fft_c2r`` (irfft): inverse complex DFTs over all of ``dim`` but the last, then the
    Hermitian half-spectrum of the last to ``last_dim_size`` real samples: y_t = sum_k w_k (Re X_k
    cos - Im X_k sin)(2 pi k t / n), w = 1 for bin 0 (and n/2 for even n), 2 between (the
    imaginary parts of those two bins drop out, as in torch)."""
    c = _pair(L, x)
    dims = [d % c.re.type.rank for d in dim]
    n = int(last_dim_size)
    total = int(np.prod([c.re.type.shape[d] for d in dims[:-1]])) * n
    for d in dims[:-1]:
        c = _dft(L, c, d, c.re.type.shape[d], False, 1.0, f"c2c{d}")
    last = dims[-1]
    m = c.re.type.shape[last]
    k = np.arange(m)[None, :]
    t = np.arange(n)[:, None]
    w = np.where((k == 0) | ((n % 2 == 0) & (k == n // 2)), 1.0, 2.0) * (k <= n // 2)
    cos, sin = _cos_sin((k * t) % n, n, _fft_scale(total, normalization))
    Cw, Sw = w * cos, -w * sin
    y = _along(L, c.re, last, Cw, "c2r_re")
    if c.im is not None:
        y = L.add("add", [y, _along(L, c.im, last, Sw, "c2r_im")], name=sub_name(L, "c2r"))
    return y


# ---------------------------------------------------------------------------- conversions


@clower("aten.view_as_real.default")
def _view_as_real(L, x):
    c = _pair(L, x)
    parts = [L.add("expand_dims", [p], {"axes": (-1,)}, name=sub_name(L, tag)) for p, tag in ((c.re, "re"), (_im(L, c), "im"))]
    return L.add("concat", parts, {"axis": c.re.type.rank})


@clower("aten.view_as_complex.default")
def _view_as_complex(L, x):
    from .aten_shape import lower_select

    return Complex(lower_select(L, L.cast(x, "fp32"), -1, 0), lower_select(L, L.cast(x, "fp32"), -1, 1))


@clower("aten.complex.default")
def _complex(L, re, im):
    return Complex(L.cast(re, "fp32"), L.cast(im, "fp32"))


@clower("aten.polar.default")
def _polar(L, r, theta):
    r, theta = L.cast(r, "fp32"), L.cast(theta, "fp32")
    return Complex(L.add("mul", [r, L.add("cos", [theta], name=sub_name(L, "cos"))], name=sub_name(L, "re")),
                   L.add("mul", [r, L.add("sin", [theta], name=sub_name(L, "sin"))], name=sub_name(L, "im")))


@clower("aten.real.default")
def _real(L, x):
    c = _pair(L, x)
    return L.add("identity", [c.re])


@clower("aten.imag.default")
def _imag(L, x):
    c = _pair(L, x)
    return L.add("identity", [_im(L, c)])


@clower("aten.abs.default")
def _abs(L, x):
    """|z| = sqrt(re^2 + im^2)."""
    c = _pair(L, x)
    if _is_real(c):
        return L.add("abs", [c.re])
    s = L.add("add", [L.add("mul", [c.re, c.re], name=sub_name(L, "re2")), L.add("mul", [c.im, c.im], name=sub_name(L, "im2"))],
              name=sub_name(L, "norm2"))
    return L.add("sqrt", [s])


@clower("aten.angle.default")
def _angle(L, x):
    from .aten_math import lower_atan2

    c = _pair(L, x)
    return lower_atan2(L, _im(L, c), c.re)


@clower("aten._conj.default", "aten.conj_physical.default", "aten._conj_physical.default", "aten.conj.default")
def _conj(L, x):
    c = _pair(L, x)
    return Complex(c.re, L.add("mul", [_im(L, c), L.scalar(-1.0, "fp32")], name=sub_name(L, "neg_im")))


@clower("aten.resolve_conj.default", "aten.resolve_neg.default", "aten.clone.default", "aten.alias.default",
        "aten.detach.default", "aten.contiguous.default", "aten.lift_fresh_copy.default", "aten._to_copy.default")
def _same(L, x, *args, **kwargs):
    out = L.node.meta.get("val")
    if isinstance(out, torch.Tensor) and not out.dtype.is_complex:  # complex -> real: the real part (torch warns)
        return L.cast(_pair(L, x).re, "fp32" if out.dtype != torch.float16 else "fp16")
    return _pair(L, x)


@clower("aten.neg.default")
def _neg(L, x):
    c = _pair(L, x)
    return Complex(L.add("mul", [c.re, L.scalar(-1.0, "fp32")], name=sub_name(L, "re")),
                   L.add("mul", [_im(L, c), L.scalar(-1.0, "fp32")], name=sub_name(L, "im")))


@clower("aten.exp.default")
def _exp(L, x):
    """exp(a + ib) = e^a (cos b + i sin b)."""
    c = _pair(L, x)
    e = L.add("exp", [c.re], name=sub_name(L, "mag"))
    b = _im(L, c)
    return Complex(L.add("mul", [e, L.add("cos", [b], name=sub_name(L, "cos"))], name=sub_name(L, "re")),
                   L.add("mul", [e, L.add("sin", [b], name=sub_name(L, "sin"))], name=sub_name(L, "im")))


# ------------------------------------------------------------------------------- arithmetic


def _mul_pairs(L, x: Complex, y: Complex, tag="mul") -> Complex:
    """(a + ib)(c + id) = (ac - bd) + i(ad + bc); real factors skip their zero parts."""
    a, b, c, d = x.re, x.im, y.re, y.im
    if b is None and d is None:
        return Complex(L.add("mul", [a, c], name=sub_name(L, tag + "_re")), None)
    if b is None:
        return Complex(L.add("mul", [a, c], name=sub_name(L, tag + "_re")), L.add("mul", [a, d], name=sub_name(L, tag + "_im")))
    if d is None:
        return Complex(L.add("mul", [a, c], name=sub_name(L, tag + "_re")), L.add("mul", [b, c], name=sub_name(L, tag + "_im")))
    re = L.add("sub", [L.add("mul", [a, c], name=sub_name(L, tag + "_ac")), L.add("mul", [b, d], name=sub_name(L, tag + "_bd"))],
               name=sub_name(L, tag + "_re"))
    im = L.add("add", [L.add("mul", [a, d], name=sub_name(L, tag + "_ad")), L.add("mul", [b, c], name=sub_name(L, tag + "_bc"))],
               name=sub_name(L, tag + "_im"))
    return Complex(re, im)


def _finish(L, c: Complex):
    """A result pair with a missing imaginary part gets explicit zeros (the node is complex)."""
    return Complex(c.re, _im(L, c, "zero_im")) if c.im is None else c


@clower("aten.mul.Tensor", "aten.mul.Scalar")
def _mul(L, a, b):
    return _finish(L, _mul_pairs(L, _pair(L, a), _pair(L, b)))


def _addsub(op):
    def fn(L, a, b, *, alpha=1):
        x, y = _pair(L, a), _pair(L, b)
        if alpha != 1:
            y = _mul_pairs(L, y, _pair(L, alpha), "alpha")
        re = L.add(op, [x.re, y.re], name=sub_name(L, "re"))
        if x.im is None and y.im is None:
            im = None
        elif y.im is None:
            im = x.im
        elif x.im is None:
            im = y.im if op == "add" else L.add("mul", [y.im, L.scalar(-1.0, "fp32")], name=sub_name(L, "im"))
        else:
            im = L.add(op, [x.im, y.im], name=sub_name(L, "im"))
        return _finish(L, Complex(re, im))

    return fn


clower("aten.add.Tensor", "aten.add.Scalar")(_addsub("add"))
clower("aten.sub.Tensor", "aten.sub.Scalar")(_addsub("sub"))


@clower("aten.div.Tensor", "aten.div.Scalar")
def _div(L, a, b):
    """(a + ib) / (c + id) = ((ac + bd) + i(bc - ad)) / (c^2 + d^2)."""
    x, y = _pair(L, a), _pair(L, b)
    if y.im is None:
        return _finish(L, Complex(L.add("real_div", [x.re, y.re], name=sub_name(L, "re")),
                                  None if x.im is None else L.add("real_div", [x.im, y.re], name=sub_name(L, "im"))))
    conj = Complex(y.re, L.add("mul", [y.im, L.scalar(-1.0, "fp32")], name=sub_name(L, "conj")))
    num = _mul_pairs(L, x, conj, "num")
    den = L.add("add", [L.add("mul", [y.re, y.re], name=sub_name(L, "c2")), L.add("mul", [y.im, y.im], name=sub_name(L, "d2"))],
                name=sub_name(L, "den"))
    return _finish(L, Complex(L.add("real_div", [num.re, den], name=sub_name(L, "re")),
                              L.add("real_div", [num.im, den], name=sub_name(L, "im"))))


@clower("aten.pow.Tensor_Scalar")
def _pow(L, x, p):
    """z^p: repeated products for p = 2, 3, 4; otherwise |z|^p (cos p theta + i sin p theta)."""
    c = _pair(L, x)
    if p in (1, 2, 3, 4) and not isinstance(p, bool):
        out = c
        for i in range(int(p) - 1):
            out = _mul_pairs(L, out, c, f"pow{i}")
        return _finish(L, out)
    if isinstance(p, complex):
        raise UnsupportedOpError("complex exponent")
    mag = _abs(L, c)
    from .aten_math import lower_atan2

    theta = lower_atan2(L, _im(L, c), c.re)
    r = L.add("pow", [mag, L.scalar(float(p), "fp32")], name=sub_name(L, "r"))
    pt = L.add("mul", [theta, L.scalar(float(p), "fp32")], name=sub_name(L, "pt"))
    return Complex(L.add("mul", [r, L.add("cos", [pt], name=sub_name(L, "cos"))], name=sub_name(L, "re")),
                   L.add("mul", [r, L.add("sin", [pt], name=sub_name(L, "sin"))], name=sub_name(L, "im")))


@clower("aten.where.self", "aten.where.ScalarOther", "aten.where.ScalarSelf")
def _where(L, cond, a, b):
    x, y = _pair(L, a), _pair(L, b)
    c = L.cast(cond, "bool")
    return Complex(L.add("select", [c, x.re, y.re], name=sub_name(L, "re")),
                   L.add("select", [c, _im(L, x, "aim"), _im(L, y, "bim")], name=sub_name(L, "im")))


@clower("aten.mm.default", "aten.bmm.default", "aten.matmul.default")
def _matmul(L, a, b):
    """(A + iB)(C + iD) = (AC - BD) + i(AD + BC): four real matmuls (two for a real factor)."""
    fn = LOWERINGS[str(L.node.target)]
    x, y = _pair(L, a), _pair(L, b)

    def mm(p, q, tag):
        saved = L.node.name
        try:
            L.node.name = f"{saved}_{tag}"
            with L.real_types():
                return fn(L, p, q)
        finally:
            L.node.name = saved

    re = mm(x.re, y.re, "ac")
    if x.im is not None and y.im is not None:
        re = L.add("sub", [re, mm(x.im, y.im, "bd")], name=sub_name(L, "re"))
    ims = []
    if y.im is not None:
        ims.append(mm(x.re, y.im, "ad"))
    if x.im is not None:
        ims.append(mm(x.im, y.re, "bc"))
    im = ims[0] if len(ims) == 1 else (L.add("add", ims, name=sub_name(L, "im")) if ims else None)
    return _finish(L, Complex(re, im))


#: Ops that act on the real and imaginary parts alike (views, slicing, joining, real-linear
#: reductions): the real lowering is applied to each part.
PARTWISE = [
    "aten.view.default", "aten._unsafe_view.default", "aten.reshape.default", "aten.permute.default",
    "aten.transpose.int", "aten.t.default", "aten.unsqueeze.default", "aten.squeeze.dim", "aten.squeeze.dims",
    "aten.squeeze.default", "aten.slice.Tensor", "aten.select.int", "aten.expand.default", "aten.flip.default",
    "aten.repeat.default", "aten.index_select.default", "aten.index.Tensor", "aten.constant_pad_nd.default",
    "aten.sum.dim_IntList", "aten.sum.default", "aten.mean.dim", "aten.mean.default", "aten.cumsum.default",
    "aten.unfold.default", "aten.roll.default", "aten.diagonal.default", "aten.narrow.default",
    "aten.alias_copy.default", "aten.view_copy.default", "aten.permute_copy.default", "aten.slice_copy.Tensor",
]
_MULTI = ["aten.cat.default", "aten.stack.default"]
_SPLIT = ["aten.split.Tensor", "aten.split_with_sizes.default", "aten.unbind.int"]


def partwise(L, key: str, args, kwargs):
    """Lower ``key`` on each part of its complex arguments with the real lowering; returns a
    :class:`Complex` (or a tuple of them for splits)."""
    fn = LOWERINGS[key]

    def part(i):
        def pick(x):
            if isinstance(x, Complex):
                return x.re if i == 0 else _im(L, x)
            if isinstance(x, (list, tuple)):
                return type(x)(pick(y) for y in x)
            return x

        saved = L.node.name
        try:
            L.node.name = f"{saved}_{'re' if i == 0 else 'im'}"
            with L.real_types():
                return fn(L, *pick(list(args)), **{k: pick(v) for k, v in kwargs.items()})
        finally:
            L.node.name = saved

    re, im = part(0), part(1)
    if isinstance(re, tuple):
        return tuple(Complex(r, j) for r, j in zip(re, im))
    return Complex(re, im)


def lower_complex(L, key: str, args, kwargs):
    """The pair lowering of ``key`` (or None if there is none)."""
    fn = COMPLEX_LOWERINGS.get(key)
    if fn is not None:
        return fn(L, *args, **kwargs)
    if (key in PARTWISE or key in _MULTI or key in _SPLIT) and key in LOWERINGS:
        if key in _MULTI:  # a list of tensors: every one a pair
            tensors = [_pair(L, t) for t in args[0]]
            args = (tensors,) + tuple(args[1:])
        elif not isinstance(args[0], Complex):
            args = (_pair(L, args[0]),) + tuple(args[1:])
        return partwise(L, key, args, kwargs)
    return None
