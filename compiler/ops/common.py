"""Helpers shared by the op-family modules (type rules every family writes the same way).

Op files import these and public helpers of their own family's module, never another module's
private names.
"""
from __future__ import annotations

import numpy as np

from ..errors import IRError

#: The IR's floating-point dtypes.
FLOAT = ("fp32", "fp16")


def broadcast_shape(in_types) -> tuple[int, ...]:
    """NumPy broadcast of the input types' shapes; raises :class:`IRError` naming them."""
    try:
        return tuple(np.broadcast_shapes(*[t.shape for t in in_types]))
    except ValueError:
        raise IRError(
            "shapes " + " and ".join(str(list(t.shape)) for t in in_types) + " do not broadcast"
        ) from None


def same_dtype(in_types, allowed=None) -> str:
    """The one dtype of all ``in_types`` (raises :class:`IRError` if they differ, or if it is
    not in ``allowed``)."""
    dts = {t.dtype for t in in_types}
    if len(dts) != 1:
        raise IRError(f"operands have different dtypes {sorted(dts)}; insert a cast")
    dt = dts.pop()
    if allowed and dt not in allowed:
        raise IRError(f"dtype {dt} not supported (expected one of {', '.join(allowed)})")
    return dt


__all__ = ["FLOAT", "broadcast_shape", "same_dtype"]
