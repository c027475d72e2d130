"""What a package's inputs and outputs are, as an app developer sees them: the I/O specs
:class:`TensorType`, :class:`ImageType`, :class:`ClassifierConfig` and the package metadata
:class:`PackageMetadata` (``tlc.build(..., inputs=, outputs=, classifier_config=, author=, ...)``).

The names and meanings follow coremltools' (``ct.TensorType``, ``ct.ImageType``,
``ct.ClassifierConfig``: coremltools/converters/mil/input_types.py; ``MLModel.author``,
``license``, ``version``, ``short_description``, ``input_description``: coremltools/models/model.py),
so a coremltools user knows them; where tlc does more it says so (a per-channel ``scale``;
``scale``/``bias`` on an image *output*).

Each spec checks its own fields when it is made (the values enter here); what depends on the
model (does the input exist, is it ``[1, C, H, W]`` float, do the labels match the logits) is
checked when the traced graph is bound (:func:`tlc.passes.interface.bind_interface`). The decided
record of a build is :class:`Interface` (:func:`tlc.driver.options.decide_interface`); what
emission needs of it, bound to the graph, is :class:`PackageIO`. Nothing here imports torch or
coremltools.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import InputError

#: ``ImageType.color_layout`` values: Core ML's ``ImageFeatureType.ColorSpace`` (RGB, BGR, GRAYSCALE
#: 8-bit pixel buffers; coremltools/proto/FeatureTypes.proto)
COLOR_LAYOUTS = ("RGB", "BGR", "GRAYSCALE")

#: package I/O dtypes a :class:`TensorType` may name (Core ML multi-array I/O: coremltools'
#: ``ct.TensorType(dtype=np.float32 / np.float16 / np.int32)``; int64 is int32 at a package boundary)
IO_DTYPES = {"float32": "float32", "float16": "float16", "int32": "int32", "int64": "int32", "fp32": "float32",
             "fp16": "float16"}

#: names coremltools' ``NameSanitizer`` changes even when they are identifiers
#: (coremltools/converters/mil/mil/passes/defs/preprocess.py): MIL's type keywords
RESERVED_NAMES = frozenset({"any", "bool", "program", "func", "tensor", "list", "dict", "tuple", "true", "false",
                            "string", "bf16", "fp16", "fp32", "fp64", "int8", "int16", "int32", "int64", "uint8",
                            "uint16", "uint32", "uint64", "state"})
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def check_name(name: str, what: str) -> str:
    """``name`` if Core ML keeps it as a feature name, else :class:`InputError` naming ``what``.

    The rule is coremltools' ``NameSanitizer`` (which would otherwise rename the feature silently
    when the package is written): ``[A-Za-z_][A-Za-z0-9_]*``, not a MIL type keyword
    (:data:`RESERVED_NAMES`)."""
    if not isinstance(name, str) or not _IDENT.match(name):
        raise InputError(f"{what} name {name!r} is not a Core ML feature name: use letters, digits and '_', not "
                         f"starting with a digit (e.g. {re.sub(r'[^A-Za-z0-9_]', '_', str(name)) or 'x'!r})")
    if name in RESERVED_NAMES:
        raise InputError(f"{what} name {name!r} is a MIL type keyword, which Core ML renames; choose another "
                         f"(e.g. {name + '_'!r})")
    return name


def _text(v, what: str) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise InputError(f"{what} must be a string, got {type(v).__name__}")
    return v


def _dtype_name(dtype) -> str | None:
    """``"float32"``, ``"float16"`` or ``"int32"`` for a NumPy/torch dtype or its name."""
    if dtype is None:
        return None
    name = getattr(dtype, "__name__", None) or str(dtype)
    name = name.rsplit(".", 1)[-1]  # torch.float16, numpy.float32, <class 'numpy.float32'>
    name = name.strip("'>")
    if name not in IO_DTYPES:
        raise InputError(f"TensorType dtype must be one of float32, float16, int32 (int64 is int32 in a package), "
                         f"got {dtype!r}")
    return IO_DTYPES[name]


@dataclass(frozen=True)
class TensorType:
    """A multi-array input or output (coremltools' ``ct.TensorType``): ``name`` (None keeps the
    traced name: the forward's parameter, the output's key), ``dtype`` (``np.float32``,
    ``np.float16``, ``np.int32`` or their names; None keeps the model's; float16 sets the package's
    float I/O dtype, ``io_dtype``) and ``description`` (shown by Xcode and ``tlc inspect``).
    Raises :class:`~tlc.errors.InputError` for a name Core ML would change (:func:`check_name`) or
    an unknown dtype. The shape is always the example input's (tlc builds static shapes)."""

    name: str | None = None
    dtype: Any = None
    description: str | None = None

    def __post_init__(self):
        if self.name is not None:
            check_name(self.name, "TensorType")
        object.__setattr__(self, "dtype", _dtype_name(self.dtype))
        _text(self.description, "TensorType description")


