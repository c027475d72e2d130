"""What a Core ML model description says about a function's inputs and states: flexible shapes
(``RangeDim`` / ``EnumeratedShapes``, image size ranges), image inputs and outputs, state
buffers. Read from the spec (``Model.description``, or the ``FunctionDescription`` of a
multifunction package), as Core ML reads it: coremltools' ``proto/FeatureTypes.proto`` and
``Model.proto`` define the fields used here.

* A multi-array input holds a default ``shape`` and optionally ``shapeRange`` (one
  ``[lowerBound, upperBound]`` per axis, ``upperBound`` -1 for unbounded: ``ct.RangeDim``) or
  ``enumeratedShapes`` (``ct.EnumeratedShapes``).
* An image input (``ct.ImageType``) is a ``[1, C, H, W]`` float tensor inside the program; Core ML
  fills it from a pixel buffer with 0-255 values per channel in the stated ``colorSpace`` order
  (RGB, BGR, or one GRAYSCALE channel); ``scale``/``bias`` are MIL ops coremltools put in the
  program (``img__scaled__``, ``img__biased__``), so they run with it. Sizes: fixed
  ``width``/``height``, ``imageSizeRange`` or ``enumeratedSizes``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tlc.errors import InputError

@dataclass(frozen=True)
class ShapeRule:
    """The shapes an input allows: ``default`` (ints), and either ``ranges`` (per axis ``(lo, hi)``,
    ``hi`` None for unbounded) or ``shapes`` (the enumerated ones); neither for a fixed shape."""

    default: tuple[int, ...]
    ranges: tuple[tuple[int, int | None], ...] | None = None
    shapes: tuple[tuple[int, ...], ...] | None = None

    @property
    def kind(self) -> str:
        return "range" if self.ranges else ("enumerated" if self.shapes else "fixed")

    def allows(self, shape) -> bool:
        shape = tuple(int(d) for d in shape)
        if self.ranges:
            return len(shape) == len(self.ranges) and all(
                lo <= d and (hi is None or d <= hi) for d, (lo, hi) in zip(shape, self.ranges))
        if self.shapes:
            return shape in self.shapes
        return shape == self.default

    def describe(self) -> str:
        """``[1..16, 8]``, ``one of [2, 8], [4, 8]`` or ``[2, 8]``."""
        if self.ranges:
            return "[" + ", ".join(str(lo) if lo == hi else f"{lo}..{'' if hi is None else hi}"
                                   for lo, hi in self.ranges) + "]"
        if self.shapes:
            return "one of " + ", ".join(str(list(s)) for s in self.shapes)
        return str(list(self.default))

    def wildcard(self) -> tuple:
        """The shape with None on every axis that may vary (for :func:`validate_feeds`)."""
        if self.ranges:
            return tuple(lo if lo == hi else None for lo, hi in self.ranges)
        if self.shapes:
            return tuple(d if all(s[i] == d for s in self.shapes) else None for i, d in enumerate(self.default))
        return self.default

    def as_dict(self) -> dict:
        d: dict[str, Any] = {"kind": self.kind, "default": list(self.default)}
        if self.ranges:
            d["ranges"] = [[lo, hi] for lo, hi in self.ranges]
        if self.shapes:
            d["shapes"] = [list(s) for s in self.shapes]
        return d


@dataclass(frozen=True)
class ImageFormat:
    """An image feature: ``color_space`` ``"RGB"``, ``"BGR"`` or ``"GRAYSCALE"`` (8-bit), the
    tensor inside the program ``[1, C, H, W]``."""

    color_space: str

    @property
    def channels(self) -> int:
        return 1 if self.color_space.startswith("GRAYSCALE") else 3


def _range(r) -> tuple[int, int | None]:
    return int(r.lowerBound), (None if int(r.upperBound) < 0 else int(r.upperBound))


def shape_rule(feature) -> ShapeRule:
    """The :class:`ShapeRule` of a ``FeatureDescription`` (multi-array or image)."""
    t = feature.type
    kind = t.WhichOneof("Type")
    if kind == "imageType":
        im = t.imageType
        c = 1 if im.colorSpace == 10 else 3  # ImageFeatureType.GRAYSCALE = 10
        default = (1, c, int(im.height), int(im.width))
        which = im.WhichOneof("SizeFlexibility")
        if which == "imageSizeRange":
            hr, wr = _range(im.imageSizeRange.heightRange), _range(im.imageSizeRange.widthRange)
            return ShapeRule(default, ranges=((1, 1), (c, c), hr, wr))
        if which == "enumeratedSizes":
            return ShapeRule(default, shapes=tuple((1, c, int(s.height), int(s.width)) for s in im.enumeratedSizes.sizes))
        return ShapeRule(default)
    if kind != "multiArrayType":
        return ShapeRule(())
    ma = t.multiArrayType
    default = tuple(int(d) for d in ma.shape)
    which = ma.WhichOneof("ShapeFlexibility")
    if which == "shapeRange":
        ranges = tuple(_range(r) for r in ma.shapeRange.sizeRanges)
        if not default:
            default = tuple(lo for lo, _ in ranges)
        return ShapeRule(default, ranges=ranges)
    if which == "enumeratedShapes":
        shapes = tuple(tuple(int(d) for d in s.shape) for s in ma.enumeratedShapes.shapes)
        return ShapeRule(default or shapes[0], shapes=shapes)
    return ShapeRule(default)


def image_format(feature) -> ImageFormat | None:
    t = feature.type
    if t.WhichOneof("Type") != "imageType":
        return None
    from coremltools.proto import FeatureTypes_pb2 as ft

    return ImageFormat(ft.ImageFeatureType.ColorSpace.Name(t.imageType.colorSpace))


def function_description(spec, name: str):
    """``(inputs, outputs, states)`` feature descriptions of function ``name``: the
    ``FunctionDescription`` of a multifunction package, else the model's own description."""
    desc = spec.description
    for f in desc.functions:
        if f.name == name:
            return list(f.input), list(f.output), list(f.state)
    return list(desc.input), list(desc.output), list(desc.state)


