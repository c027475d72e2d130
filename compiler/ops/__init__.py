"""The op table: one row per op, every fact about an op in one place.

A row (:class:`OpDef`) holds:

* ``infer(in_types, attrs) -> [TensorType, ...]`` — shape/dtype rule; raises :class:`IRError`.
* ``numpy(attrs, *arrays) -> array | tuple`` — the reference kernel. The same kernel executes tlc's
  IR (:mod:`tlc.runtime`) and, where MIL semantics agree, loaded MIL programs.
* ``emit_mil(ctx, attrs, inputs, name) -> Var | tuple`` — coremltools MIL Builder emission, or
  ``None`` when MIL cannot express the op (it can then only run in a fallback runtime).
* ``ane(in_types, out_types, attrs) -> str | None`` — ``None`` if the op is predicted to run on the
  Apple Neural Engine, else the reason (rules and sources: ../shared/ane-rules.md).
* ``flops(in_types, out_types, attrs) -> int`` — estimated floating-point operations (a multiply
  and an add count as 2).

Op names and attribute names follow coremltools' MIL op definitions
(coremltools/converters/mil/mil/ops/defs/iOS15..iOS18) wherever MIL has the op.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..errors import IRError
from ..ir import TensorType

Infer = Callable[[Sequence[TensorType], Mapping[str, Any]], list]
Rule = Callable[[Sequence[TensorType], Sequence[TensorType], Mapping[str, Any]], Any]

#: ANE limits shared by all ops (../shared/ane-rules.md): rank <= 5 (apple/coremltools#2536),
#: dimension sizes (FluidInference/FluidAudio#121, microsoft/onnxruntime#19543).
ANE_MAX_RANK = 5
ANE_MAX_DIM = 65536
ANE_MAX_SPATIAL = 16384


def ane_common(in_types: Sequence[TensorType], out_types: Sequence[TensorType], attrs) -> str | None:
    """Limits every op shares: rank <= 5 and dimension limits (see module docstring for sources)."""
    for t in list(in_types) + list(out_types):
        if t.rank > ANE_MAX_RANK:
            return f"rank {t.rank} > {ANE_MAX_RANK} (ANE rejects rank-6 tensors; apple/coremltools#2536)"
        if t.shape and max(t.shape) > ANE_MAX_DIM:
            return f"dimension {max(t.shape)} > {ANE_MAX_DIM} (ANE size limit; FluidInference/FluidAudio#121)"
        if t.rank >= 3 and max(t.shape[-2:]) > ANE_MAX_SPATIAL:
            return f"spatial size {max(t.shape[-2:])} > {ANE_MAX_SPATIAL} (ANE size limit; microsoft/onnxruntime#19543)"
    return None


def flops_elementwise(in_types, out_types, attrs) -> int:
    """One operation per output element."""
    return sum(t.size for t in out_types)


def flops_none(in_types, out_types, attrs) -> int:
    return 0


@dataclass(frozen=True)
class OpDef:
    """One row of the op table (see module docstring for each field's contract)."""

    name: str
    infer: Infer
    numpy: Callable[..., Any]
    emit_mil: Callable[..., Any] | None
    ane: Rule
    flops: Rule
    doc: str = ""


OPS: dict[str, OpDef] = {}


def register(
    name: str,
    *,
    infer: Infer,
    numpy: Callable[..., Any],
    emit_mil: Callable[..., Any] | None,
    ane: Rule | None = None,
    flops: Rule = flops_elementwise,
    doc: str = "",
) -> OpDef:
    """Add a row to :data:`OPS`. ``ane`` extra rules run after :func:`ane_common`."""
    if name in OPS:
        raise IRError(f"op {name!r} registered twice")

    def ane_rule(i, o, a, _extra=ane):
        return ane_common(i, o, a) or (_extra(i, o, a) if _extra else None)

    d = OpDef(name, infer, numpy, emit_mil, ane_rule, flops, doc or (numpy.__doc__ or ""))
    OPS[name] = d
    return d


def get_op(name: str, loc=None) -> OpDef:
    """The table row for ``name``; raises :class:`IRError` for an unknown op."""
    try:
        return OPS[name]
    except KeyError:
        raise IRError(f"unknown IR op {name!r}", loc=loc) from None


# Populate the table (each module registers its rows on import).
from . import elementwise, linalg, conv, norm, shape  # noqa: E402,F401
