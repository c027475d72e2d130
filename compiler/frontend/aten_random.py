"""ATen -> IR lowerings of random sampling (registered into :data:`tlc.frontend.common.LOWERINGS`):
``rand``/``randn``/``randint`` (+ ``_like``), ``bernoulli``, ``normal``, ``uniform_``,
``exponential_``, ``log_normal_``, ``cauchy_``, ``geometric_``, ``randperm``, ``multinomial``,
and dropout in training mode (``native_dropout``).

Everything is built on MIL's ``random_uniform`` / ``random_normal`` / ``random_bernoulli``
(iOS15 random.py) so a model that samples noise (diffusion samplers, VAEs' reparameterization,
stochastic depth) stays on the device; the other distributions are the textbook transforms of
U(0, 1) (inverse CDF, L. Devroye, *Non-Uniform Random Variate Generation*, 1986, ch. 2), a
permutation is the argsort of uniforms, sampling without replacement is the Gumbel-top-k trick
(W. Kool et al., ICML 2019), with replacement an inverse-CDF search. The values are not torch's
(another generator): tests compare distributions. Never constant-folded (tlc.frontend.lower).
"""
from __future__ import annotations

import math

import torch

from .common import Const, lower, operand, sub_name


def _out_shape(L, i=None):
    return L.out_type(i).shape


def _draw(L, kind, shape, tag="draw", **params):
    return L.add(kind, [], {"shape": tuple(shape), "seed": -1, **{k: float(v) for k, v in params.items()}},
                 name=sub_name(L, tag))


def _out(L, v, i=None):
    """``v`` (fp32) in the node's result dtype."""
    return L.cast(v, L.out_type(i).dtype)


@lower("aten.rand.default", "aten.rand_like.default", "aten.rand.generator")
def _rand(L, *args, **kwargs):
    return _out(L, _draw(L, "random_uniform", _out_shape(L)))


@lower("aten.randn.default", "aten.randn_like.default", "aten.randn.generator")
def _randn(L, *args, **kwargs):
    return _out(L, _draw(L, "random_normal", _out_shape(L)))


def _uniform_ints(L, low, high, shape):
    u = _draw(L, "random_uniform", shape, low=float(low), high=float(high))
    v = L.add("floor", [u], name=sub_name(L, "floor"))
    v = L.add("minimum", [v, L.scalar(float(high - 1), "fp32")], name=sub_name(L, "clamp"))  # [low, high - 1]
    return _out(L, v)


@lower("aten.randint.default", "aten.randint.low", "aten.randint_like.default", "aten.randint_like.low_dtype")
def _randint(L, *args, **kwargs):
    """Uniform integers in [low, high): floor of U[low, high)."""
    target = str(L.node.target)
    nums = [a for a in args if isinstance(a, int) and not isinstance(a, bool)]
    if "like" in target:
        low, high = (0, nums[0]) if target.endswith(".default") else (nums[0], nums[1])
    else:
        low, high = (0, args[0]) if target.endswith(".default") else (args[0], args[1])
    return _uniform_ints(L, low, high, _out_shape(L))


@lower("aten.bernoulli.p")
def _bernoulli_p(L, x, p=0.5, *, generator=None):
    return _out(L, _draw(L, "random_bernoulli", _out_shape(L), prob=float(p)))


@lower("aten.bernoulli.default", "aten.bernoulli.Tensor")
def _bernoulli(L, x, p=None, *, generator=None):
    """Bernoulli with per-element probabilities (``x`` itself, or the tensor ``p``): U < prob."""
    prob = L.cast(p if p is not None else x, "fp32")
    u = _draw(L, "random_uniform", _out_shape(L))
    return _out(L, L.add("less", [u, prob], name=sub_name(L, "hit")))


@lower("aten.uniform.default")
def _uniform(L, x, low=0.0, high=1.0, *, generator=None):
    return _out(L, _draw(L, "random_uniform", _out_shape(L), low=low, high=high))


@lower("aten.normal.Tensor_Tensor", "aten.normal.Tensor_float", "aten.normal.float_Tensor",
       "aten.normal.float_float", "aten.normal_functional.default")
def _normal(L, *args, **kwargs):
    """mean + std * N(0, 1) (mean / std tensors or numbers; ``normal_functional(self, mean,
    std)`` draws in self's shape)."""
    if str(L.node.target) == "aten.normal_functional.default":
        args = args[1:]
    mean = args[0] if args else kwargs.get("mean", 0.0)
    std = args[1] if len(args) > 1 else kwargs.get("std", 1.0)
    z = _draw(L, "random_normal", _out_shape(L))
    dt = "fp32"
    return _out(L, L.add("add", [L.add("mul", [z, operand(L, std, dt)], name=sub_name(L, "scaled")), operand(L, mean, dt)],
                         name=sub_name(L, "shifted")))


def _inverse_cdf(fn):
    def lowering(L, x, *params, generator=None):
        u = _draw(L, "random_uniform", _out_shape(L))
        return _out(L, fn(L, u, *params))

    lowering.__doc__ = fn.__doc__
    return lowering


def _exponential(L, u, lambd=1.0):
    """-log(1 - U) / lambda."""
    one_minus = L.add("sub", [L.scalar(1.0, "fp32"), u], name=sub_name(L, "1mu"))
    return L.add("mul", [L.add("log", [one_minus], {"epsilon": 0.0}, name=sub_name(L, "log")), L.scalar(-1.0 / lambd, "fp32")])


def _cauchy(L, u, median=0.0, sigma=1.0):
    """median + sigma tan(pi (U - 1/2))."""
    t = L.add("tan", [L.add("mul", [L.add("sub", [u, L.scalar(0.5, "fp32")], name=sub_name(L, "c")),
                                    L.scalar(math.pi, "fp32")], name=sub_name(L, "ang"))], name=sub_name(L, "tan"))
    return L.add("add", [L.add("mul", [t, L.scalar(float(sigma), "fp32")], name=sub_name(L, "s")), L.scalar(float(median), "fp32")])


