"""What a Core ML package boundary cannot hold, and how tlc's runtimes put it back.

Core ML model inputs and outputs need rank >= 1 and have no complex dtype. tlc keeps both in the
model nevertheless:

* a **0-d** input or output is ``[1]`` in the package (squeezed / expanded inside it);
* a **complex** input or output is a real ``[..., 2]`` tensor in the package, the trailing axis
  holding (real, imaginary) (torch's ``view_as_real`` layout).

The package metadata records them (``tlc.scalar_io`` and ``tlc.complex_io``, each the JSON
``{"inputs": [...], "outputs": [...]}``), so any caller can undo the widening; tlc's runtimes
(:class:`tlc.runtime.LoadedModel`, :class:`tlc.runtime.BundleModel`,
:class:`tlc.driver.model.CompiledModel`) do it for you with :class:`Boundary`; emission
(:func:`tlc.backends.coreml.emit.convert`) writes the records from :func:`of_graph`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

SCALAR_IO_KEY = "tlc.scalar_io"
COMPLEX_IO_KEY = "tlc.complex_io"


def _names(record: str | None, key: str) -> tuple[set[str], set[str]]:
    if not record:
        return set(), set()
    try:
        d = json.loads(record)
        return set(d.get("inputs", ())), set(d.get("outputs", ()))
    except (ValueError, AttributeError):
        from .errors import TlcError

        raise TlcError(f"metadata {key} is not the JSON record tlc writes (damaged package)") from None


@dataclass
class Boundary:
    """The model inputs/outputs a package boundary widens (see the module docstring)."""

    scalar_inputs: set[str] = field(default_factory=set)
    scalar_outputs: set[str] = field(default_factory=set)
    complex_inputs: set[str] = field(default_factory=set)
    complex_outputs: set[str] = field(default_factory=set)

    @classmethod
    def from_metadata(cls, md: Mapping[str, str]) -> "Boundary":
        """From package / bundle metadata (``tlc.scalar_io``, ``tlc.complex_io``); raises
        :class:`tlc.errors.TlcError` for a malformed record."""
        si, so = _names(md.get(SCALAR_IO_KEY), SCALAR_IO_KEY)
        ci, co = _names(md.get(COMPLEX_IO_KEY), COMPLEX_IO_KEY)
        return cls(si, so, ci, co)

    def user_io(self, package_io: list[tuple], outputs: bool = False) -> list[tuple]:
        """``(name, shape, dtype)`` of the model's inputs (``outputs``: its outputs) as the model takes
        and returns them, from the package's own rows: 0-d for a ``[1]`` scalar, complex64
        ``[...]`` for a real ``[..., 2]`` pair."""
        scalar, cplx = (self.scalar_outputs, self.complex_outputs) if outputs else (self.scalar_inputs,
                                                                                     self.complex_inputs)
        out = []
        for n, s, d in package_io:
            if n in scalar:
                s = ()
            elif n in cplx:
                s, d = tuple(s)[:-1], np.dtype(np.complex64)
            out.append((n, tuple(s), d))
        return out

    def to_package(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Model inputs -> package inputs: complex arrays as [..., 2] float32, 0-d as [1]."""
        out = {}
        for k, v in feeds.items():
            a = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
            if k in self.complex_inputs and a.dtype.kind == "c":
                a = np.stack([a.real, a.imag], -1).astype(np.float32)
            if k in self.scalar_inputs:
                a = a.reshape(1)
            out[k] = a
        return out

    def from_package(self, outs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Package outputs -> model outputs: [..., 2] pairs as complex64, [1] as 0-d."""
        res = {}
        for k, v in outs.items():
            if k in self.complex_outputs and np.asarray(v).dtype.kind != "c":
                a = np.asarray(v, np.float32)
                v = (a[..., 0] + 1j * a[..., 1]).astype(np.complex64)
            if k in self.scalar_outputs:
                v = np.asarray(v).reshape(())
            res[k] = v
        return res

    def metadata(self) -> dict[str, str]:
        """The package metadata entries recording this boundary (empty records omitted)."""
        md = {}
        if self.scalar_inputs or self.scalar_outputs:
            md[SCALAR_IO_KEY] = json.dumps({"inputs": sorted(self.scalar_inputs), "outputs": sorted(self.scalar_outputs)})
        if self.complex_inputs or self.complex_outputs:
            md[COMPLEX_IO_KEY] = json.dumps({"inputs": sorted(self.complex_inputs),
                                             "outputs": sorted(self.complex_outputs)})
        return md


def of_graph(g) -> Boundary:
    """The boundary of a tlc IR graph: its 0-d inputs/outputs, and the complex ones the front-end
    recorded in ``graph.meta["tlc.complex_io"]`` (their IR values are already real [..., 2])."""
    ci, co = (set(x) for x in (g.meta.get(COMPLEX_IO_KEY) or {"inputs": (), "outputs": ()}).values())
    return Boundary({v.name for v in g.inputs if v.type.rank == 0},
                    {n for n, v in zip(g.output_names, g.outputs) if v.type.rank == 0}, ci, co)
