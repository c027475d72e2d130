"""The build plan: everything a :class:`tlc.CompiledModel` decides after tracing, computed once
per option set.

:func:`make_plan` runs the build stages in order — precision (``precision::fp16`` /
``precision::fp32``, or ``mixed``'s range analysis with its closed loop, :mod:`tlc.calibrate`),
placement (:func:`tlc.passes.partition.assign`) — and returns a frozen :class:`BuildPlan`, whose
segmentation (:func:`~tlc.passes.partition.split`) is computed on its first use and kept.
``CompiledModel`` computes the plan on first need and reads it for ``emit_graph``, ``islands``, ``placement``, ``segments``, ``is_bundle``,
``precision_check``, ``report()``, ``mlmodel`` and ``save()``; ``with_options`` gives a model with
other :class:`BuildOptions` and no plan yet. So no property runs a stage behind another's back,
and reading them twice runs each stage once (tests/test_build_plan.py counts it).
"""
from __future__ import annotations

import functools
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from . import dtypes
from .errors import InputError, NotShippableError
from .ir import Graph


#: ``target=`` values: where capable ops run.
TARGETS = ("ane", "gpu", "cpu")


def check_target(target: str) -> str:
    """``target`` if it is one of :data:`TARGETS`, else :class:`~tlc.errors.InputError`."""
    if target not in TARGETS:
        raise InputError(f"target must be one of {TARGETS} (where capable ops run; the OS version is "
                         f"minimum_deployment_target), got {target!r}")
    return target


#: ``io_dtype`` names (coremltools' ``ct.TensorType(dtype=np.float32 / np.float16)``) -> IR dtype.
IO_DTYPES = dtypes.IO


def check_io_dtype(io_dtype: str, minimum_deployment_target) -> str:
    """The IR dtype (``"fp32"``/``"fp16"``) of the package's float inputs and outputs.

    ``"float16"`` needs ``minimum_deployment_target`` iOS16 / macOS13 or newer: fp16 model I/O
    arrived with Core ML 6, and coremltools refuses ``ct.TensorType(dtype=np.float16)`` for
    older targets. Raises :class:`~tlc.errors.InputError` for an unknown name or an older target.
    """
    from ._coreml import quiet_coremltools
    from .emit import resolve_target, target_name

    if io_dtype not in IO_DTYPES:
        raise InputError(f"io_dtype must be one of {', '.join(IO_DTYPES)}, got {io_dtype!r}")
    if io_dtype == "float16" and resolve_target(minimum_deployment_target) < quiet_coremltools().target.iOS16:
        raise InputError(f"io_dtype='float16' needs minimum_deployment_target iOS16/macOS13 or newer "
                         f"(got {target_name(minimum_deployment_target)}): Core ML takes fp16 inputs and outputs "
                         f"from iOS16 on")
    return IO_DTYPES[io_dtype]


def check_shippable(g: Graph | None, target: str, program: str = "coreml") -> None:
    """Raise unless graph ``g`` can be one ``.mlpackage`` (``fallback=False``; one ``.aimodel``
    with ``program="coreai"``): :class:`InputError` for a target other than ``"ane"``,
    :class:`NotShippableError` listing every op Core ML (Core AI) cannot hold
    (:func:`tlc.passes.partition.coreml_reason`), with its reason and source line."""
    if target != "ane":
        raise InputError(f"fallback=False (one .mlpackage) needs target='ane'; target={target!r} runs everything in "
                         f"tlc's fallback runtime")
    if g is None:
        return
    from tlc.passes.partition import blockers, coreml_reason

    bad = blockers(g, program)
    if bad:
        raise NotShippableError([(n.op, n.name, coreml_reason(n, program), where(n.loc)) for n in bad])


def where(loc) -> str:
    """``file:line`` (and code) of a node's source location, or ``""``."""
    if loc is None or not loc.file:
        return ""
    return f"{loc.file}:{loc.line}" + (f"  {loc.code.strip()}" if loc.code else "")


@dataclass(frozen=True)
class BuildOptions:
    """The options a plan depends on: ``precision`` (``"mixed"``/``"fp16"``/``"fp32"``),
    ``minimum_deployment_target`` (a coremltools target name), ``target`` (``"ane"``/``"gpu"``/
    ``"cpu"``), ``io_dtype`` (``"float32"``/``"float16"``), ``fallback`` (whether ops may leave
    Core ML), ``cost`` (a :class:`tlc.passes.partition.CostModel`, None for the default),
    ``compress`` (a :data:`tlc.compress.MODES` key applied to the emitted program, or None)."""

    precision: str
    minimum_deployment_target: str
    target: str = "ane"
    io_dtype: str = "float32"
    fallback: bool = True
    cost: Any = None
    compress: str | None = None


