"""Choosing the function of a multifunction package for an input: exact shapes, else the smallest
function the input fits after padding along axes declared paddable.

Core ML runs static shapes on the Neural Engine (with ``RangeDim`` only the default shape stays on
it: apple/coremltools#1764, #2370), so a model that takes several sequence lengths or image sizes
ships one static function per shape (a "bucket"); the caller picks one per call. Used by
:class:`tlc.runtime.LoadedModel` (any multifunction package, tlc's or coremltools') and by
:class:`tlc.driver.multifunction.MultiFunctionModel`.

Padding: an input may be padded along an axis the user declared paddable
(``paddable={"input_ids": 1, "attention_mask": 1}``, stored by ``tlc.build`` in the package
metadata under :data:`METADATA_KEY`), with that input's pad value (default 0: token id 0, and an
attention mask extended with 0 = "not attended"). Whether padding leaves the real positions'
results unchanged is the model's property (a masked encoder: yes; an unmasked one: no), which is
why nothing is paddable unless declared. Outputs are cropped back along every axis that follows a
padded input axis: output axis ``d`` follows input axis ``(name, a)`` when, in every function, the
output's size on ``d`` equals the input's size on ``a`` and those sizes are not all the same (when
several input axes qualify with different sizes, the one of the same index decides: an image's
height and width).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from tlc.errors import InputError

#: package metadata key holding the paddable axes (JSON ``{input: {"axes": [..], "value": v}}``)
METADATA_KEY = "tlc.paddable"


@dataclass(frozen=True)
class Padding:
    """Axes of one input that may be padded (non-negative ints) and the value padded with."""

    axes: tuple[int, ...]
    value: float = 0


def parse_paddable(spec, inputs: Mapping[str, tuple] | None = None) -> dict[str, Padding]:
    """``{input: Padding}`` from a user's ``paddable=`` (``{name: axis | [axes] | Padding}``, or
    ``{name: {"axes": [...], "value": v}}`` as stored in metadata, or that JSON text), with
    negative axes resolved against ``inputs`` (name -> shape). Raises :class:`InputError` naming
    the input for an unknown name, a non-integer axis or one outside the input's rank."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError as e:
            raise InputError(f"paddable: cannot read {spec!r} as JSON ({e})") from None
    if not isinstance(spec, Mapping):
        raise InputError(f"paddable must map input names to axes, e.g. {{'input_ids': 1}}; got {type(spec).__name__}")
    out = {}
    for name, v in spec.items():
        value = 0
        if isinstance(v, Padding):
            axes, value = v.axes, v.value
        elif isinstance(v, Mapping):
            axes, value = v.get("axes", ()), v.get("value", 0)
        else:
            axes = v
        axes = [axes] if isinstance(axes, (int, np.integer)) else list(axes)
        if inputs is not None and name not in inputs:
            raise InputError(f"paddable names input {name!r}, which the model does not have "
                             f"(inputs: {', '.join(inputs)})")
        rank = len(inputs[name]) if inputs is not None else None
        resolved = []
        for a in axes:
            if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
                raise InputError(f"paddable[{name!r}]: axes must be integers, got {a!r}")
            if rank is not None and not -rank <= a < rank:
                raise InputError(f"paddable[{name!r}]: axis {a} is outside the input's rank {rank}")
            resolved.append(int(a) % rank if rank is not None else int(a))
        out[name] = Padding(tuple(sorted(set(resolved))), float(value) if not float(value).is_integer() else int(value))
    return out


def paddable_metadata(paddable: Mapping[str, Padding]) -> str:
    """The JSON text stored under :data:`METADATA_KEY`."""
    return json.dumps({k: {"axes": list(p.axes), "value": p.value} for k, p in paddable.items()}, sort_keys=True)