def _per_channel(v, what: str, channels: int) -> tuple[float, ...]:
    if isinstance(v, (str, bytes)):
        raise InputError(f"ImageType {what} must be a number or one number per channel, got {v!r}")
    vals = list(v) if isinstance(v, (list, tuple)) or hasattr(v, "__len__") else [v]
    try:
        vals = [float(x) for x in vals]
    except (TypeError, ValueError):
        raise InputError(f"ImageType {what} must be a number or one number per channel, got {v!r}") from None
    if len(vals) == 1:
        vals = vals * channels
    if len(vals) != channels:
        raise InputError(f"ImageType {what} has {len(vals)} values; a {channels}-channel image takes 1 or {channels}")
    if not all(math.isfinite(x) for x in vals):
        raise InputError(f"ImageType {what} must be finite, got {v!r}")
    return tuple(vals)


@dataclass(frozen=True)
class ImageType:
    """An image input or output (coremltools' ``ct.ImageType``): Core ML hands the program a
    ``[1, C, H, W]`` float tensor of 0-255 pixel values, channels in ``color_layout`` order
    (``"RGB"``, ``"BGR"`` or ``"GRAYSCALE"``, one channel), and a Vision app passes a
    ``CVPixelBuffer`` / ``CGImage``.

    As an **input**, the model receives ``pixel * scale + bias`` (per channel, in
    ``color_layout`` order; ``scale`` and ``bias`` are a number or one per channel — coremltools
    takes one ``scale`` only); tlc emits the ``mul``/``add`` ops inside the program, where they are
    placed and reported like every other op. ``channel_first=False``: the model takes
    ``[1, H, W, C]`` (a ``transpose`` is emitted too). As an **output**, the model's
    ``[1, C, H, W]`` (``[1, H, W, C]``) float tensor becomes the image ``value * scale + bias``
    (e.g. ``scale=127.5, bias=127.5`` for a model that returns ``[-1, 1]``); Core ML rounds and
    clips it to 0-255. ``description`` as :class:`TensorType`'s.

    Raises :class:`~tlc.errors.InputError` for an unknown color layout, a ``scale``/``bias`` of
    the wrong length, a zero or non-finite ``scale``, a name Core ML would change."""

    name: str | None = None
    scale: Any = 1.0
    bias: Any = 0.0
    color_layout: Any = "RGB"
    channel_first: bool = True
    description: str | None = None

    def __post_init__(self):
        if self.name is not None:
            check_name(self.name, "ImageType")
        layout = getattr(self.color_layout, "value", self.color_layout)  # ct.colorlayout.RGB
        if layout not in COLOR_LAYOUTS:
            raise InputError(f"ImageType color_layout must be one of {', '.join(COLOR_LAYOUTS)}, got {self.color_layout!r}")
        object.__setattr__(self, "color_layout", layout)
        c = self.channels
        object.__setattr__(self, "scale", _per_channel(self.scale, "scale", c))
        object.__setattr__(self, "bias", _per_channel(self.bias, "bias", c))
        if any(s == 0 for s in self.scale):
            raise InputError("ImageType scale must not be 0 (the image would not reach the model)")
        if not isinstance(self.channel_first, bool):
            raise InputError(f"ImageType channel_first must be True or False, got {self.channel_first!r}")
        _text(self.description, "ImageType description")

    @property
    def channels(self) -> int:
        """1 for GRAYSCALE, else 3."""
        return 1 if self.color_layout == "GRAYSCALE" else 3

    def _per_axis(self, vals):
        v = np.asarray(vals, np.float64)
        return v.reshape(1, -1, 1, 1) if self.channel_first else v.reshape(1, 1, 1, -1)

    def to_pixels(self, x) -> np.ndarray:
        """The image tensor (float32 ``[1, C, H, W]``, 0-255 where the model's input came from
        an image) that gives the model's input ``x`` as an input's preprocessing does:
        ``(x - bias) / scale`` (``x`` ``[1, H, W, C]`` for ``channel_first=False``). Used to feed
        a package the model's example and calibration inputs."""
        p = (np.asarray(x, np.float64) - self._per_axis(self.bias)) / self._per_axis(self.scale)
        return np.ascontiguousarray((p if self.channel_first else p.transpose(0, 3, 1, 2)).astype(np.float32))

    def from_pixels(self, p) -> np.ndarray:
        """The model's input for image tensor ``p`` (``[1, C, H, W]``): ``p * scale + bias``, in
        the model's layout (the inverse of :meth:`to_pixels`; what the package computes)."""
        p = np.asarray(p, np.float64)
        p = p if self.channel_first else p.transpose(0, 2, 3, 1)
        return (p * self._per_axis(self.scale) + self._per_axis(self.bias)).astype(np.float32)


