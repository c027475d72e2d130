"""One home for dtype names: the IR's names and their NumPy, torch and MIL counterparts.

The IR has five dtypes (``fp32``, ``fp16``, ``int32``, ``bool``, ``complex64``; no 64-bit types:
Core ML mlprogram I/O and most MIL ops take int32/fp32/fp16 — coremltools MIL types
``types.int32``, ``types.fp32``, ``types.fp16`` — and MIL has no complex type, so ``complex64``
exists only for fallback ops). torch's 64-bit and small integer types are narrowed on the way in
(:data:`FROM_TORCH`). torch and coremltools are imported only when a torch or MIL dtype is asked
for, so ``import tlc.runtime`` stays free of both.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np

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


__all__ = ["NUMPY", "FROM_TORCH", "TORCH_NAMES", "TORCH", "MIL_EXTRA_NUMPY", "IO", "from_torch", "numpy_of", "to_mil"]
