"""The compiled model: :class:`CompiledModel`, what ``tlc.build`` returns for one input signature.

It holds the traced, optimized IR and the decided :class:`~tlc.driver.options.BuildOptions`; the
build plan (precision, closed loop, placement: :mod:`tlc.driver.plan`) is made on first need and
kept; emission to Core ML happens when you ``save`` (:mod:`tlc.driver.save`) or ask for ``mlmodel``.
Calling it runs it on the best backend available: Core ML on macOS, else tlc's torch-device
executor on a GPU, else tlc's NumPy runtime. :func:`store_trace` / :func:`load_trace` write and read
its compile-cache entry (:mod:`tlc.driver.cache`).
"""
from __future__ import annotations

import copy
import os
import pickle
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from tlc.backends.coreml.compress import const_bytes
from tlc.backends.coreml.emit import convert
from tlc.backends.coreml.features import finish_package
from tlc.check.report import build_report
from tlc.errors import EmitError, InputError, TlcError
from tlc.ir import Graph
from tlc.iospec import PackageIO
from tlc.serialize import relative_source, source_roots
from tlc.runtime import check_inputs, coreml_available, gpu_available, load, run_graph
from tlc.util.progress import stage

from . import save as _save
from .cache import Cache, load_graph_entry, read_entry, save_graph_entry, use_for_inductor
from .cache_key import derived_key
from .compression import compress_model
from .inputs import complex_boundary, model_outputs, pixel_feeds, signature_key
from .options import RUN_BACKENDS as BACKENDS, BuildOptions
from .plan import BuildPlan, check_shippable, is_bundle, make_plan, where

#: :attr:`CompiledModel.timings` keys of the stages before the plan (kept by ``with_options``)
TRACE_STAGES = ("export", "decompose", "lower", "passes")