@dataclass(frozen=True)
class Function:
    """One function's static I/O shapes: ``inputs`` / ``outputs`` map names to shapes."""

    name: str
    inputs: dict[str, tuple[int, ...]]
    outputs: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Choice:
    """The function chosen for one call: ``pads`` (input -> ``np.pad`` widths, only inputs that
    need padding) and ``crops`` (output -> slices back to the caller's sizes)."""

    function: str
    pads: dict[str, tuple[tuple[int, int], ...]]
    crops: dict[str, tuple[slice, ...]]

    @property
    def padded(self) -> bool:
        """Whether any input is padded for this call."""
        return bool(self.pads)

    def pad(self, feeds: Mapping[str, np.ndarray], paddable: Mapping[str, Padding]) -> dict[str, np.ndarray]:
        """``feeds`` with each input in :attr:`pads` padded with its pad value."""
        return {k: (np.pad(np.asarray(v), self.pads[k], constant_values=paddable[k].value) if k in self.pads else v)
                for k, v in feeds.items()}

    def crop(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``outputs`` cut back along every axis that follows a padded input axis."""
        return {k: (np.ascontiguousarray(v[self.crops[k]]) if k in self.crops else v) for k, v in outputs.items()}


def _fits(fn: Function, shapes: Mapping[str, tuple], paddable: Mapping[str, Padding]):
    """np.pad widths per input if ``shapes`` fit ``fn`` (equal, or smaller on paddable axes), else None."""
    pads = {}
    for name, want in fn.inputs.items():
        got = shapes.get(name)
        if got is None:
            continue  # a missing input is reported by the feed check
        if len(got) != len(want):
            return None
        axes = paddable[name].axes if name in paddable else ()
        widths = []
        for a, (g, w) in enumerate(zip(got, want)):
            if g == w:
                widths.append((0, 0))
            elif a in axes and g < w:
                widths.append((0, w - g))
            else:
                return None
        if any(p for _, p in widths):
            pads[name] = tuple(widths)
    return pads


def _follows(functions: list[Function], out: str, d: int) -> list[tuple[str, int]]:
    """Input axes ``(name, a)`` output axis ``d`` follows: equal sizes in every function, not all
    the same size."""
    found = []
    names = {n for f in functions for n in f.inputs}
    for name in sorted(names):
        rank = min(len(f.inputs.get(name, ())) for f in functions)
        for a in range(rank):
            sizes = [(f.outputs.get(out, ())[d:d + 1], f.inputs[name][a]) for f in functions]
            if all(len(o) == 1 and o[0] == i for o, i in sizes) and len({i for _, i in sizes}) > 1:
                found.append((name, a))
    return found


def _crops(functions: list[Function], fn: Function, shapes: Mapping[str, tuple], pads, where: str) -> dict:
    """Slices per output back to the caller's sizes along every axis that follows a padded input
    axis (:func:`_follows`; when several input axes qualify and disagree on the caller's size, the
    one with the output axis's own index decides, else :class:`InputError`)."""
    crops = {}
    for out, oshape in fn.outputs.items():
        slices = [slice(None)] * len(oshape)
        for d in range(len(oshape)):
            axes = [(n, a) for n, a in _follows(functions, out, d) if n in shapes and a < len(shapes[n])]
            if not any(n in pads and pads[n][a][1] for n, a in axes):
                continue
            sizes = {shapes[n][a] for n, a in axes}
            if len(sizes) > 1:
                same = [(n, a) for n, a in axes if a == d]
                if len({shapes[n][a] for n, a in same}) != 1:
                    raise InputError(f"{where}: output {out} axis {d} follows input axes "
                                     + ", ".join(f"{n}[{a}]" for n, a in axes)
                                     + f" whose sizes here differ ({sorted(sizes)}): cannot tell where to crop it")
                sizes = {shapes[same[0][0]][same[0][1]]}
            size = sizes.pop()
            if size < oshape[d]:
                slices[d] = slice(0, size)
        if any(s != slice(None) for s in slices):
            crops[out] = tuple(slices)
    return crops


def choose(functions: list[Function], shapes: Mapping[str, tuple], paddable: Mapping[str, Padding] | None = None,
           *, where: str = "the package") -> Choice:
    """The function for inputs of ``shapes`` (name -> shape): the first whose shapes equal them,
    else the one needing the fewest padded elements among those the inputs fit after padding on
    ``paddable`` axes. Raises :class:`InputError` listing every function's shapes and the paddable
    axes when none fits (or when an output's crop is ambiguous: :func:`_crops`)."""
    paddable = paddable or {}
    shapes = {k: tuple(int(d) for d in s) for k, s in shapes.items()}
    best = None
    for fn in functions:
        pads = _fits(fn, shapes, paddable)
        if pads is None:
            continue
        if not pads:
            return Choice(fn.name, {}, {})
        cost = sum(int(np.prod(fn.inputs[k])) - int(np.prod(shapes[k])) for k in pads)
        if best is None or cost < best[0]:
            best = (cost, fn, pads)
    if best is None:
        got = ", ".join(f"{k} {list(v)}" for k, v in shapes.items())
        have = "; ".join(f"{f.name} (" + ", ".join(f"{k} {list(v)}" for k, v in f.inputs.items()) + ")"
                         for f in functions)
        pad = (", ".join(f"{k} axis {', '.join(map(str, p.axes))}" for k, p in paddable.items())
               or "none declared (tlc.build(..., paddable={'input_ids': 1}))")
        raise InputError(f"no function of {where} takes these inputs ({got}): functions {have}; paddable axes: {pad}. "
                         f"An input fits a function when every axis equals it, or is smaller on a paddable axis")
    _, fn, pads = best
    return Choice(fn.name, pads, _crops(functions, fn, shapes, pads, where))


__all__ = ["METADATA_KEY", "Padding", "parse_paddable", "paddable_metadata", "Function", "Choice", "choose"]
