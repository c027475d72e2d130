"""How the fx walker (:mod:`tlc.frontend.lower`) keeps a torch op as itself: the *fallback node*
(format: :mod:`tlc.ops.fallback`) holding the op's name, its arguments with IR values as numbered
inputs and torch's result types, and torch.export's ``with_effects`` wrapper, unwrapped to the op
it wraps. The functions take the :class:`~tlc.frontend.lower.Lowerer` ``L``, as lowerings do."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import UnsupportedOpError
from ..ir import Value
from ..ops.fallback import encode
from .aten_complex import Complex
from .common import SKIP, Const, ir_dtype
from .fx_values import ir_shape

if TYPE_CHECKING:  # pragma: no cover
    from .lower import Lowerer


class _EffectToken:
    """The effect token torch.export threads through ``with_effects`` (ordering only)."""

    def __repr__(self):
        return "<effect token>"


EFFECT_TOKEN = _EffectToken()

#: Effectful ops that only check or assert (dropped like run-time assertions).
_SKIP_EFFECTS = {"aten._linalg_check_errors.default"}


@dataclass
class _Literal:
    """An fx argument the front-end folded to a Python value (stored in attrs as itself)."""

    value: Any


def lower_with_effects(L: "Lowerer", node: torch.fx.Node):
    """``with_effects(token, op, *args)``: torch.export's wrapper of an op with side effects
    (``aten._linalg_check_errors`` after ``linalg_inv_ex`` and the other linalg ops, printing,
    ...). The token only orders effects; tlc's graphs have no side effects, so the wrapper is
    dropped: a check/assertion (an op returning nothing) is skipped like the other run-time
    assertions (:data:`tlc.frontend.aten.SKIP`), any other op is lowered as itself with its
    results after the token. Returns ``(token, *results)``."""
    _, op, *args = node.args
    schema = getattr(op, "_schema", None)
    if schema is None or not schema.returns or str(op) in _SKIP_EFFECTS:
        return (EFFECT_TOKEN,)
    val = node.meta.get("val")
    inner = val[1:] if isinstance(val, (tuple, list)) else val
    res = fallback_node(L, f"{op} runs with side effects (torch.export with_effects)", target=op,
                        args=tuple(args), kwargs=dict(node.kwargs), val=tuple(inner))
    return (EFFECT_TOKEN, *(res if isinstance(res, tuple) else (res,)))


def fallback_node(L: "Lowerer", why: str, target=None, args=None, kwargs=None, val=None):
    """Lower the current node as a fallback op (format: :mod:`tlc.ops.fallback`): the torch
    op's name, its arguments with IR values as numbered inputs, and torch's output types.
    Returns its output value (a tuple, ``None`` where torch returns ``None``, for ops with
    several results). ``target``/``args``/``kwargs``/``val`` replace the node's own (an op
    unwrapped from a higher-order op). Raises :class:`UnsupportedOpError` for a callable
    that is not a torch operator (nothing could run it later)."""
    node = L.node
    target = node.target if target is None else target
    node_args = tuple(node.args) if args is None else args
    node_kwargs = dict(node.kwargs) if kwargs is None else kwargs
    if not isinstance(target, torch._ops.OpOverload):
        if node.users and all(str(u.target) in SKIP for u in node.users):
            return None  # a symbolic condition only run-time assertions read (tlc drops those)
        raise UnsupportedOpError(
            f"{getattr(target, '__name__', target)} (node {node.name}) is not a torch operator, so the "
            f"fallback runtime cannot run it either ({why})", loc=L.loc)
    inputs: list[Value] = []

    def ref(a):
        if not isinstance(a, torch.fx.Node):
            return None
        r, val = L.env[a], a.meta.get("val")
        if isinstance(r, Complex):
            r = L.materialize(r)
        if not isinstance(r, (Value, Const)):
            return _Literal(r)  # folded to a Python value (or None)
        if isinstance(r, Const):
            val = r.tensor if r.tensor.dtype != torch.bfloat16 else r.tensor.float()
        v = L.v(r)
        if not any(w is v for w in inputs):
            inputs.append(v)
        i = next(k for k, w in enumerate(inputs) if w is v)
        if isinstance(val, torch.Tensor):
            return ("$in", i, str(val.dtype).removeprefix("torch."))
        return ("$bool" if isinstance(val, (bool, torch.SymBool)) else
                "$float" if isinstance(val, (float, torch.SymFloat)) else "$int", i)

    def as_input(a):
        r = ref(a)
        return encode(r.value, as_input) if isinstance(r, _Literal) else r

    attrs = {
        "args": encode(node_args, as_input),
        "kwargs": tuple((k, encode(v, as_input)) for k, v in node_kwargs.items()),
        "out_types": None,
        "why": why,
    }
    val = node.meta.get("val") if val is None else (val[0] if len(val) == 1 else val)
    many = isinstance(val, (tuple, list))
    entries = tuple(_out_entry(L, v) for v in (val if many else (val,)))
    if all(e is None for e in entries):
        return None
    attrs["out_types"] = entries
    res = L.add(str(target), inputs, attrs)
    outs = iter(res if isinstance(res, tuple) else (res,))
    if not many:
        return next(outs)
    return tuple(None if e is None else next(outs) for e in entries)


def _out_entry(L: "Lowerer", v):
    """``out_types`` entry of one torch result: ``(ir_dtype, shape)``, or None."""
    if v is None:
        return None
    if isinstance(v, torch.Tensor):
        return (ir_dtype(v.dtype, f"result of {L.node.target}", L.loc), ir_shape(v.shape))
    if isinstance(v, (bool, torch.SymBool)):
        return ("bool", ())
    if isinstance(v, (int, torch.SymInt)):
        return ("int32", ())
    if isinstance(v, (float, torch.SymFloat)):
        return ("fp32", ())
    raise UnsupportedOpError(f"{L.node.target} returns a {type(v).__name__}, which tlc's IR cannot hold",
                             loc=L.loc)