class CompiledModel:
    """A model traced into tlc's IR, ready to save as ``.mlpackage`` or to run.

    Attributes: ``graph`` (the optimized IR :class:`~tlc.ir.Graph` in the model's own dtypes, laid out
    for the Neural Engine where ``target="ane"``: what the Core ML program is made of, and the reference
    its package is checked against), ``exec_graph`` (the same without the Neural Engine layout: what
    ``__call__`` and :meth:`run` execute with tlc's torch and NumPy executors), ``emit_graph`` (``graph``
    after the precision pass: what the package holds), ``islands`` (ops kept in fp32 and why), ``precision`` (``"mixed"``/``"fp16"``/``"fp32"``),
    ``minimum_deployment_target``, ``target`` (``"ane"``: capable ops to Core ML; ``"gpu"``/``"cpu"``:
    everything to tlc's fallback runtime), ``placement`` and ``segments`` (the partition of
    ``emit_graph``), ``is_bundle`` (whether :meth:`save` writes a bundle), ``input_names``,
    ``output_names``, ``timings`` (seconds per
    stage: ``export``, ``decompose``, ``lower``, ``passes``, then ``precision``, ``emit_mil``,
    ``mil_passes``, ``serialize`` (their sum: ``convert``), ``compress``, ``finish`` (the package's
    images, classifier, descriptions, metadata: :func:`tlc.backends.coreml.features.finish_package`), ``save`` once
    emitted/saved); with ``compress``, once emitted: ``weights_before_compress`` (bytes of the
    program's constants before), ``compressed_weights`` (the MIL const ops compressed) and, for
    ``w8a8``, ``float_activation_ops`` (ops left with float activations: :func:`tlc.backends.coreml.compress.quantize_activations`);
    ``io`` (:class:`tlc.iospec.PackageIO`: the image inputs/outputs, classifier, descriptions and
    metadata the package declares; ``tlc.build(inputs=, outputs=, classifier_config=, author=, ...)``).
    """

    def __init__(self, graph: Graph, *, options: BuildOptions, out_spec, kw_order, out_torch_dtypes, timings: dict,
                 source: str | None, calibration: list[dict] | None = None, name: str = "model",
                 progress: bool = False, exec_graph: Graph | None = None, io: PackageIO | None = None):
        self.graph = graph
        #: what tlc's own executors run (torch, NumPy): the graph without the Neural Engine layout
        #: (:func:`tlc.driver.single.optimize`); ``graph`` itself when that layout did not fire
        self.exec_graph = graph if exec_graph is None else exec_graph
        self.io = io if io is not None else PackageIO()
        self.options = options  # decided (BuildOptions.decide): nothing below checks them again
        self.name = name
        self.progress = progress
        self.calibration = list(calibration or [])
        self._plan = None
        self.timings = dict(timings)
        self.source = source
        self._out_spec = out_spec
        self._kw_order = kw_order
        self._out_dtypes = out_torch_dtypes
        self.boundary = complex_boundary(graph)  # complex model I/O are real [..., 2] pairs in the IR
        self._mlmodel = None
        self._compressed = False
        self._finished = False  # the package's images, classifier, descriptions and metadata are on _mlmodel
        self._coreml = None
        self._torch = None
        self._signature = None  # set by tlc.driver.multifunction for the function of one signature
        self.weights_before_compress = None  # bytes of the program's constants before compression
        self.compressed_weights: list[str] = []  # MIL const ops compress= compressed
        self.float_activation_ops = 0  # w8a8: ops kept with float activations (outlier tensors)
        #: compression by target, budget or recipe: what was decided and measured (tlc.driver.compression.CompressionReport)
        self.compression = None
        #: the persistent compile cache (tlc.driver.cache): this build's key, the store, and "hit" / "miss" (None: not cached)
        self.cache_key: str | None = None
        self._cache = None
        self.cache_status: str | None = None
        self._written: list[Path] = []  # what the last save() wrote (the artifact cache copies it)
        self._mlmodel_handed_out = False  # the public mlmodel was read: it may have been edited

    precision = property(lambda self: self.options.precision, doc="``mixed``, ``fp16`` or ``fp32``")
    minimum_deployment_target = property(lambda self: self.options.minimum_deployment_target,
                                         doc="the coremltools target name (``iOS17``, ...)")
    target = property(lambda self: self.options.target, doc="``ane``, ``gpu`` or ``cpu``")
    io_dtype = property(lambda self: self.options.io_dtype, doc="``float32`` or ``float16`` package I/O")
    fallback = property(lambda self: self.options.fallback, doc="whether ops may run outside Core ML")
    cost = property(lambda self: self.options.cost, doc="the placement cost model (None: the default)")
    compress = property(lambda self: self.options.compress,
                        doc="the decided compression (tlc.driver.options.Compression; str() is its label) or None")
    format = property(lambda self: self.options.format,
                      doc='what :meth:`save` writes: "mlpackage", "aimodel" (Core AI) or "both" (``tlc.build(format=)``)')

    @property
    def input_names(self) -> list[str]:
        """Graph (and package) input names, in call order."""
        return [v.name for v in self.graph.inputs]

    @property
    def output_names(self) -> list[str]:
        """Graph (and package) output names, in the model's flattened output order."""
        return list(self.graph.output_names)

    # --------------------------------------------------------------------------- Core ML package

    @property
    def plan(self):
        """The :class:`tlc.driver.plan.BuildPlan` for :attr:`options`, computed on first access (precision,
        closed loop for ``mixed``, placement, segments) and kept; its stage timings join
        :attr:`timings`. Raises :class:`tlc.check.calibrate.PrecisionError` when ``mixed`` finds no
        passing island assignment."""
        if self._plan is None and self.cache_key is not None:
            self._plan = BuildPlan.load(self._cache, self.cache_key, self.options)
            if self._plan is not None:
                self.timings.update(self._plan.timings)
                return self._plan
        if self._plan is None:
            what = "closed loop: emit, run, add fp32 islands" if self.precision == "mixed" else "precision, placement"
            with stage(f"planning {self.precision} ({what})"):
                self._plan = make_plan(self.graph, self.options, calibration=self.calibration,
                                       metadata=self._metadata, progress=self.progress)
            self.timings.update(self._plan.timings)
            if self.cache_key is not None:
                self._plan.store(self._cache, self.cache_key)
            if self._plan.emit_info is not None:
                self._mlmodel = self._plan.mlmodel
                self._record_emit(self._plan.emit_info)
        return self._plan

    @property
    def emit_graph(self) -> Graph:
        """The graph as emitted: :attr:`graph` after ``precision::mixed`` / ``precision::fp16`` /
        ``precision::fp32`` (float inputs/outputs in :attr:`io_dtype`), or :attr:`graph` itself for
        fp32 with fp32 I/O. ``mixed`` is calibrated on :attr:`calibration` (the example inputs
        plus ``calibration=``) and verified by the closed loop (:mod:`tlc.check.calibrate`): the emitted
        program is run on every calibration sample, and what fails becomes an fp32 island
        (:attr:`precision_check`). Raises :class:`tlc.check.calibrate.PrecisionError` when no island
        assignment passes."""
        return self.plan.emit_graph

    @property
    def precision_check(self):
        """``mixed``: the closed loop's :class:`tlc.check.calibrate.PrecisionCheck`; None for ``fp16``/``fp32``,
        which make no per-op decision."""
        return self.plan.precision_check

    @property
    def islands(self) -> dict[str, str]:
        """``{node name: reason}`` of the ops kept in fp32 by ``mixed`` (empty for ``fp16`` and
        ``fp32``, where no per-op decision is made)."""
        return self.plan.islands

    @property
    def placement(self):
        """Where every op of :attr:`emit_graph` runs (:class:`tlc.passes.partition.Placement`)."""
        return self.plan.placement

    @property
    def segments(self) -> list:
        """:attr:`emit_graph` split into :class:`tlc.passes.partition.Segment` graphs, in order."""
        return list(self.plan.segments)

    @property
    def is_bundle(self) -> bool:
        """True when the model needs tlc's fallback runtime for some ops (or ``target`` is gpu/cpu):
        :meth:`save` then writes a bundle directory ``NAME.tlc`` instead of one ``.mlpackage``."""
        return self.plan.is_bundle

    def fallback_ops(self) -> list[tuple[str, str, str, str]]:
        """``(op, node name, reason, source)`` for every op that runs in tlc's fallback runtime
        instead of Core ML (empty when :meth:`save` writes one ``.mlpackage``), in graph order."""
        return self._off_program(self.placement)

    def _off_program(self, p) -> list[tuple[str, str, str, str]]:
        nodes = {n.name: n for n in self.emit_graph.nodes}
        return [(nodes[k].op, k, p.reasons.get(k, ""), where(nodes[k].loc)) for k, t in p.target.items() if t != "ane"]

    def report(self):
        """:class:`tlc.check.report.PlacementReport`: segments, static ANE residency, every op not on the
        ANE with its reason and source line (text via ``str``, JSON, HTML)."""
        plan = self.plan
        pc = plan.precision_check.to_json() if plan.precision_check is not None else None
        comp = self.compression.to_json() if self.compression is not None else None
        return build_report(plan.emit_graph, list(plan.segments), plan.placement, model=self.name,
                            precision=self.precision, precision_check=pc, compression=comp)

    def _metadata(self, g: Graph | None = None) -> dict:
        md = {"tlc.source": relative_source(self.source, source_roots(source=self.source))} if self.source else {}
        md["tlc.io_dtype"] = self.io_dtype
        if self.compress:
            md["tlc.compress"] = str(self.compress)
        md.update(self.boundary.metadata())  # complex model I/O (a bundle's manifest needs it too)
        islands = (self.emit_graph if g is None else g).meta.get("tlc.islands", {})
        if islands:
            md["tlc.fp32_islands"] = ",".join(islands)
        fallback = (self.emit_graph if g is None else g).meta.get("tlc.precision_fallback")
        if fallback:  # the closed loop shipped a fallback program: tlc verify / inspect show it
            md["tlc.precision_fallback"] = fallback
        return md

    @property
    def mlmodel(self):
        """The ``coremltools.models.MLModel`` (mlprogram), emitted on first access. Raises
        :class:`~tlc.errors.EmitError` when the model is a bundle (see :attr:`is_bundle`). Once
        handed out it may be edited (author, metadata), so :meth:`save` no longer copies a cached
        artifact for this model."""
        self._mlmodel_handed_out = True
        return self._emitted_mlmodel()

    def _emitted_mlmodel(self):
        if self._mlmodel is None or (self.compress and not self._compressed) or not self._finished:
            plan = self.plan  # mixed emits in its closed loop and keeps that MLModel
            if plan.is_bundle:
                raise EmitError("this model is not one Core ML program (ops run in tlc's fallback runtime: "
                                "see report()); save() writes a bundle")
            if self._mlmodel is None:
                self._mlmodel, info = convert(plan.emit_graph, self.precision, self.minimum_deployment_target,
                                              self._metadata())
                self._record_emit(info)
            if self.compress and not self._compressed:
                t0 = time.perf_counter()  # after the closed loop: it judges fp16, not the compression
                self.weights_before_compress = const_bytes(self._mlmodel._mil_program)
                c, self.compression = compress_model(self, self._mlmodel, skip=tuple(plan.islands))
                self._mlmodel, self.compressed_weights, self.float_activation_ops = c.mlmodel, c.weights, \
                    c.float_activation_ops
                self._compressed = True
                self.timings["compress"] = time.perf_counter() - t0
            if not self._finished:  # last: the closed loop and compression work on the tensor program
                t0 = time.perf_counter()
                self._mlmodel = finish_package(self._mlmodel, self.io, self.minimum_deployment_target)
                self._finished = True
                self.timings["finish"] = time.perf_counter() - t0
        return self._mlmodel

    def _package_feed(self, feed: dict) -> dict:
        """A calibration feed (IR dtypes) as the package takes it (fp16 floats for fp16 I/O)."""
        if self.io_dtype != "float16":
            return feed
        return {k: v.astype(np.float16) if np.asarray(v).dtype.kind == "f" else v for k, v in feed.items()}

    def _record_emit(self, info) -> None:
        self.timings["emit_mil"] = info.build_mil_s
        self.timings["mil_passes"] = info.mil_passes_s
        self.timings["serialize"] = info.serialize_s
        self.timings["convert"] = info.convert_s

    @property
    def coreai_is_bundle(self) -> bool:
        """Like :attr:`is_bundle` for the Core AI artifact: also True when an op Core ML holds has
        no Core AI form yet (:attr:`tlc.driver.plan.BuildPlan.coreai_placement`)."""
        return is_bundle(self.plan.coreai_placement)

    def coreai_fallback_ops(self) -> list[tuple[str, str, str, str]]:
        """:meth:`fallback_ops` of the Core AI artifact (ops without a Core AI form included)."""
        return self._off_program(self.plan.coreai_placement)

    def output_path(self, path: str | os.PathLike) -> Path:
        """Where :meth:`save` writes for a requested ``path``: the path itself for a plain package
        (``.mlpackage``) or an explicit ``.tlc``; for a bundle, ``path`` with suffix ``.tlc``; a path
        ending in ``.aimodel``: :meth:`coreai_output_path` (rules: :mod:`tlc.driver.save`)."""
        return _save.output_path(self, path)

    def coreai_output_path(self, path: str | os.PathLike) -> Path:
        """Where the Core AI artifact goes for a requested ``path``: ``NAME.aimodel`` when the
        model is one Core AI program, else the bundle ``NAME.aimodel.tlc`` (Core AI segments plus
        tlc's fallback runtime; never the name of the Core ML bundle ``NAME.tlc``), or an explicit
        ``NAME.tlc`` path as given (with ``format="aimodel"``)."""
        return _save.coreai_output_path(self, path)

    def save(self, path: str | os.PathLike, force: bool = False) -> Path:
        """Write the artifact (temp path + rename) and return its path (see :meth:`output_path`):
        one ``.mlpackage`` when the whole model runs in Core ML, else a bundle ``NAME.tlc``.
        ``format="aimodel"`` (or a path ending in ``.aimodel``): the Core AI artifact at
        :meth:`coreai_output_path`; ``"both"``: the Core ML artifact (returned) and the Core AI one.

        After writing, each package is reloaded with coremltools' milproto loader and its
        input/output names, shapes and dtypes are checked against the IR.
        Raises :class:`~tlc.errors.OutputExistsError` if the path exists and not ``force``;
        :class:`~tlc.errors.EmitError` if emission or the check fails.
        """
        return _save.save(self, path, force)

    def with_options(self, precision: str | None = None, minimum_deployment_target: str | None = None,
                     target: str | None = None, io_dtype: str | None = None,
                     fallback: bool | None = None, cost=None, compress: str | None = None,
                     format: str | None = None, strict_precision: bool | None = None) -> "CompiledModel":
        """A copy sharing the traced graph, with other build options (:meth:`BuildOptions.replace`;
        no re-trace; ``compress=""`` turns compression off) and no plan yet. Raises
        :class:`~tlc.errors.InputError` for a bad option (:meth:`BuildOptions.decide`),
        :class:`~tlc.errors.NotShippableError` for ``fallback=False`` when ops need the fallback
        runtime."""
        o = self.options.replace(precision=precision, minimum_deployment_target=minimum_deployment_target,
                                 target=target, io_dtype=io_dtype, fallback=fallback, cost=cost, compress=compress,
                                 format=format, strict_precision=strict_precision)
        if not o.fallback:
            check_shippable(self.graph)
        cm = copy.copy(self)
        cm.options = o
        if self.cache_key is not None and o != self.options:  # same trace, another plan and artifacts
            cm.cache_key = derived_key(self.cache_key, repr(o))
        cm._written = []
        cm.timings = {k: v for k, v in self.timings.items() if k in TRACE_STAGES}
        cm._plan = cm._mlmodel = cm._coreml = cm._torch = None
        cm._compressed = cm._finished = False
        cm.compression = None
        return cm

    # --------------------------------------------------------------------------------- running

    def run(self, feeds: dict[str, Any], backend: str = "auto", keep_on_device: bool = False) -> dict[str, np.ndarray]:
        """Run on named inputs (NumPy arrays or torch tensors); returns ``{output_name: ndarray}``
        (``keep_on_device`` with the torch backend: ``{output_name: torch.Tensor}`` on the executor's
        device, no copy to the host: what consecutive device steps, such as an LM's decode loop, want).

        ``backend``: ``"auto"`` picks by availability, Core ML (macOS) -> GPU (tlc's torch-device
        executor on ``mps``/``cuda``) -> NumPy; ``"coreml"`` (macOS only; raises
        :class:`~tlc.errors.TlcError` elsewhere); ``"torch"`` (the torch-device executor on the
        best device here, the CPU if there is no GPU); ``"numpy"`` (tlc's reference executor).
        The torch and NumPy backends run :attr:`exec_graph` (the model's own dtypes, without the Neural
        Engine layout: the graph optimized for the device it runs on); the executor is
        built on first use and kept (weights stay on the device). Float inputs may be fp32 or fp16
        whatever :attr:`io_dtype` is (converted); float outputs come in :attr:`io_dtype`, as the
        package returns them. Raises :class:`~tlc.errors.InputError` for missing/misnamed inputs
        or wrong shapes/dtypes. Complex model inputs/outputs are complex64 arrays here (real
        ``[..., 2]`` pairs inside the graph and the package: :mod:`tlc.boundary`).
        """
        if backend not in BACKENDS:
            raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if self.boundary.complex_inputs or self.boundary.complex_outputs:
            feeds = self.boundary.to_package(feeds)
            return self.boundary.from_package(self._run(feeds, backend))
        return self._run(feeds, backend, keep_on_device)

    def resolved_backend(self, backend: str = "auto") -> str:
        """The backend ``backend="auto"`` stands for here: Core ML on macOS, else the torch executor
        on a GPU, else NumPy (any other value as given)."""
        if backend != "auto":
            return backend
        return "coreml" if coreml_available() else "torch" if gpu_available() else "numpy"

    def _run(self, feeds, backend, keep_on_device: bool = False):
        backend = self.resolved_backend(backend)
        if backend == "torch":
            if self._torch is None:
                from tlc.runtime.torch_executor import TorchExecutor

                use_for_inductor()  # a compiled capture's kernels are cached with tlc's cache
                self._torch = TorchExecutor(self.exec_graph)
            out = self._torch.run(feeds, keep_on_device=keep_on_device)
            if keep_on_device:
                return out
        else:
            feeds = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
                     for k, v in feeds.items()}
            if backend == "coreml":
                return self._run_coreml(check_inputs(self.graph, feeds))
            out = run_graph(self.exec_graph, feeds)
        if self.io_dtype == "float16":
            out = {k: v.astype(np.float16) if v.dtype.kind == "f" else v for k, v in out.items()}
        return out

    def _run_coreml(self, feeds):
        if not coreml_available():
            raise TlcError("backend 'coreml' needs macOS with Core ML; use backend='numpy' here")
        if self._coreml is None:  # pragma: no cover - macOS only
            self._coreml_dir = tempfile.TemporaryDirectory(prefix="tlc-")  # removed with this object
            self._coreml = load(self.save(Path(self._coreml_dir.name) / "model.mlpackage"), backend="coreml")
        return self._coreml(feeds)  # pragma: no cover - macOS only (LoadedModel converts fp32 <-> fp16 I/O)

    def __call__(self, *args, backend: str = "auto", **kwargs):
        """Call like the original model; returns the same output structure, as torch tensors when
        any input is a torch tensor (else NumPy arrays)."""
        _, leaves = signature_key(args, kwargs, self._kw_order)
        tensors = [x for x in leaves if isinstance(x, (torch.Tensor, np.ndarray))]
        if len(tensors) != len(self.graph.inputs):
            raise InputError(
                f"expected {len(self.graph.inputs)} tensor inputs ({', '.join(self.input_names)}), got {len(tensors)}")
        feeds = pixel_feeds(self.io, dict(zip(self.input_names, tensors)))  # image inputs: the model's values -> pixels
        return self.as_model_output(model_outputs(self.io, self.run(feeds, backend=backend)), tensors)

    def as_model_output(self, out: dict, inputs: list):
        """``{output_name: ndarray}`` in the model's own output structure (pytree), as torch
        tensors of the model's dtypes when any of ``inputs`` is a torch tensor."""
        vals = [out[n] for n in self.output_names]
        if any(isinstance(x, torch.Tensor) for x in inputs):
            vals = [torch.from_numpy(np.array(v, order="C")).to(dt) for v, dt in zip(vals, self._out_dtypes)]
        try:
            return pytree.tree_unflatten(vals, self._out_spec)
        except Exception:
            return vals[0] if len(vals) == 1 else tuple(vals)

    # ----------------------------------------------------------------------------------- report

    def summary(self) -> str:
        """Multi-line text: inputs, outputs, op count and histogram, weights, timings."""
        g = self.graph
        lines = ["inputs:  " + ", ".join(f"{v.name} {v.type}" for v in g.inputs),
                 "outputs: " + ", ".join(f"{n} {v.type}" for n, v in zip(g.output_names, g.outputs)),
                 f"ops:     {g.num_ops} (" + ", ".join(f"{k} {v}" for k, v in g.op_histogram().items()) + ")",
                 f"weights: {g.weight_bytes() / 2**20:.1f} MiB in fp32, precision {self.precision}, "
                 f"target {self.minimum_deployment_target}"]
        if self.precision == "mixed" and self._plan is not None:
            isl = self.islands
            lines.append(f"fp32 islands: {len(isl)}" + "".join(f"\n  {k}: {v}" for k, v in isl.items()))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<CompiledModel {len(self.graph.inputs)} inputs -> {self.output_names}, {self.graph.num_ops} ops, {self.precision}>"




