"""Build options, checked once where they enter (``tlc.build``, ``@tlc.compile``, ``tlc.build_lm``,
``tlc build``, ``CompiledModel.with_options``): :meth:`BuildOptions.decide` applies the defaults and
raises :class:`~tlc.errors.InputError` naming a bad value; what it returns is decided, and nothing
below (the plan, emission, the writers) checks it again.

Two "targets" exist and are kept apart: :data:`TARGETS` is *where* capable ops run (``ane``,
``gpu``, ``cpu``); ``minimum_deployment_target`` is the oldest OS the package must load on
(:data:`tlc.util.coreml.DEPLOYMENT_TARGETS`).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

from tlc import dtypes
from tlc.backends.coreml.compress import GROUP_SIZE, MODES
from tlc.errors import InputError
from tlc.iospec import ClassifierConfig, ImageType, Interface, PackageMetadata, TensorType
from tlc.util.coreml import MULTIFUNCTION_MIN_TARGET, at_least, coreai, target_name

from .recipe import Recipe, read_recipe

#: ``precision=``: ``mixed`` (fp16 except measured fp32 islands; the default for ``target="ane"``),
#: ``fp16`` (every float op in fp16), ``fp32`` (no fp16; the default for gpu/cpu). See tlc.passes.precision.
PRECISIONS = ("mixed", "fp16", "fp32")

#: ``target=`` values: where capable ops run.
TARGETS = ("ane", "gpu", "cpu")

#: ``format=``: what ``save`` writes (``.mlpackage``, Core AI ``.aimodel``, or both side by side).
FORMATS = ("mlpackage", "aimodel", "both")

#: ``io_dtype`` names (coremltools' ``ct.TensorType(dtype=np.float32 / np.float16)``) -> IR dtype.
IO_DTYPES = dtypes.IO

#: ``tlc.build_lm(kv_cache=)``: ``io``, the cache as functional I/O (the Neural Engine form); ``state``,
#: iOS18 ``MLState`` buffers the program updates itself (:mod:`tlc.backends.coreml.state`; for Core ML's GPU)
KV_CACHE = ("io", "state")

#: Hugging Face tasks ``tlc build DIR --task`` / ``tlc.build_pretrained`` builds (Hugging Face exporters'
#: names: :mod:`tlc.driver.hf`)
TASKS = ("feature-extraction", "sequence-classification", "image-classification", "token-classification",
         "question-answering", "object-detection", "semantic-segmentation", "text-generation")
#: exporters' older and Hugging Face's other names for the same tasks
TASK_ALIASES = {"default": "feature-extraction", "text-classification": "sequence-classification",
                "causal-lm": "text-generation"}

#: ``CompiledModel.run(backend=)``: ``auto`` picks Core ML (macOS), else tlc's torch executor on a GPU,
#: else NumPy
RUN_BACKENDS = ("auto", "coreml", "torch", "numpy")


def default_precision(target: str = "ane") -> str:
    """The precision a build gets when none is given: ``"mixed"`` (fp16 with measured fp32 islands)
    for the Neural Engine target, else ``"fp32"``."""
    return "mixed" if target == "ane" else "fp32"


def check_target(target: str) -> str:
    """``target`` if it is one of :data:`TARGETS`, else :class:`~tlc.errors.InputError`."""
    if target not in TARGETS:
        raise InputError(f"target must be one of {TARGETS} (where capable ops run; the OS version is "
                         f"minimum_deployment_target), got {target!r}")
    return target


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else :class:`~tlc.errors.InputError`."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def check_io_dtype(io_dtype: str, minimum_deployment_target) -> str:
    """The IR dtype (``"fp32"``/``"fp16"``) of the package's float inputs and outputs.

    ``"float16"`` needs ``minimum_deployment_target`` iOS16 / macOS13 or newer: fp16 model I/O
    arrived with Core ML 6, and coremltools refuses ``ct.TensorType(dtype=np.float16)`` for
    older targets. Raises :class:`~tlc.errors.InputError` for an unknown name or an older target.
    """
    if io_dtype not in IO_DTYPES:
        raise InputError(f"io_dtype must be one of {', '.join(IO_DTYPES)}, got {io_dtype!r}")
    if io_dtype == "float16" and not at_least(minimum_deployment_target, "iOS16"):
        raise InputError(f"io_dtype='float16' needs minimum_deployment_target iOS16/macOS13 or newer "
                         f"(got {target_name(minimum_deployment_target)}): Core ML takes fp16 inputs and outputs "
                         f"from iOS16 on")
    return IO_DTYPES[io_dtype]


#: ``compress=`` that measures: ``"auto"`` is ``{"target_psnr": DEFAULT_TARGET_PSNR}``. 40 dB is what
#: Apple's guidance expects of 4-bit palettization (coreai-models working-with-coreai SKILL.md:
#: on-device fp16 > 50 dB, 4-bit palettized typically ~40 dB, below 30 dB investigate)
DEFAULT_TARGET_PSNR = 40.0
#: keys of a ``compress={...}`` dict (:class:`Compression` fields)
COMPRESS_KEYS = ("target_psnr", "avg_bits", "max_bits", "min_bits", "granularity", "group_size", "by", "embeddings")
#: ``granularity`` of compression by target: ``auto`` tries the forms the deployment target holds
COMPRESS_GRANULARITIES = ("auto", "per_tensor", "per_grouped_channel", "per_channel")
#: ``by``: measure one weight at a time, or a block's weights together (LLMs: one decoder layer's)
COMPRESS_BY = ("weight", "block")


@dataclass(frozen=True, eq=False)
class Compression:
    """The decided ``compress=`` option (:func:`check_compress`). One of: ``mode``, a uniform mode
    (:data:`tlc.backends.coreml.compress.MODES`: every weight alike); ``target_psnr`` (dB: the fewest
    bits per weight whose package reaches it on the calibration samples, :mod:`tlc.driver.compression`)
    or ``avg_bits`` (a bits-per-weight budget: the best package within it), with the candidate configs
    limited by ``min_bits``..``max_bits``, ``granularity`` (``auto``: what the deployment target holds;
    else coremltools' ``per_tensor`` / ``per_grouped_channel`` (``group_size`` channels per table) /
    ``per_channel`` (int4/int8 quantization)), ``by`` (``weight`` or ``block``: what is measured at once)
    and ``embeddings`` (``auto``: int8 where measured harmless, else dense; ``dense``); or ``recipe``
    (:class:`tlc.driver.recipe.Recipe`: the per-weight configs of a recipe file). ``str()`` is its label;
    a uniform mode compares equal to its name (``cm.compress == "int8"``, as before issue 31)."""

    mode: str | None = None
    target_psnr: float | None = None
    avg_bits: float | None = None
    max_bits: int = 8
    min_bits: int = 2
    granularity: str = "auto"
    group_size: int = GROUP_SIZE
    by: str = "weight"
    embeddings: str = "auto"
    recipe: Recipe | None = None

    @property
    def activations(self) -> bool:
        """Whether a uniform mode calibrates activations (``w8a8``)."""
        return self.mode is not None and MODES[self.mode].activations

    @property
    def measured(self) -> bool:
        """True for compression by target or budget (sensitivity is measured on the calibration samples)."""
        return self.mode is None and self.recipe is None

    def _key(self) -> tuple:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def __eq__(self, other) -> bool:
        if isinstance(other, str):
            return self.mode is not None and self.mode == other
        return isinstance(other, Compression) and self._key() == other._key()

    def __hash__(self) -> int:  # equal to its mode's string (__eq__), so hashed as that string
        return hash(self.mode) if self.mode is not None else hash(self._key())

    def __str__(self) -> str:
        if self.mode is not None:
            return self.mode
        if self.recipe is not None:
            return f"recipe {self.recipe.source or '(given)'}"
        goal = f"PSNR >= {self.target_psnr:g} dB" if self.target_psnr is not None else f"<= {self.avg_bits:g} bits/weight"
        return f"auto ({goal}, {self.min_bits}-{self.max_bits} bits, {self.granularity})"


def _number(d: dict, key: str, kind, lo, hi, what: str):
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or (kind is int and float(v) != int(v)) or not lo(v) or not hi(v):
        raise InputError(f"compress {key} must be {what}, got {v!r}")
    return kind(v)


def _compress_dict(d: dict) -> Compression:
    unknown = [k for k in d if k not in COMPRESS_KEYS]
    if unknown:
        raise InputError(f"compress has unknown key(s) {unknown}; a compress dict takes {', '.join(COMPRESS_KEYS)}")
    if "target_psnr" in d and "avg_bits" in d:
        raise InputError("compress takes target_psnr (the fewest bits reaching it) or avg_bits (the best PSNR within "
                         "that many bits per weight), not both")
    kw = {}
    if "target_psnr" in d:
        kw["target_psnr"] = _number(d, "target_psnr", float, lambda v: v > 0, lambda v: v < 200,
                                    "a PSNR in dB above 0 (coremltools' definition: 40 is typical of 4-bit palettization)")
    elif "avg_bits" in d:
        kw["avg_bits"] = _number(d, "avg_bits", float, lambda v: v >= 1, lambda v: v <= 8,
                                 "a number of bits per weight from 1 to 8")
    else:
        kw["target_psnr"] = DEFAULT_TARGET_PSNR
    for key in ("max_bits", "min_bits"):
        if key in d:
            kw[key] = _number(d, key, int, lambda v: v >= 1, lambda v: v <= 8, "an integer from 1 to 8")
    kw.setdefault("max_bits", 8)
    kw.setdefault("min_bits", min(2, kw["max_bits"]))
    if kw["min_bits"] > kw["max_bits"]:
        raise InputError(f"compress min_bits ({kw['min_bits']}) is above max_bits ({kw['max_bits']})")
    if "group_size" in d:
        kw["group_size"] = _number(d, "group_size", int, lambda v: v >= 1, lambda v: True, "a positive integer")
    for key, allowed in (("granularity", COMPRESS_GRANULARITIES), ("by", COMPRESS_BY), ("embeddings", ("auto", "dense"))):
        if key in d:
            if d[key] not in allowed:
                raise InputError(f"compress {key} must be one of {', '.join(allowed)}, got {d[key]!r}")
            kw[key] = d[key]
    return Compression(**kw)


def check_compress(compress, target: str, minimum_deployment_target: str) -> Compression | None:
    """The decided :class:`Compression` of ``compress=``: None (or ``""``) for none; a uniform mode
    (a key of :data:`tlc.backends.coreml.compress.MODES`); ``"auto"`` (``{"target_psnr":
    DEFAULT_TARGET_PSNR}``); a dict of :data:`COMPRESS_KEYS` (``{"target_psnr": 40, "max_bits": 4,
    "granularity": "auto"}`` or ``{"avg_bits": 4.5}``); a recipe file (a path ending in ``.json``:
    :func:`tlc.driver.recipe.read_recipe`); or a :class:`Compression`. Raises :class:`InputError`
    naming the option: an unknown mode or key, a PSNR <= 0, bits outside 1..8, an unknown
    granularity, a recipe file that cannot be read, a config the deployment target cannot hold (the
    oldest one it needs is named), and ``target`` other than ``"ane"`` (gpu/cpu builds run in
    tlc's fallback runtime: there is no Core ML program to compress)."""
    if compress is None or compress == "" or compress is False:
        return None
    if isinstance(compress, Compression):
        c = compress
    elif isinstance(compress, dict):
        c = _compress_dict(compress)
    elif isinstance(compress, os.PathLike) or (isinstance(compress, str) and compress.endswith(".json")):
        c = Compression(recipe=read_recipe(compress))
    elif compress == "auto":
        c = Compression(target_psnr=DEFAULT_TARGET_PSNR)
    elif isinstance(compress, str) and compress in MODES:
        c = Compression(mode=compress)
    else:
        raise InputError(f"compress must be one of {', '.join(MODES)}, 'auto', a dict of {', '.join(COMPRESS_KEYS)} or a "
                         f"recipe file (.json), got {compress!r}")
    if target != "ane":
        raise InputError(f"compress={str(c)!r} compresses the Core ML program; target={target!r} runs every op in "
                         f"tlc's fallback runtime, so there is none (use target='ane')")
    if c.mode is not None:
        need = MODES[c.mode].min_target
        if not at_least(minimum_deployment_target, need):
            raise InputError(f"compress={c.mode!r} needs minimum_deployment_target {need} or newer (got "
                             f"{target_name(minimum_deployment_target)}): its constexpr ops arrived in that opset")
    ios18 = at_least(minimum_deployment_target, "iOS18")
    if c.recipe is not None and not ios18:
        late = [(k, v.label) for k, v in c.recipe.weights.items() if v is not None and v.needs_ios18]
        if late:
            raise InputError(f"recipe {c.recipe.source}: {late[0][0]} ({late[0][1]}) and {len(late) - 1} more need "
                             f"minimum_deployment_target iOS18 or newer (got {target_name(minimum_deployment_target)}): "
                             f"grouped tables, per-channel scales, vector tables, int4 and 3-bit tables arrived in that opset")
    if c.measured and not ios18 and c.granularity == "per_grouped_channel":
        raise InputError(f"compress granularity 'per_grouped_channel' needs minimum_deployment_target iOS18 or newer "
                         f"(got {target_name(minimum_deployment_target)}); 'auto' uses what the target holds")
    return c


def check_format(format: str) -> str:
    """``format`` if it is one of :data:`FORMATS` (and coreai-core is installed for the Core AI
    ones), else :class:`InputError`."""
    if format not in FORMATS:
        raise InputError(f"format must be one of {FORMATS}, got {format!r}")
    if format != "mlpackage":
        coreai()
    return format


def check_coreai_compress(compress) -> None:
    """Raise :class:`InputError` when ``compress`` is set for a Core AI artifact: tlc compresses
    ``.mlpackage`` weights with coremltools.optimize only (issue 17: not yet for Core AI)."""
    if compress:
        raise InputError(f"compress={str(compress)!r} applies to the .mlpackage (coremltools.optimize); Core AI assets "
                         f"are not compressed by tlc yet")


def check_multifunction_target(minimum_deployment_target: str) -> None:
    """Raise :class:`InputError` unless the target holds multifunction packages (iOS18+)."""
    if not at_least(minimum_deployment_target, MULTIFUNCTION_MIN_TARGET):
        raise InputError(
            f"several input signatures build a multifunction package, which needs minimum_deployment_target "
            f"{MULTIFUNCTION_MIN_TARGET} (macOS15) or newer; got {target_name(minimum_deployment_target)}. Before "
            f"iOS18 Core ML's alternative is EnumeratedShapes on one shape-polymorphic function, which tlc does not "
            f"build (it traces static shapes, and Core ML keeps only the default shape on the Neural Engine: "
            f"apple/coremltools#1764); build one package per shape for older targets")


def _specs(specs, what: str) -> tuple:
    if specs is None:
        return ()
    if isinstance(specs, (TensorType, ImageType)):
        specs = [specs]
    if not isinstance(specs, (list, tuple)):
        raise InputError(f"{what}= must be a list of tlc.TensorType / tlc.ImageType (None keeps one as traced), got "
                         f"{type(specs).__name__}")
    for i, s in enumerate(specs):
        if s is not None and not isinstance(s, (TensorType, ImageType)):
            hint = " (coremltools' types are not tlc's: use tlc.TensorType / tlc.ImageType)" \
                if type(s).__module__.startswith("coremltools") else ""
            raise InputError(f"{what}[{i}] must be a tlc.TensorType, a tlc.ImageType or None, got {type(s).__name__}{hint}")
    return tuple(specs)


def decide_interface(*, inputs=None, outputs=None, classifier_config=None, class_labels=None, author=None,
                     license=None, version=None, short_description=None, metadata=None) -> Interface:
    """The package's I/O declarations and metadata (:class:`tlc.iospec.Interface`), checked:
    ``inputs``/``outputs`` lists of :class:`tlc.TensorType` / :class:`tlc.ImageType` / None (a
    single spec is a list of one), ``classifier_config`` (:class:`tlc.ClassifierConfig`) or its
    shorthand ``class_labels`` (a list, a label file or an ``id2label`` mapping), metadata
    (:meth:`tlc.iospec.PackageMetadata.decide`). Raises :class:`InputError` naming the bad value:
    another type in a list, both ``classifier_config`` and ``class_labels``, an image output with a
    classifier (coremltools' exporter matches output types by position, which its ``classify``
    outputs shift). What depends on the model is checked when the graph is bound
    (:func:`tlc.passes.interface.bind_interface`)."""
    ins, outs = _specs(inputs, "inputs"), _specs(outputs, "outputs")
    if class_labels is not None and classifier_config is not None:
        raise InputError("give class_labels or classifier_config, not both (class_labels=L is "
                         "classifier_config=tlc.ClassifierConfig(L))")
    if class_labels is not None:
        classifier_config = ClassifierConfig(class_labels)
    if classifier_config is not None and not isinstance(classifier_config, ClassifierConfig):
        raise InputError(f"classifier_config must be a tlc.ClassifierConfig, got {type(classifier_config).__name__}")
    if classifier_config is not None and any(isinstance(s, ImageType) for s in outs):
        raise InputError("a classifier package with an image output: coremltools' exporter cannot write both "
                         "(it matches output types by position, which the classify outputs shift)")
    md = PackageMetadata.decide(author, license, version, short_description, metadata)
    return Interface(ins, outs, classifier_config, md)


def check_interface(interface: Interface, io_dtype: str, functions: int) -> str:
    """The ``io_dtype`` a build with ``interface`` uses: ``io_dtype``, or ``"float16"`` when a
    :class:`tlc.TensorType` asks for it (one float dtype for every float input and output: tlc's
    precision pass types the package boundary as a whole). Raises :class:`InputError` for float
    TensorType dtypes that differ, an image with float16 I/O (Core ML's RGB/BGR images are fp32
    tensors in the program), images or a classifier with several signatures (coremltools writes
    neither into a multifunction package)."""
    specs = interface.inputs + interface.outputs
    floats = {s.dtype for s in specs if isinstance(s, TensorType) and s.dtype in ("float16", "float32")}
    if len(floats) > 1:
        raise InputError("TensorType dtypes float16 and float32 in one package: tlc gives every float input and output "
                         "one dtype (io_dtype); declare one of them")
    if floats:
        io_dtype = floats.pop()
    if io_dtype == "float16" and any(isinstance(s, ImageType) for s in specs):
        raise InputError("an ImageType with float16 package I/O (io_dtype='float16' or a float16 TensorType): Core ML "
                         "hands image pixels to the program as float32; use io_dtype='float32' (the program still "
                         "computes in fp16 with precision 'mixed' or 'fp16')")
    if functions > 1 and (interface.classifier is not None or any(isinstance(s, ImageType) for s in specs)):
        raise InputError("image inputs/outputs and classifiers are for one input signature: coremltools does not write "
                         "them into a multifunction package; build one package per shape")
    return io_dtype


@dataclass(frozen=True)
class BuildOptions:
    """The decided options of a build (make them with :meth:`decide`, which checks them):
    ``precision`` (:data:`PRECISIONS`), ``minimum_deployment_target`` (a canonical coremltools target
    name: ``"iOS17"``), ``target`` (:data:`TARGETS`), ``io_dtype`` (``"float32"``/``"float16"``),
    ``fallback`` (whether ops may leave Core ML), ``cost`` (a
    :class:`tlc.passes.partition.CostModel`, None for the default), ``compress`` (a decided
    :class:`Compression` or None: :func:`check_compress`), ``format`` (:data:`FORMATS`: what
    ``save`` writes; the plan does not depend on it), ``interface`` (:class:`tlc.iospec.Interface`:
    the package's I/O declarations and metadata, :func:`decide_interface`) and ``strict_precision``
    (``mixed`` raises :class:`tlc.check.calibrate.PrecisionError` instead of shipping a fallback
    program when no island assignment passes its closed loop; named apart from
    ``tlc.build(strict=)``, torch.export's mode)."""

    precision: str
    minimum_deployment_target: str
    target: str = "ane"
    io_dtype: str = "float32"
    fallback: bool = True
    cost: Any = None
    compress: Compression | None = None
    format: str = "mlpackage"
    interface: Interface = Interface()
    strict_precision: bool = False

    @classmethod
    def decide(cls, *, precision: str | None = None, minimum_deployment_target=None, target: str = "ane",
               io_dtype: str = "float32", fallback: bool = True, cost=None, compress=None,
               format: str = "mlpackage", functions: int = 1, interface: Interface | None = None,
               strict_precision: bool = False) -> "BuildOptions":
        """Apply the defaults and check every option once. Defaults: ``precision`` ``"mixed"`` for
        ``target="ane"``, else ``"fp32"``; ``minimum_deployment_target`` ``"iOS17"``, or ``"iOS18"``
        when ``functions`` > 1 (a multifunction package). Raises :class:`~tlc.errors.InputError`
        (an unknown target, precision, io_dtype, compress mode or format, a deployment target too
        old for fp16 I/O, the compression mode or several functions, ``compress`` with a Core AI
        format, ``fallback=False`` with a target other than ``"ane"``, an ``interface`` that does not
        fit the other options: :func:`check_interface`) and :class:`~tlc.errors.EmitError` (a
        deployment target coremltools does not know). ``interface``: from :func:`decide_interface`."""
        check_target(target)
        check_format(format)
        if format != "mlpackage":
            check_coreai_compress(compress)
        if not fallback and target != "ane":
            raise InputError(f"fallback=False (one .mlpackage) needs target='ane'; target={target!r} runs everything in "
                             f"tlc's fallback runtime")
        precision = check_precision(precision if precision is not None else default_precision(target))
        mdt = target_name(minimum_deployment_target or ("iOS18" if functions > 1 else "iOS17"))
        if functions > 1:
            check_multifunction_target(mdt)
        interface = interface if interface is not None else Interface()
        io_dtype = check_interface(interface, io_dtype, functions)
        check_io_dtype(io_dtype, mdt)
        compress = check_compress(compress, target, mdt)
        return cls(precision, mdt, target, io_dtype, bool(fallback), cost, compress, format, interface,
                   bool(strict_precision))

    def replace(self, **changes) -> "BuildOptions":
        """These options with ``changes`` (None values keep the current one), checked again by
        :meth:`decide`; ``compress=""`` turns compression off."""
        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        kw.update({k: v for k, v in changes.items() if v is not None})
        if kw.get("compress") in ("", False):
            kw["compress"] = None
        return BuildOptions.decide(**kw)

    @property
    def io_ir_dtype(self) -> str:
        """The IR dtype of the package's float inputs and outputs (``"fp32"``/``"fp16"``)."""
        return IO_DTYPES[self.io_dtype]


__all__ = ["PRECISIONS", "TARGETS", "FORMATS", "IO_DTYPES", "KV_CACHE", "RUN_BACKENDS", "BuildOptions", "check_target", "check_precision",
           "decide_interface", "check_interface", "TASKS", "TASK_ALIASES", "default_precision",
           "check_io_dtype", "check_compress", "Compression", "DEFAULT_TARGET_PSNR", "COMPRESS_KEYS", "check_format", "check_coreai_compress", "check_multifunction_target",
]
