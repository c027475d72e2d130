"""The op table (:mod:`tlc.ops.table`: the row type, its rules and helpers), populated by the op
family modules (``elementwise``, ``linalg``, ``conv``, ...), each of which registers its rows on
import. :func:`get_op` resolves a name to its row, including the generic fallback row of a torch
operator with no row of its own (:mod:`tlc.ops.fallback`).
"""
from __future__ import annotations

from ..errors import IRError
from .table import *  # noqa: F401,F403  (the table's public names: tlc.ops.OPS, tlc.ops.register, ...)
from .table import OPS, OpDef, __all__ as _TABLE_NAMES

# Populate the table (each module registers its rows on import).
from . import elementwise, unary, linalg, conv, conv_transpose, pool, norm, shape, slicing, index, sort, resample, random, fallback, mil_only, compression, recurrent, image_resizing, mil_misc  # noqa: E402,F401


def get_op(name: str, loc=None) -> OpDef:
    """The table row for ``name``; raises :class:`IRError` for an unknown op.

    A torch operator name (``ns.op.overload``: ``aten.cumsum.default``, ``mylib.myop.default``)
    without a row of its own gets the generic fallback row, made on first use
    (:func:`tlc.ops.fallback.generic_row`), so every name the front-end produces resolves in any
    process."""
    row = OPS.get(name)
    if row is not None:
        return row
    if fallback.is_torch_op_name(name):
        return fallback.generic_row(name)
    raise IRError(f"unknown IR op {name!r}", loc=loc)


def coreai_reason(n) -> str | None:
    """``None`` if IR node ``n`` has a Core AI form (``emit_coreai``, and its ``coreai_limit``
    allows these types and attributes), else why not (:mod:`tlc.backends.coreai.emit`)."""
    row = get_op(n.op)
    if row.emit_coreai is None:
        return f"Core AI has no form of {n.op} in tlc yet"
    if row.coreai_limit is not None:
        why = row.coreai_limit([v.type for v in n.inputs], [v.type for v in n.outputs], n.attrs)
        if why:
            return f"Core AI has no form of {n.op} {why}"
    return None



__all__ = [*_TABLE_NAMES, "get_op", "coreai_reason"]
