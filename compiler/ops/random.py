"""Random sampling: ``random_uniform``, ``random_normal``, ``random_bernoulli``.

Semantics: coremltools MIL ``random.py`` (iOS15): a tensor of the static ``shape`` drawn from
U[low, high), N(mean, stddev^2) or Bernoulli(prob) (0.0 / 1.0), fp32. ``seed`` -1 (tlc's default)
draws fresh values on every run, as torch's generators do when unseeded; a fixed seed makes a run
repeatable within one runtime (not across Core ML, NumPy and torch, whose generators differ).

These rows are **nondeterministic** (:attr:`tlc.ops.OpDef.nondeterministic`): passes never merge
two of them (``cleanup::cse``) or fold them, and tests compare their distributions, not values.
"""
from __future__ import annotations

import numpy as np

from ..errors import IRError
from ..dtypes import TensorType
from .table import Reason, register


def _infer(in_types, attrs):
    if in_types:
        raise IRError(f"takes no tensor inputs (the shape is an attribute), got {len(in_types)}")
    shape = tuple(attrs["shape"])
    if any(d < 0 for d in shape):
        raise IRError(f"shape {list(shape)} must be non-negative")
    return [TensorType("fp32", shape)]


def _rng(attrs):
    seed = attrs.get("seed", -1)
    return np.random.default_rng(None if seed is None or seed < 0 else seed)


def _emit(kind, params):
    def emit(ctx, attrs, ins, nm):
        kw = {k: np.float32(attrs.get(k, d)) for k, d in params}
        return getattr(ctx.mb, kind)(shape=np.array(attrs["shape"], np.int32), seed=int(attrs.get("seed", -1)), name=nm,
                                     **kw)

    return emit


def _no_ane(i, o, a):
    return Reason("random sampling is not documented to run on the ANE (../shared/ane-rules.md); Core ML runs it on the "
                  "GPU/CPU", "undocumented")


def _uniform(attrs):
    """MIL ``random_uniform``: U[low, high) of ``shape`` (fp32)."""
    return _rng(attrs).uniform(attrs.get("low", 0.0), attrs.get("high", 1.0), tuple(attrs["shape"])).astype(np.float32)


def _normal(attrs):
    """MIL ``random_normal``: N(mean, stddev^2) of ``shape`` (fp32)."""
    return _rng(attrs).normal(attrs.get("mean", 0.0), attrs.get("stddev", 1.0), tuple(attrs["shape"])).astype(np.float32)


def _bernoulli(attrs):
    """MIL ``random_bernoulli``: 1.0 with probability ``prob``, else 0.0, of ``shape`` (fp32)."""
    return (_rng(attrs).random(tuple(attrs["shape"])) < attrs.get("prob", 0.5)).astype(np.float32)


def _from_mil(v):
    attrs = {k: (x.item() if isinstance(x, np.ndarray) and x.ndim == 0 else x) for k, x in v.items() if x is not None}
    attrs["shape"] = tuple(int(d) for d in np.asarray(v["shape"]).reshape(-1))
    return [], attrs


#: The torch-device executor does not run these: a kernel there has no input telling it the device,
#: and a captured CUDA graph would replay the same draws.
_HOST = "random sampling runs on the host (NumPy's generator) in tlc's fallback runtime"

for _name, _np, _params in [
    ("random_uniform", _uniform, (("low", 0.0), ("high", 1.0))),
    ("random_normal", _normal, (("mean", 0.0), ("stddev", 1.0))),
    ("random_bernoulli", _bernoulli, (("prob", 0.5),)),
]:
    register(_name, infer=_infer, numpy=_np, emit_mil=_emit(_name, _params), ane=_no_ane, mil_inputs=(),
             from_mil=_from_mil, host_only=_HOST, nondeterministic=True)
