"""One home for dtype names and the IR's value type: the IR's dtype names, their NumPy, torch and MIL
counterparts, and :class:`TensorType` (dtype + shape), which the op table's rules read and write.

The IR has five dtypes (``fp32``, ``fp16``, ``int32``, ``bool``, ``complex64``; no 64-bit types:
Core ML mlprogram I/O and most MIL ops take int32/fp32/fp16 — coremltools MIL types
``types.int32``, ``types.fp32``, ``types.fp16`` — and MIL has no complex type, so ``complex64``
exists only for fallback ops). torch's 64-bit and small integer types are narrowed on the way in
(:data:`FROM_TORCH`). torch and coremltools are imported only when a torch or MIL dtype is asked
for, so ``import tlc.runtime`` stays free of both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np

from .errors import IRError

#: IR dtype name -> NumPy dtype.
NUMPY: dict[str, np.dtype] = {
    "fp32": np.dtype(np.float32),
    "fp16": np.dtype(np.float16),
    "int32": np.dtype(np.int32),
    "bool": np.dtype(np.bool_),
    "complex64": np.dtype(np.complex64),
}

#: torch dtype name (``str(torch.float32)[6:]``) -> IR dtype: 64-bit types and small integers
#: narrowed, since Core ML has no 64-bit types. bfloat16 is absent: the front end refuses it.
FROM_TORCH: dict[str, str] = {
    "float32": "fp32", "float64": "fp32", "float16": "fp16", "int64": "int32", "int32": "int32",
    "int16": "int32", "int8": "int32", "uint8": "int32", "bool": "bool", "complex64": "complex64",
    "complex128": "complex64",
}

#: IR dtype -> torch dtype name (the exact counterpart, no widening).
TORCH_NAMES: dict[str, str] = {"fp32": "float32", "fp16": "float16", "int32": "int32", "bool": "bool",
                               "complex64": "complex64"}

#: MIL ``cast`` / tensor dtype names beyond the IR's, as packages made by coremltools carry them
#: (iOS17 ``cast`` takes int8/uint8/int16/uint16; fp64/int64 appear in older programs) -> NumPy.
MIL_EXTRA_NUMPY: dict[str, type] = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16,
                                    "int64": np.int64, "fp64": np.float64}

#: ``io_dtype`` option spelling (coremltools' ``ct.TensorType(dtype=np.float16)`` names) -> IR dtype.
IO: dict[str, str] = {"float32": "fp32", "float16": "fp16"}


class _TorchDtypes(Mapping):
    """IR dtype name -> ``torch.dtype``, resolved when read (torch is imported lazily)."""

    def __getitem__(self, k: str):
        import torch

        return getattr(torch, TORCH_NAMES[k])

    def __iter__(self) -> Iterator[str]:
        return iter(TORCH_NAMES)

    def __len__(self) -> int:
        return len(TORCH_NAMES)


#: IR dtype name -> ``torch.dtype`` (a mapping; imports torch on first read).
TORCH: Mapping = _TorchDtypes()


def from_torch(dt) -> str | None:
    """IR dtype for a ``torch.dtype`` (narrowed as :data:`FROM_TORCH` says), None if the IR
    cannot hold it (bfloat16, quantized and float8 types)."""
    return FROM_TORCH.get(str(dt).removeprefix("torch."))


def numpy_of(name: str) -> np.dtype:
    """NumPy dtype of an IR dtype name or of a MIL-only name in :data:`MIL_EXTRA_NUMPY`;
    raises KeyError for anything else."""
    return NUMPY[name] if name in NUMPY else np.dtype(MIL_EXTRA_NUMPY[name])


def to_mil(dt: str):
    """coremltools MIL builtin type (``types.fp32``, ...) for an IR dtype; raises KeyError for
    ``complex64``, which MIL cannot hold."""
    from coremltools.converters.mil.mil import types

    return {"fp32": types.fp32, "fp16": types.fp16, "int32": types.int32, "bool": types.bool}[dt]



#: IR dtype name -> NumPy dtype (:data:`tlc.dtypes.NUMPY`; why these five: :mod:`tlc.dtypes`).
DTYPES: dict[str, np.dtype] = NUMPY


def dtype_of(array: np.ndarray) -> str:
    """IR dtype name of a NumPy array; raises :class:`IRError` for dtypes the IR cannot hold."""
    for name, dt in DTYPES.items():
        if array.dtype == dt:
            return name
    raise IRError(f"NumPy dtype {array.dtype} has no IR dtype (supported: {', '.join(DTYPES)})")


@dataclass(frozen=True)
class TensorType:
    """Type of an IR value: ``dtype`` (a key of :data:`DTYPES`) and a ``shape``.

    Each dimension is a non-negative int or, for a data-dependent size, a non-empty string naming
    it (torch's unbacked SymInt as printed: ``"u0"``, ``"(u0//2)"``); see :attr:`is_static`.
    Raises :class:`IRError` for an unknown dtype or a malformed shape.
    """

    dtype: str
    shape: tuple[int | str, ...]

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise IRError(f"unknown IR dtype {self.dtype!r} (supported: {', '.join(DTYPES)})")
        ok = all((isinstance(d, (int, np.integer)) and d >= 0)
                 or (isinstance(d, str) and d) for d in self.shape)
        if not ok:
            raise IRError(f"shape {self.shape} must be a tuple of non-negative ints or symbolic size names")
        object.__setattr__(self, "shape", tuple(d if isinstance(d, str) else int(d) for d in self.shape))

    @property
    def rank(self) -> int:
        """Number of axes (0 for a scalar)."""
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        """True when every dimension is an int (no data-dependent size)."""
        return not any(isinstance(d, str) for d in self.shape)

    @property
    def size(self) -> int:
        """Number of elements. A symbolic dimension counts as 1, so for a data-dependent shape
        this is a lower bound (enough for reports, which must not crash on such values)."""
        return int(np.prod([1 if isinstance(d, str) else d for d in self.shape], dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's data (elements x dtype size; a lower bound when not static)."""
        return self.size * DTYPES[self.dtype].itemsize

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.shape))}]"


__all__ = ["DTYPES", "TensorType", "dtype_of", "NUMPY", "FROM_TORCH", "TORCH_NAMES", "TORCH", "MIL_EXTRA_NUMPY", "IO", "from_torch", "numpy_of", "to_mil"]