def read_labels(labels, what: str = "class_labels") -> tuple:
    """Class labels as a tuple of str or of int, from a list/tuple, a file (one label per line,
    as coremltools reads ``ClassifierConfig(class_labels="labels.txt")``), or a Hugging Face
    ``id2label`` mapping ({index: label}, indices 0..N-1, as int or str keys). Raises
    :class:`~tlc.errors.InputError` for an empty list, a missing file, labels mixing str and int or
    of another type, a mapping whose keys are not 0..N-1, and repeated labels (Core ML puts the
    labels as keys of the probabilities dictionary)."""
    if isinstance(labels, (str, os.PathLike)):
        p = Path(labels)
        if not p.is_file():
            raise InputError(f"{what}: label file {str(p)!r} does not exist")
        items = [ln.strip() for ln in p.read_text().splitlines()]
        while items and not items[-1]:
            items.pop()
    elif isinstance(labels, Mapping):
        try:
            byid = {int(k): v for k, v in labels.items()}
        except (TypeError, ValueError):
            raise InputError(f"{what}: an id2label mapping needs integer keys, got {list(labels)[:4]}") from None
        if sorted(byid) != list(range(len(byid))):
            raise InputError(f"{what}: an id2label mapping must have the indices 0..{len(byid) - 1}, got {sorted(byid)[:8]}")
        items = [byid[i] for i in range(len(byid))]
    elif isinstance(labels, Sequence) or hasattr(labels, "tolist"):
        items = list(labels.tolist() if hasattr(labels, "tolist") else labels)
    else:
        raise InputError(f"{what} must be a list of labels, a label file or an id2label mapping, got "
                         f"{type(labels).__name__}")
    if not items:
        raise InputError(f"{what} is empty")
    if all(isinstance(x, str) for x in items):
        items = [str(x) for x in items]
    elif all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        items = [int(x) for x in items]
    else:
        raise InputError(f"{what} must be all strings or all integers (Core ML's classLabel is a String or an Int64), "
                         f"got {sorted({type(x).__name__ for x in items})}")
    seen: dict = {}
    for i, x in enumerate(items):
        if x in seen:
            raise InputError(f"{what}: label {x!r} appears twice (indices {seen[x]} and {i}); Core ML's probabilities "
                             f"dictionary needs distinct labels")
        seen[x] = i
    return tuple(items)


@dataclass(frozen=True)
class ClassifierConfig:
    """A classifier package (coremltools' ``ct.ClassifierConfig``): Core ML's classifier outputs
    ``predicted_feature_name`` (default ``classLabel``: the label of the largest probability, a
    String or Int64) and the ``{label: probability}`` dictionary, which Xcode's preview and
    ``VNClassificationObservation`` read. ``class_labels``: a list, a label file or an
    ``id2label`` mapping (:func:`read_labels`); ``predicted_probabilities_output``: the model
    output holding one probability per label (its name after ``outputs=`` renaming; default the
    model's first output). The dictionary output is named like that output when ``outputs=``
    names it, else ``<predicted_feature_name>_probs`` (coremltools' name). The values are the
    output's as the model computes them: apply ``softmax`` in the model for probabilities.
    Raises :class:`~tlc.errors.InputError` (:func:`read_labels`; a name Core ML would change)."""

    class_labels: Any
    predicted_feature_name: str = "classLabel"
    predicted_probabilities_output: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "class_labels", read_labels(self.class_labels))
        check_name(self.predicted_feature_name, "ClassifierConfig predicted_feature_name")
        if self.predicted_probabilities_output is not None:
            _text(self.predicted_probabilities_output, "ClassifierConfig predicted_probabilities_output")


