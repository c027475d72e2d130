"""What every ATen lowering module shares: the lowering registry, compile-time constants, and
the small helpers for shapes, axes, dtypes and operands.

The ``aten_*`` modules and :mod:`tlc.frontend.lower` import from here; an ``aten_*`` module uses
another's public helper only one way (``aten_nn`` -> ``aten_reduce``'s ``var_mean``, ``aten_resample``
-> ``aten_nn``, ``aten_complex`` -> ``aten_math`` / ``aten_shape`` / ``aten_resample``), so the front
end has no import cycle (tests/test_layers.py); the package ``__init__`` imports the ``aten*``
modules, which fills :data:`LOWERINGS`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from typing import TYPE_CHECKING, Callable

from .. import dtypes
from ..errors import FrontendError, IRError
from ..ir import Value

from .._lazy import torch

if TYPE_CHECKING:  # pragma: no cover
    from .lower import Lowerer

#: ATen op name (``str(OpOverload)``, e.g. ``"aten.add.Tensor"``) -> lowering function.
LOWERINGS: dict[str, Callable] = {}

#: Ops that compute nothing at inference time.
SKIP = {
    "aten._assert_tensor_metadata.default",
    "aten._assert_scalar.default",
    "aten.sym_constrain_range_for_size.default",
    "aten._assert_async.msg",
}


def lower(*names: str):
    """Decorator: register ``fn`` as the lowering of the ATen ops ``names``; raises
    :class:`~tlc.errors.IRError` for a name that already has one (a second registration would
    silently replace the first)."""
    def deco(fn):
        for n in names:
            if n in LOWERINGS:
                raise IRError(f"ATen op {n!r} has two lowerings: {LOWERINGS[n].__module__}.{LOWERINGS[n].__name__} "
                              f"and {fn.__module__}.{fn.__name__}")
            LOWERINGS[n] = fn
        return fn

    return deco


@dataclass(eq=False)
class Const:
    """A compile-time constant (a torch tensor in its original dtype)."""

    tensor: "torch.Tensor"
    name: str
    value: "Value | None" = None  # the IR const node's output, once materialized


def ir_dtype(dt, what: str = "tensor", loc=None) -> str:
    """IR dtype for a ``torch.dtype`` (64-bit types narrowed, :data:`tlc.dtypes.FROM_TORCH`);
    raises :class:`FrontendError` for bfloat16 and others the IR cannot hold."""
    ir = dtypes.from_torch(dt)
    if ir is None:
        raise FrontendError(f"{what} has dtype {dt}, which tlc does not support (use float32/float16/int/bool)",
                            loc=loc)
    return ir


def rank_of(x) -> int:
    """Rank of an IR value or a :class:`Const`."""
    return len(x.type.shape) if isinstance(x, Value) else x.tensor.dim()


def shape_of(x) -> tuple:
    """Shape of an IR value or a :class:`Const`."""
    return x.type.shape if isinstance(x, Value) else tuple(x.tensor.shape)


def is_bool_tensor(x) -> bool:
    """Whether an IR value or a :class:`Const` is bool."""
    return (x.tensor.dtype == torch.bool) if isinstance(x, Const) else x.type.dtype == "bool"


def sub_name(L: "Lowerer", tag: str) -> str:
    """Name for a node a lowering adds under the current fx node: ``{node}_{tag}``."""
    return f"{L.node.name}_{tag}"


def as_float_result(L: "Lowerer", x) -> Value:
    """``x`` cast to the current node's (first) float result dtype."""
    val = L.node.meta.get("val")
    return L.cast(x, L.out_type(0 if isinstance(val, (tuple, list)) else None).dtype)


def norm_axis(d: int, rank: int) -> int:
    """A torch axis (possibly negative) as a non-negative axis of a rank-``rank`` tensor."""
    return d % rank if rank else 0


def operand(L: "Lowerer", x, dtype: str) -> Value:
    """Tensor or Python scalar as an IR value of ``dtype`` (torch type promotion already decided
    the result dtype; operands are cast to it)."""
    if isinstance(x, (Value, Const)):
        return L.cast(L.v(x), dtype)
    return L.scalar(x, dtype)


# ------------------------------------------------------------ IR-building helpers for lowerings