# ------------------------------------------------------------------------------ compile-cache entry


def store_trace(cache: Cache, key: str, cm: CompiledModel) -> Path | None:
    """Write the trace entry of ``cm`` (a fresh :class:`CompiledModel`) under ``key``
    (:mod:`tlc.driver.cache`): its graph, calibration feeds, decided options, output structure and
    dtypes. None when the cache cannot be written (the build goes on)."""

    def write(d: Path):
        save_graph_entry(cm.graph, d, "graph")
        if cm.exec_graph is not cm.graph:
            save_graph_entry(cm.exec_graph, d, "exec")
        np.savez(d / "calibration.npz", **{f"{k}/{n}": np.asarray(v) for k, f in enumerate(cm.calibration)
                                           for n, v in f.items()})
        with open(d / "python.pkl", "wb") as f:  # the output pytree spec, torch dtypes, options: small, tlc-written
            pickle.dump({"out_spec": cm._out_spec, "out_torch_dtypes": cm._out_dtypes, "options": cm.options,
                         "io": cm.io}, f)

    return cache.put("traces", key, write, {"name": cm.name, "source": cm.source, "kw_order": list(cm._kw_order)})


def load_trace(cache: Cache, key: str, progress: bool = False) -> CompiledModel | None:
    """The :class:`CompiledModel` of trace entry ``key`` (``progress`` as this call asks), or None
    (a miss, or an entry that failed its integrity check or no longer loads)."""

    def read(d: Path):
        g = load_graph_entry(d, "graph")
        ex = load_graph_entry(d, "exec") if (d / "exec.json").is_file() else None
        with open(d / "python.pkl", "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's pytree LeafSpec deprecation, from unpickling
            py = pickle.load(f)
        with np.load(d / "calibration.npz") as z:
            feeds: dict[int, dict] = {}
            for name in z.files:
                k, n = name.split("/", 1)
                feeds.setdefault(int(k), {})[n] = z[name]
        return (g, ex), py, [feeds[k] for k in sorted(feeds)]

    got = read_entry(cache, "traces", key, read)
    if got is None:
        return None
    ((g, ex), py, calibration), meta, secs = got
    return CompiledModel(g, exec_graph=ex, options=py["options"], out_spec=py["out_spec"], kw_order=meta["kw_order"],
                         out_torch_dtypes=py["out_torch_dtypes"], timings={"cache_load": secs}, source=meta["source"],
                         calibration=calibration, name=meta["name"], progress=progress, io=py.get("io"))


__all__ = ["CompiledModel", "BACKENDS", "TRACE_STAGES", "store_trace", "load_trace"]