@dataclass(frozen=True)
class PackageMetadata:
    """What Xcode shows on a model's page (``MLModelDescription.metadata``: coremltools'
    ``MLModel.author``, ``license``, ``version``, ``short_description``) and user-defined keys
    (``user_defined_metadata``: ``user``, ``(key, value)`` string pairs, sorted). None leaves a
    field to tlc: ``version`` becomes tlc's version, ``short_description`` says what built the
    package."""

    author: str | None = None
    license: str | None = None
    version: str | None = None
    short_description: str | None = None
    user: tuple[tuple[str, str], ...] = ()

    @classmethod
    def decide(cls, author=None, license=None, version=None, short_description=None, metadata=None) -> "PackageMetadata":
        """Checked metadata. ``metadata``: ``{key: str}``; keys starting ``tlc.`` are tlc's own
        and refused, as are non-string keys or values (:class:`~tlc.errors.InputError`)."""
        user = []
        if metadata is not None:
            if not isinstance(metadata, Mapping):
                raise InputError(f"metadata must be a dict of strings, got {type(metadata).__name__}")
            for k, v in metadata.items():
                if not isinstance(k, str) or not isinstance(v, str):
                    raise InputError(f"metadata must map strings to strings (Core ML's user-defined metadata); "
                                     f"{k!r} -> {type(v).__name__}")
                if k.startswith("tlc."):
                    raise InputError(f"metadata key {k!r}: keys starting 'tlc.' are tlc's own records")
                user.append((k, v))
        return cls(_text(author, "author"), _text(license, "license"), _text(version, "version"),
                   _text(short_description, "short_description"), tuple(sorted(user)))

    def as_dict(self) -> dict[str, str]:
        """The fields that are set and the user-defined keys, as one ``{key: value}`` (a bundle's
        manifest and a Core AI asset's metadata, which have no model-page fields)."""
        d = {k: getattr(self, k) for k in ("author", "license", "version", "short_description")
             if getattr(self, k) is not None}
        return {**d, **dict(self.user)}


@dataclass(frozen=True)
class Interface:
    """The decided I/O declarations of a build: ``inputs``/``outputs`` (one entry per model
    input/output, in order, from the first; None keeps that one as traced), ``classifier``,
    ``metadata``. :func:`tlc.driver.options.decide_interface` makes it; an empty one changes nothing."""

    inputs: tuple = ()
    outputs: tuple = ()
    classifier: ClassifierConfig | None = None
    metadata: PackageMetadata = field(default_factory=PackageMetadata)

    @property
    def declares_io(self) -> bool:
        """True when inputs, outputs or a classifier are declared (anything to bind to the graph),
        not only the package's metadata."""
        return bool(self.classifier) or any(s is not None for s in self.inputs + self.outputs)


@dataclass(frozen=True)
class ImageIO:
    """An image input or output of a bound package: the feature ``name``, its ``color_layout``,
    the ``[1, C, H, W]`` ``shape`` of the package's tensor, and the spec it came from."""

    name: str
    color_layout: str
    shape: tuple[int, ...]
    spec: ImageType


@dataclass(frozen=True)
class BoundClassifier:
    """A classifier bound to the graph: ``labels``, the label output ``label_name``, the dictionary
    output ``dict_name``, and the graph output ``probabilities`` (the tensor the package's
    ``classify`` op reads)."""

    labels: tuple
    label_name: str
    dict_name: str
    probabilities: str


@dataclass(frozen=True)
class PackageIO:
    """What emission needs of an :class:`Interface` bound to a graph
    (:func:`tlc.passes.interface.bind_interface`): ``images`` / ``image_outputs``
    (:class:`ImageIO`), ``classifier`` (:class:`BoundClassifier`), ``descriptions`` (``(feature
    name, text)`` pairs), ``metadata`` (:class:`PackageMetadata`)."""

    images: tuple[ImageIO, ...] = ()
    image_outputs: tuple[ImageIO, ...] = ()
    classifier: BoundClassifier | None = None
    descriptions: tuple[tuple[str, str], ...] = ()
    metadata: PackageMetadata = field(default_factory=PackageMetadata)

    def output_features(self, graph_outputs: Sequence[str]) -> list[str]:
        """The package's output feature names for the graph's output names: a classifier's label and
        dictionary first (where coremltools puts them), its probabilities tensor no longer an output."""
        c = self.classifier
        if c is None:
            return list(graph_outputs)
        return [c.label_name, c.dict_name] + [n for n in graph_outputs if n != c.probabilities]


__all__ = ["TensorType", "ImageType", "ClassifierConfig", "PackageMetadata", "Interface", "PackageIO", "ImageIO",
           "BoundClassifier", "COLOR_LAYOUTS", "RESERVED_NAMES", "check_name", "read_labels"]
