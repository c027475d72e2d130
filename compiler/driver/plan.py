"""The build plan: everything a :class:`tlc.CompiledModel` decides after tracing, computed once
per option set.

:func:`make_plan` runs the build stages in order — precision (``precision::fp16`` /
``precision::fp32``, or ``mixed``'s range analysis with its closed loop, :mod:`tlc.check.calibrate`),
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
import pickle
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from tlc.backends.bundle import write_bundle
from tlc.backends.coreml.emit import convert
from tlc.check.calibrate import verified_mixed
from tlc.errors import NotShippableError
from tlc.ir import Graph
from tlc.ops import coreai_reason
from tlc.passes import run_pipeline
from tlc.passes import partition  # partition.assign / .split, looked up when called (tests count the calls)
from tlc.runtime import BundleModel, MILInterpreter
from tlc.util.progress import note

from .cache import Cache, load_graph_entry, read_entry, save_graph_entry
from .options import BuildOptions


def where(loc) -> str:
    """``file:line`` (and code) of a node's source location, or ``""``."""
    if loc is None or not loc.file:
        return ""
    return f"{loc.file}:{loc.line}" + (f"  {loc.code.strip()}" if loc.code else "")


def check_shippable(g: Graph, program: str = "coreml") -> None:
    """Raise :class:`NotShippableError` unless graph ``g`` can be one ``.mlpackage``
    (``fallback=False``; one ``.aimodel`` with ``program="coreai"``), listing every op Core ML
    (Core AI) cannot hold (:func:`tlc.passes.partition.coreml_reason`) with its reason and source
    line. (``fallback=False`` with a target other than ``"ane"`` is refused earlier, by
    :meth:`BuildOptions.decide`.)"""
    bad = partition.blockers(g, program)
    if bad:
        raise NotShippableError([(n.op, n.name, partition.coreml_reason(n, program), where(n.loc)) for n in bad])


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
        return tuple(partition.split(self.emit_graph, self.placement))

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
        nodes = {n.name: n for n in self.emit_graph.nodes}
        if all(coreai_reason(nodes[k]) is None for k, t in self.placement.target.items() if t == "ane"):
            return self.placement
        return _assign(self.emit_graph, self.options, dict(self.timings), program="coreai")

    @functools.cached_property
    def coreai_segments(self) -> tuple:
        """:attr:`emit_graph` cut by :attr:`coreai_placement` (:attr:`segments` when they agree)."""
        if self.coreai_placement is self.placement:
            return self.segments
        return tuple(partition.split(self.emit_graph, self.coreai_placement))

    @property
    def islands(self) -> dict[str, str]:
        """``{node name: reason}`` of the ops ``mixed`` kept in fp32."""
        return dict(self.emit_graph.meta.get("tlc.islands", {}))

    def store(self, cache: Cache, key: str) -> Path | None:
        """Write this plan as compile-cache entry ``plans/key`` (:mod:`tlc.driver.cache`): the
        precision-typed graph, the placement and the closed-loop record (the emitted MLModel is not
        kept: an artifact entry holds what was written). None when the cache cannot be written."""

        def write(d: Path):
            save_graph_entry(self.emit_graph, d, "emit")
            with open(d / "plan.pkl", "wb") as f:
                pickle.dump({"placement": self.placement, "precision_check": self.precision_check,
                             "timings": dict(self.timings)}, f)

        return cache.put("plans", key, write)

    @classmethod
    def load(cls, cache: Cache, key: str, options: BuildOptions) -> "BuildPlan | None":
        """The plan :meth:`store` wrote under ``key``, for ``options``; None for a miss or an entry
        that fails its integrity check or no longer loads."""

        def read(d: Path):
            with open(d / "plan.pkl", "rb") as f:
                return load_graph_entry(d, "emit"), pickle.load(f)

        got = read_entry(cache, "plans", key, read)
        if got is None:
            return None
        (eg, p), _, secs = got
        return cls(options, eg, p["placement"], p["precision_check"], None, None, {"plan_cache_load": secs})


def is_bundle(placement) -> bool:
    """Whether a placement needs tlc's fallback runtime (more than one segment, or one not in Core ML)."""
    return len(set(placement.segment.values())) > 1 or any(t != "ane" for t in placement.target.values())


def _assign(g: Graph, options: BuildOptions, timings: dict, program: str = "coreml"):
    t0 = time.perf_counter()
    kw = {"cost": options.cost} if options.cost is not None else {}
    p = partition.assign(g, target=options.target, fallback=options.fallback, program=program, **kw)
    timings["partition"] = timings.get("partition", 0.0) + time.perf_counter() - t0
    return p


def make_plan(graph: Graph, options: BuildOptions, *, calibration: list[dict], metadata: Callable[[Graph], dict],
              progress: bool = False) -> BuildPlan:
    """Plan the build of the fp32 IR ``graph`` under ``options``. ``calibration``: feeds by input
    name for ``mixed`` (the example inputs first); ``metadata(emit graph)``: the package metadata
    the closed loop's emissions carry; ``progress``: print the closed loop's rounds to stderr.

    Raises :class:`tlc.check.calibrate.PrecisionError` when ``mixed`` with ``strict_precision`` finds
    no passing island assignment (without it, the loop ships a fallback program), and what the
    passes and emission raise (naming the pass or op)."""
    io = options.io_ir_dtype
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
    """:func:`tlc.check.calibrate.verified_mixed` with tlc's emission: a package runs in the MIL
    interpreter, a bundle in the hybrid runtime; the passing round's MLModel is kept."""
    tmp = tempfile.TemporaryDirectory(prefix="tlc-loop-")

    def emit(eg):
        placement = _assign(eg, options, timings)
        if not is_bundle(placement):
            m, inf = convert(eg, options.precision, options.minimum_deployment_target, metadata(eg))
            return MILInterpreter(m.package_path, mlmodel=m), (placement, m, inf)
        path = Path(tmp.name) / f"r{len(os.listdir(tmp.name))}.tlc"
        write_bundle(path, eg, partition.split(eg, placement), precision=options.precision,
                     minimum_deployment_target=options.minimum_deployment_target, metadata=metadata(eg))
        return BundleModel(path, backend="interpreter"), (placement, None, None)

    log = note if progress else None
    try:
        eg, (placement, m, inf), check = verified_mixed(graph, calibration, io, emit, log=log,
                                                        strict=options.strict_precision)
    finally:
        tmp.cleanup()
    timings["precision"] = check.plan_s
    # the loop's cost beyond the emission save() needs anyway: running the program, earlier rounds
    shipped = inf.build_mil_s + inf.convert_s if m is not None else 0.0
    timings["closed_loop"] = check.run_s + check.emit_s - shipped
    return eg, (placement, m, inf), check
