"""What every artifact :func:`tlc.runtime.load` returns speaks: :class:`LoadedArtifact`.

One protocol for the five kinds of artifact tlc writes — an ``.mlpackage``
(:class:`~tlc.runtime.LoadedModel`), a multifunction ``.mlpackage`` (the same class, one function
chosen per call), a bundle ``NAME.tlc`` and a Core AI bundle ``NAME.aimodel.tlc``
(:class:`~tlc.runtime.BundleModel`), and a Core AI ``.aimodel``
(:class:`~tlc.runtime.coreai_runtime.CoreAIModel`) — so code written for one runs on the others:

* ``inputs`` / ``outputs``: one :class:`IOSpec` ``(name, shape, dtype)`` per model input and output,
  as the model takes and returns them (0-d values as 0-d, complex ones as complex64: the package
  boundary's widening undone, :mod:`tlc.boundary`); for a multifunction artifact, those of the
  default (or fixed) function. ``input_names`` / ``output_names`` list the names.
* ``functions``: the function names (``["main"]`` for a single-function artifact).
* ``model(feeds)`` / ``model(**named)`` and ``model.run(feeds)``: ``{output name: ndarray}`` from
  ``{input name: array}``; :class:`~tlc.errors.InputError` for a missing, unknown or misshapen input.
* ``path`` and ``backend`` (what runs it: ``"interpreter"``, ``"coreml"``, ``"coreai"``, or a
  bundle's per-segment summary).

tests/test_loaded_protocol.py checks every kind against it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, NamedTuple, Protocol, runtime_checkable

import numpy as np


class IOSpec(NamedTuple):
    """One input or output of a loaded artifact: ``name``, ``shape`` (a tuple of ints; None on an
    axis a flexible input may vary along) and ``dtype`` (a NumPy dtype)."""

    name: str
    shape: tuple
    dtype: np.dtype


def io_specs(rows) -> list[IOSpec]:
    """``[IOSpec, ...]`` from ``(name, shape, dtype)`` rows (dtype: anything ``np.dtype`` takes)."""
    return [IOSpec(str(n), tuple(s), np.dtype(d)) for n, s, d in rows]


@runtime_checkable
class LoadedArtifact(Protocol):
    """The protocol (module docstring)."""

    path: Path
    backend: str
    inputs: list[IOSpec]
    outputs: list[IOSpec]
    functions: list[str]

    @property
    def input_names(self) -> list[str]: ...

    @property
    def output_names(self) -> list[str]: ...

    def __call__(self, feeds: Mapping[str, Any] | None = None, **named) -> dict[str, np.ndarray]: ...

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]: ...


class NamedIO:
    """``input_names`` / ``output_names`` from ``inputs`` / ``outputs`` (mixed into each loaded kind)."""

    @property
    def input_names(self) -> list[str]:
        """Input names, in order."""
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """Output names, in order."""
        return [s.name for s in self.outputs]


__all__ = ["IOSpec", "LoadedArtifact", "NamedIO", "io_specs"]