def _geometric(L, u, p):
    """ceil(log(1 - U) / log(1 - p)): trials until the first success."""
    one_minus = L.add("sub", [L.scalar(1.0, "fp32"), u], name=sub_name(L, "1mu"))
    r = L.add("real_div", [L.add("log", [one_minus], {"epsilon": 0.0}, name=sub_name(L, "log")),
                           L.scalar(math.log1p(-p), "fp32")], name=sub_name(L, "ratio"))
    return L.add("maximum", [L.add("ceil", [r], name=sub_name(L, "ceil")), L.scalar(1.0, "fp32")])


lower("aten.exponential.default")(_inverse_cdf(_exponential))
lower("aten.cauchy.default")(_inverse_cdf(_cauchy))
lower("aten.geometric.default")(_inverse_cdf(_geometric))


@lower("aten.log_normal.default")
def _log_normal(L, x, mean=1.0, std=2.0, *, generator=None):
    z = _draw(L, "random_normal", _out_shape(L), mean=mean, stddev=std)
    return _out(L, L.add("exp", [z]))


@lower("aten.randperm.default")
def _randperm(L, n, *args, **kwargs):
    """A uniformly random permutation: the argsort of n uniforms."""
    u = _draw(L, "random_uniform", (int(n),))
    return _out(L, L.add("argsort", [u], {"axis": 0, "ascending": True}, name=sub_name(L, "perm")))


@lower("aten.multinomial.default")
def _multinomial(L, probs, num_samples, replacement=False, *, generator=None):
    """Without replacement: the Gumbel-top-k trick, top-k of log p + Gumbel noise; with it: for
    each draw, the count of cumulative probabilities below U * total (inverse CDF)."""
    p = L.cast(probs, "fp32")
    shape = p.type.shape
    k = int(num_samples)
    if not replacement:
        u = _draw(L, "random_uniform", shape)
        gumbel = L.add("mul", [L.add("log", [L.add("mul", [L.add("log", [u], {"epsilon": 0.0}, name=sub_name(L, "lu")),
                                                          L.scalar(-1.0, "fp32")], name=sub_name(L, "nlu"))],
                                      {"epsilon": 0.0}, name=sub_name(L, "llu")), L.scalar(-1.0, "fp32")], name=sub_name(L, "gumbel"))
        keys = L.add("add", [L.add("log", [p], {"epsilon": 0.0}, name=sub_name(L, "logp")), gumbel], name=sub_name(L, "keys"))
        _, idx = L.add("topk", [keys], {"k": k, "axis": -1, "ascending": False}, name=sub_name(L, "topk"))
        return _out(L, idx)
    cdf = L.add("cumsum", [p], {"axis": len(shape) - 1}, name=sub_name(L, "cdf"))
    total = L.add("reduce_sum", [p], {"axes": (len(shape) - 1,), "keep_dims": True}, name=sub_name(L, "total"))
    u = _draw(L, "random_uniform", shape[:-1] + (k,))
    target = L.add("mul", [u, total], name=sub_name(L, "target"))
    below = L.add("less_equal", [L.add("expand_dims", [cdf], {"axes": (-2,)}, name=sub_name(L, "cdf2")),
                                 L.add("expand_dims", [target], {"axes": (-1,)}, name=sub_name(L, "t2"))], name=sub_name(L, "below"))
    idx = L.add("reduce_sum", [L.cast(below, "int32")], {"axes": (-1,), "keep_dims": False}, name=sub_name(L, "idx"))
    return _out(L, L.add("minimum", [idx, L.scalar(shape[-1] - 1, "int32")], name=sub_name(L, "clip")))


@lower("aten.native_dropout.default")
def _native_dropout(L, x, p, train):
    """Dropout: in training, keep each element with probability 1 - p and scale by 1 / (1 - p)
    (the mask is the second result); otherwise the input and an all-True mask."""
    v = L.v(x)
    if not train:
        return (v, Const(torch.ones(v.type.shape, dtype=torch.bool), sub_name(L, "mask")))
    keep = L.add("greater_equal", [_draw(L, "random_uniform", v.type.shape), L.scalar(float(p), "fp32")],
                 name=sub_name(L, "keep"))
    scale = 0.0 if p >= 1 else 1.0 / (1.0 - p)
    y = L.add("mul", [L.add("mul", [v, L.cast(keep, v.type.dtype)], name=sub_name(L, "masked")), L.scalar(scale, v.type.dtype)])
    return (y, keep)


@lower("aten.dropout.default")
def _dropout(L, x, p, train):
    return _native_dropout(L, x, p, train)[0]


@lower("aten.rrelu_with_noise.default", "aten.rrelu_with_noise_functional.default")
def _rrelu(L, x, noise, lower=1 / 8, upper=1 / 3, training=False, *, generator=None):
    """RReLU: negative inputs scaled by U[lower, upper) in training, by the mean slope otherwise."""
    v = L.v(x)
    dt = v.type.dtype
    if training:
        slope = L.cast(_draw(L, "random_uniform", v.type.shape, low=lower, high=upper), dt)
    else:
        slope = L.scalar((lower + upper) / 2.0, dt)
    y = L.add("select", [L.add("greater_equal", [v, L.scalar(0.0, dt)], name=sub_name(L, "pos")), v,
                         L.add("mul", [v, slope], name=sub_name(L, "neg"))], name=sub_name(L, "out"))
    if "functional" in str(L.node.target):
        return (y, L.add("identity", [L.v(noise)], name=sub_name(L, "noise")))
    return y