@dataclass(frozen=True)
class BuildPlan:
    """What a build decided. ``emit_graph``: the graph the artifact holds (after precision);
    ``placement``, ``segments``: where each op runs and the graph cut into per-target parts;
    ``precision_check``: ``mixed``'s closed-loop record (None otherwise); ``mlmodel`` /
    ``emit_info``: the one-package program the closed loop already emitted (None otherwise:
    emitted on demand); ``timings``: seconds per stage (``precision``, ``closed_loop``,
    ``partition``)."""

    options: BuildOptions
    emit_graph: Graph
    placement: Any
    precision_check: Any = None
    mlmodel: Any = None
    emit_info: Any = None
    timings: Mapping[str, float] = field(default_factory=dict)

    @functools.cached_property
    def segments(self) -> tuple:
        """:attr:`emit_graph` cut by :attr:`placement` (:func:`tlc.passes.partition.split`), on first
        access (a one-package build that is saved never needs it), then kept."""
        from tlc.passes.partition import split

        return tuple(split(self.emit_graph, self.placement))

    @property
    def is_bundle(self) -> bool:
        """True when some op runs in tlc's fallback runtime (the artifact is a ``NAME.tlc`` bundle)."""
        return is_bundle(self.placement)

    @functools.cached_property
    def coreai_placement(self):
        """:attr:`placement` for Core AI segments (``format="aimodel"``): the same placement when
        every op it puts in Core ML has a Core AI form, else a new partition of :attr:`emit_graph`
        in which those ops run in tlc's fallback runtime too (:func:`tlc.passes.partition.assign`
        with ``program="coreai"``; the cost model decides as for Core ML)."""
        from tlc.ops import coreai_reason

        nodes = {n.name: n for n in self.emit_graph.nodes}
        if all(coreai_reason(nodes[k]) is None for k, t in self.placement.target.items() if t == "ane"):
            return self.placement
        return _assign(self.emit_graph, self.options, dict(self.timings), program="coreai")

    @functools.cached_property
    def coreai_segments(self) -> tuple:
        """:attr:`emit_graph` cut by :attr:`coreai_placement` (:attr:`segments` when they agree)."""
        from tlc.passes.partition import split

        if self.coreai_placement is self.placement:
            return self.segments
        return tuple(split(self.emit_graph, self.coreai_placement))

    @property
    def islands(self) -> dict[str, str]:
        """``{node name: reason}`` of the ops ``mixed`` kept in fp32."""
        return dict(self.emit_graph.meta.get("tlc.islands", {}))


def is_bundle(placement) -> bool:
    """Whether a placement needs tlc's fallback runtime (more than one segment, or one not in Core ML)."""
    return len(set(placement.segment.values())) > 1 or any(t != "ane" for t in placement.target.values())


def _assign(g: Graph, options: BuildOptions, timings: dict, program: str = "coreml"):
    from tlc.passes.partition import assign

    t0 = time.perf_counter()
    kw = {"cost": options.cost} if options.cost is not None else {}
    p = assign(g, target=options.target, fallback=options.fallback, program=program, **kw)
    timings["partition"] = timings.get("partition", 0.0) + time.perf_counter() - t0
    return p


def make_plan(graph: Graph, options: BuildOptions, *, calibration: list[dict], metadata: Callable[[Graph], dict],
              progress: bool = False) -> BuildPlan:
    """Plan the build of the fp32 IR ``graph`` under ``options``. ``calibration``: feeds by input
    name for ``mixed`` (the example inputs first); ``metadata(emit graph)``: the package metadata
    the closed loop's emissions carry; ``progress``: print the closed loop's rounds to stderr.

    Raises :class:`tlc.calibrate.PrecisionError` when ``mixed`` finds no passing program, and
    what the passes and emission raise (naming the pass or op)."""
    from tlc.passes import run_pipeline


    io = IO_DTYPES[options.io_dtype]
    timings: dict[str, float] = {}
    check = mlm = info = placement = None
    t0 = time.perf_counter()
    if options.precision == "mixed":
        eg, (placement, mlm, info), check = _verified_mixed(graph, options, io, calibration, metadata, progress, timings)
    else:
        eg = graph if options.precision == "fp32" and io == "fp32" else \
            run_pipeline(graph, [f"precision::{options.precision}"], {f"precision::{options.precision}": {"io_dtype": io}})
        timings["precision"] = time.perf_counter() - t0
    if placement is None:
        placement = _assign(eg, options, timings)
    return BuildPlan(options, eg, placement, check, mlm, info, timings)


def _verified_mixed(graph, options, io, calibration, metadata, progress, timings):
    """:func:`tlc.calibrate.verified_mixed` with tlc's emission: a package runs in the MIL
    interpreter, a bundle in the hybrid runtime; the passing round's MLModel is kept."""
    from tlc.passes.partition import split
    from tlc.runtime import BundleModel, MILInterpreter

    from .artifact import write_bundle
    from .calibrate import verified_mixed
    from .emit import convert

    tmp = tempfile.TemporaryDirectory(prefix="tlc-loop-")

    def emit(eg):
        placement = _assign(eg, options, timings)
        if not is_bundle(placement):
            m, inf = convert(eg, options.precision, options.minimum_deployment_target, metadata(eg))
            return MILInterpreter(m.package_path, mlmodel=m), (placement, m, inf)
        path = Path(tmp.name) / f"r{len(os.listdir(tmp.name))}.tlc"
        write_bundle(path, eg, split(eg, placement), precision=options.precision,
                     minimum_deployment_target=options.minimum_deployment_target, metadata=metadata(eg))
        return BundleModel(path, backend="interpreter"), (placement, None, None)

    from .progress import note

    log = note if progress else None
    try:
        eg, (placement, m, inf), check = verified_mixed(graph, calibration, io, emit, log=log)
    finally:
        tmp.cleanup()
    timings["precision"] = check.plan_s
    # the loop's cost beyond the emission save() needs anyway: running the program, earlier rounds
    shipped = inf.build_mil_s + inf.convert_s if m is not None else 0.0
    timings["closed_loop"] = check.run_s + check.emit_s - shipped
    return eg, (placement, m, inf), check