def image_to_tensor(image, fmt: ImageFormat, name: str) -> np.ndarray:
    """A PIL image, or an ``[H, W, C]`` / ``[H, W]`` uint8 array (channels in RGB order, as PIL
    gives them), as the ``[1, C, H, W]`` float32 tensor Core ML feeds the program: 0-255 values,
    channels in ``fmt.color_space`` order (BGR reverses them; GRAYSCALE takes PIL's ``L``
    conversion, ITU-R 601-2 luma). A ``[1, C, H, W]`` float array passes through unchanged.

    Raises :class:`InputError` for anything else."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        image = np.asarray(image.convert("L" if fmt.channels == 1 else "RGB"))
    a = np.asarray(image)
    if a.ndim == 4:
        return a
    if a.dtype != np.uint8:
        raise InputError(f"image input {name!r} takes a PIL image or a uint8 [H, W, C] array, got {a.dtype}{list(a.shape)}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise InputError(f"image input {name!r} takes a PIL image or a uint8 [H, W, C] array, got shape {list(a.shape)}")
    if fmt.channels == 1 and a.shape[2] == 3:
        # PIL's L conversion (ITU-R 601-2 luma in PIL's 16-bit fixed point, libImaging/Convert.c)
        r, g, b = (a[..., i].astype(np.uint32) for i in range(3))
        a = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[:, :, None]
    if a.shape[2] != fmt.channels:
        raise InputError(f"image input {name!r} is {fmt.color_space}: expected {fmt.channels} channel(s), got {a.shape[2]}")
    if fmt.color_space == "BGR":
        a = a[:, :, ::-1]
    return np.ascontiguousarray(a.transpose(2, 0, 1)[None].astype(np.float32))


def tensor_to_image(t: np.ndarray, fmt: ImageFormat) -> np.ndarray:
    """An image output: the program's ``[1, C, H, W]`` tensor as an ``[H, W, C]`` uint8 array in RGB
    order (``[H, W]`` for GRAYSCALE), values rounded and clipped to 0-255 as Core ML writes a pixel
    buffer."""
    a = np.clip(np.rint(np.asarray(t, np.float32)[0]), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    if fmt.color_space == "BGR":
        a = a[:, :, ::-1]
    return np.ascontiguousarray(a[:, :, 0] if fmt.channels == 1 else a)