def wrapped_index(L, t, n: int, tag: str = "idx"):
    """An index tensor as int32 with negative entries wrapped (+n): MIL's iOS17 gathers and
    scatters take only non-negative indices, and this is the conversion its documentation gives,
    ``select(index >= 0, index, index + n)`` (iOS17 scatter_gather.py). Out-of-range indices stay
    out of range (a kernel error here, undefined on device), as torch would reject them."""
    if isinstance(t, Const):
        v = t.tensor.long()
        return Const(torch.where(v < 0, v + n, v).to(torch.int32), f"{L.node.name}_{tag}")
    i = L.cast(t, "int32")
    neg = L.add("less", [i, L.scalar(0, "int32")], name=f"{L.node.name}_{tag}_neg")
    return L.add("select", [neg, L.add("add", [i, L.scalar(n, "int32")], name=f"{L.node.name}_{tag}_up"), i],
                 name=f"{L.node.name}_{tag}")


def broadcast_to(L, x, shape, tag):
    """``x`` (value or Const) expanded to ``shape`` (reshape to the rank, then tile)."""
    x = L.v(x)
    s = x.type.shape
    if s == tuple(shape):
        return x
    if len(s) < len(shape):
        s = (1,) * (len(shape) - len(s)) + s
        x = L.add("reshape", [x], {"shape": s}, name=f"{L.node.name}_{tag}_rank")
    reps = tuple(o // d if d != o else 1 for o, d in zip(shape, s))
    return x if all(r == 1 for r in reps) else L.add("tile", [x], {"reps": reps}, name=f"{L.node.name}_{tag}_tile")


def take(L, x, ax: int, idx: np.ndarray, name=None):
    """``x`` indexed along ``ax`` by the constant int index ``idx`` (non-negative, any shape):
    slices + ``concat`` when a 1-D ``idx`` is a few runs of consecutive indices (``roll``,
    ``index_select`` of ranges: ANE-friendly), else one ``gather``."""
    x = L.v(x)
    name = name or L.node.name
    if idx.ndim == 1 and idx.size:
        runs, start = [], 0
        for k in range(1, idx.size + 1):
            if k == idx.size or idx[k] != idx[k - 1] + 1:
                runs.append((int(idx[start]), k - start))
                start = k
        if len(runs) <= 4:
            parts = [x if (b == 0 and n == x.type.shape[ax]) else narrow(L, x, ax, b, n, f"run{q}")
                     for q, (b, n) in enumerate(runs)]
            return parts[0] if len(parts) == 1 else L.add("concat", parts, {"axis": ax}, name=name)
    xv = L.cast(x, "int32") if x.type.dtype == "bool" else x
    g = L.add("gather", [xv, Const(torch.from_numpy(idx.astype(np.int32)), name + "_idx")], {"axis": ax},
              name=name if x.type.dtype != "bool" else name + "_int")
    return L.add("cast", [g], {"dtype": "bool"}, name=name) if x.type.dtype == "bool" else g


def narrow(L, x, ax, start, length, tag):
    """``x[..., start:start + length, ...]`` along ``ax`` as one ``slice_by_index``."""
    shape = x.type.shape
    begin = [0] * len(shape)
    end = list(shape)
    begin[ax], end[ax] = start, start + length
    return L.add("slice_by_index", [x], {"begin": tuple(begin), "end": tuple(end), "stride": (1,) * len(shape)},
                 name=f"{L.node.name}_{tag}")


class Shorthand:
    """``e("add", a, b)``: a node with a unique name under the current node; floats are scalars
    (the special functions' series and recurrences: :mod:`tlc.frontend.aten_special`,
    :mod:`tlc.frontend.aten_bessel`)."""

    def __init__(self, L, dt):
        self.L, self.dt, self.k = L, dt, 0

    def __call__(self, op, *ins, **attrs):
        self.k += 1
        return self.L.add(op, [self.L.v(i) if not isinstance(i, (int, float)) else self.L.scalar(float(i), self.dt)
                               for i in ins], attrs, name=f"{self.L.node.name}_{op}{self.k}")

    def log(self, x):
        return self("log", x, epsilon=0.0)

    def inv(self, x):
        return self("inverse", x, epsilon=0.0)

    def horner(self, x, coeffs):
        """c0 + c1 x + c2 x^2 + ... (coefficients lowest first)."""
        acc = None
        for c in reversed(coeffs):
            acc = self.L.scalar(float(c), self.dt) if acc is None else self("add", self("mul", acc, x), float(c))
        return acc


def with_shorthand(L: "Lowerer", x):
    """``x`` cast to the current node's result dtype, and a :class:`Shorthand` in that dtype."""
    dt = L.out_type().dtype
    return L.cast(x, dt), Shorthand(L, dt)


__all__ = ["LOWERINGS", "SKIP", "lower", "Const", "ir_dtype", "rank_of", "shape_of", "is_bool_tensor", "norm_axis", "operand", "sub_name", "as_float_result", "wrapped_index", "broadcast_to",
           "take", "narrow", "Shorthand", "with_shorthand"]
