"""User API: :func:`build`, :class:`CompiledModel`, :func:`compile`.

``build`` traces once (torch.export), lowers to tlc's IR and returns a :class:`CompiledModel`;
emission to Core ML happens when you ``save`` (or ask for ``mlmodel``). Calling a
``CompiledModel`` runs it on the best backend available: Core ML on macOS, else tlc's torch-device
executor on a GPU, else tlc's NumPy runtime. ``@tlc.compile`` specializes on input shapes/dtypes at first call and caches one
``CompiledModel`` per signature.
"""
from __future__ import annotations

import inspect
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.utils._pytree as pytree

from .compress import check_compress
from .artifact import bundle_path, check_output_path, check_package_io, save_atomic, write_bundle
from .emit import PRECISIONS, convert, target_name
from .plan import check_io_dtype, check_shippable, check_target, where
from .errors import InputError, OutputExistsError, TlcError
from .frontend import normalize_inputs, trace
from .ir import Graph
from tlc.runtime import coreml_available, gpu_available

BACKENDS = ("auto", "coreml", "torch", "numpy")
def _complex_boundary(g: Graph):
    """The complex inputs/outputs of ``g`` (tlc.boundary); 0-d values need no conversion in tlc's
    own runtimes."""
    from .boundary import Boundary, of_graph

    b = of_graph(g)
    return Boundary(complex_inputs=b.complex_inputs, complex_outputs=b.complex_outputs)


#: :attr:`CompiledModel.timings` keys of the stages before the plan (kept by ``with_options``)
TRACE_STAGES = ("export", "decompose", "lower", "passes")


def _source_of(obj) -> str | None:
    target = obj if not isinstance(obj, torch.nn.Module) else type(obj)
    try:
        return inspect.getsourcefile(target)
    except (TypeError, OSError):
        return None


def _model_name(obj) -> str:
    """``ClassName`` for a module, ``fn_name`` for a function (for reports)."""
    if isinstance(obj, torch.nn.Module):
        inner = getattr(obj, "inner", None)  # @tlc.compile on a module class wraps instances
        return type(inner if isinstance(inner, torch.nn.Module) and type(obj).__name__ == "_EagerCall" else obj).__name__
    return getattr(obj, "__name__", type(obj).__name__)


def signature_key(args: tuple, kwargs: dict, kw_order: list | None = None):
    """Hashable key of an input signature: tree structure, and per leaf (shape, dtype) for
    tensors/arrays or the value itself for Python scalars."""
    if kw_order is not None:
        kwargs = {k: kwargs[k] for k in kw_order if k in kwargs} | {k: v for k, v in kwargs.items() if k not in kw_order}
    leaves, spec = pytree.tree_flatten((args, kwargs))
    key = []
    for x in leaves:
        if isinstance(x, (torch.Tensor, np.ndarray)):
            key.append(("T", tuple(x.shape), str(x.dtype)))
        else:
            key.append(("V", repr(x)))
    return (str(spec), tuple(key)), leaves


class CompiledModel:
    """A model traced into tlc's IR, ready to save as ``.mlpackage`` or to run.

    Attributes: ``graph`` (the optimized IR :class:`~tlc.ir.Graph` in the model's own dtypes; what
    ``__call__`` runs on Linux, the reference), ``emit_graph`` (the same after the precision pass: what the package
    holds), ``islands`` (ops kept in fp32 and why), ``precision`` (``"mixed"``/``"fp16"``/``"fp32"``),
    ``minimum_deployment_target``, ``target`` (``"ane"``: capable ops to Core ML; ``"gpu"``/``"cpu"``:
    everything to tlc's fallback runtime), ``placement`` and ``segments`` (the partition of
    ``emit_graph``), ``is_bundle`` (whether :meth:`save` writes a bundle), ``input_names``,
    ``output_names``, ``timings`` (seconds per
    stage: ``export``, ``decompose``, ``lower``, ``passes``, then ``precision``, ``emit_mil``,
    ``mil_passes``, ``serialize`` (their sum: ``convert``), ``compress``, ``save`` once
    emitted/saved); with ``compress``, once emitted: ``weights_before_compress`` (bytes of the
    program's constants before), ``compressed_weights`` (the MIL const ops compressed) and, for
    ``w8a8``, ``float_activation_ops`` (ops left with float activations: :func:`tlc.compress.quantize_activations`).
    """

    #: what :meth:`save` writes: "mlpackage", "aimodel" (Core AI) or "both" (``tlc.build(format=)``)
    format = "mlpackage"

    def __init__(self, graph: Graph, *, precision: str, minimum_deployment_target: str, out_spec, kw_order,
                 out_torch_dtypes, timings: dict, source: str | None, calibration: list[dict] | None = None,
                 target: str = "ane", cost=None, name: str = "model", io_dtype: str = "float32",
                 fallback: bool = True, progress: bool = False, compress: str | None = None):
        from .plan import BuildOptions

        self.graph = graph
        self.options = BuildOptions(precision, minimum_deployment_target, check_target(target), io_dtype,
                                    bool(fallback), cost, compress)
        self.name = name
        self.progress = progress
        self.calibration = list(calibration or [])
        self._plan = None
        self.timings = dict(timings)
        self.source = source
        self._out_spec = out_spec
        self._kw_order = kw_order
        self._out_dtypes = out_torch_dtypes
        self.boundary = _complex_boundary(graph)  # complex model I/O are real [..., 2] pairs in the IR
        self._mlmodel = None
        self._compressed = False
        self._coreml = None
        self._torch = None
        self._signature = None  # set by tlc.multifunction for the function of one signature
        self.weights_before_compress = None  # bytes of the program's constants before compression
        self.compressed_weights: list[str] = []  # MIL const ops compress= compressed
        self.float_activation_ops = 0  # w8a8: ops kept with float activations (outlier tensors)
        #: the persistent compile cache (tlc.cache): this build's key, the store, and "hit" / "miss" (None: not cached)
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
    compress = property(lambda self: self.options.compress, doc="weight compression mode (tlc.compress.MODES) or None")

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
        """The :class:`tlc.plan.BuildPlan` for :attr:`options`, computed on first access (precision,
        closed loop for ``mixed``, placement, segments) and kept; its stage timings join
        :attr:`timings`. Raises :class:`tlc.calibrate.PrecisionError` when ``mixed`` finds no
        passing island assignment."""
        if self._plan is None and self.cache_key is not None:
            from .cache import load_plan

            self._plan = load_plan(self._cache, self.cache_key, self.options)
            if self._plan is not None:
                self.timings.update(self._plan.timings)
                return self._plan
        if self._plan is None:
            from .plan import make_plan
            from .progress import stage

            what = "closed loop: emit, run, add fp32 islands" if self.precision == "mixed" else "precision, placement"
            with stage(f"planning {self.precision} ({what})"):
                self._plan = make_plan(self.graph, self.options, calibration=self.calibration,
                                       metadata=self._metadata, progress=self.progress)
            self.timings.update(self._plan.timings)
            if self.cache_key is not None:
                from .cache import store_plan

                store_plan(self._cache, self.cache_key, self._plan)
            if self._plan.emit_info is not None:
                self._mlmodel = self._plan.mlmodel
                self._record_emit(self._plan.emit_info)
        return self._plan

    @property
    def emit_graph(self) -> Graph:
        """The graph as emitted: :attr:`graph` after ``precision::mixed`` / ``precision::fp16`` /
        ``precision::fp32`` (float inputs/outputs in :attr:`io_dtype`), or :attr:`graph` itself for
        fp32 with fp32 I/O. ``mixed`` is calibrated on :attr:`calibration` (the example inputs
        plus ``calibration=``) and verified by the closed loop (:mod:`tlc.calibrate`): the emitted
        program is run on every calibration sample, and what fails becomes an fp32 island
        (:attr:`precision_check`). Raises :class:`tlc.calibrate.PrecisionError` when no island
        assignment passes."""
        return self.plan.emit_graph

    @property
    def precision_check(self):
        """``mixed``: the closed loop's :class:`tlc.calibrate.PrecisionCheck`; None for ``fp16``/``fp32``,
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
        """:class:`tlc.report.PlacementReport`: segments, static ANE residency, every op not on the
        ANE with its reason and source line (text via ``str``, JSON, HTML)."""
        from .report import build_report

        plan = self.plan
        pc = plan.precision_check.to_json() if plan.precision_check is not None else None
        return build_report(plan.emit_graph, list(plan.segments), plan.placement, model=self.name,
                            precision=self.precision, precision_check=pc)

    def _metadata(self, g: Graph | None = None) -> dict:
        md = {"tlc.source": self.source} if self.source else {}
        md["tlc.io_dtype"] = self.io_dtype
        if self.compress:
            md["tlc.compress"] = self.compress
        md.update(self.boundary.metadata())  # complex model I/O (a bundle's manifest needs it too)
        islands = (self.emit_graph if g is None else g).meta.get("tlc.islands", {})
        if islands:
            md["tlc.fp32_islands"] = ",".join(islands)
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
        if self._mlmodel is None or (self.compress and not self._compressed):
            plan = self.plan  # mixed emits in its closed loop and keeps that MLModel
            if plan.is_bundle:
                from .errors import EmitError

                raise EmitError("this model is not one Core ML program (ops run in tlc's fallback runtime: "
                                "see report()); save() writes a bundle")
            if self._mlmodel is None:
                self._mlmodel, info = convert(plan.emit_graph, self.precision, self.minimum_deployment_target,
                                              self._metadata())
                self._record_emit(info)
            if self.compress and not self._compressed:
                from .compress import compress_mlmodel, const_bytes

                t0 = time.perf_counter()  # after the closed loop: it judges fp16, not the compression
                self.weights_before_compress = const_bytes(self._mlmodel._mil_program)
                c = compress_mlmodel(self._mlmodel, self.compress, skip=tuple(plan.islands),
                                     calibration=[self._package_feed(f) for f in self.calibration],
                                     progress=self.progress)
                self._mlmodel, self.compressed_weights, self.float_activation_ops = c.mlmodel, c.weights, \
                    c.float_activation_ops
                self._compressed = True
                self.timings["compress"] = time.perf_counter() - t0
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

    def output_path(self, path: str | os.PathLike) -> Path:
        """Where :meth:`save` writes for a requested ``path``: the path itself for a plain package
        (``.mlpackage``) or an explicit ``.tlc``; for a bundle, ``path`` with suffix ``.tlc``. A
        path ending in ``.aimodel``: see :meth:`coreai_output_path`."""
        path = Path(path)
        if path.suffix == ".aimodel":
            return self.coreai_output_path(path)
        return bundle_path(path) if self.is_bundle or path.suffix == ".tlc" else path

    @property
    def coreai_is_bundle(self) -> bool:
        """Like :attr:`is_bundle` for the Core AI artifact: also True when an op Core ML holds has
        no Core AI form yet (:attr:`tlc.plan.BuildPlan.coreai_placement`)."""
        from .plan import is_bundle

        return is_bundle(self.plan.coreai_placement)

    def coreai_output_path(self, path: str | os.PathLike) -> Path:
        """Where the Core AI artifact goes for a requested ``path``: ``NAME.aimodel`` when the
        model is one Core AI program, else the bundle ``NAME.aimodel.tlc`` (Core AI segments plus
        tlc's fallback runtime; never the name of the Core ML bundle ``NAME.tlc``), or an explicit
        ``NAME.tlc`` path as given (with ``format="aimodel"``)."""
        path = Path(path)
        if path.suffix == ".tlc" and self.format == "aimodel":
            return path
        stem = path.with_suffix("") if path.suffix in (".aimodel", ".mlpackage", ".tlc", "") else path
        return Path(f"{stem}.aimodel.tlc") if self.coreai_is_bundle else Path(f"{stem}.aimodel")

    def coreai_fallback_ops(self) -> list[tuple[str, str, str, str]]:
        """:meth:`fallback_ops` of the Core AI artifact (ops without a Core AI form included)."""
        return self._off_program(self.plan.coreai_placement)

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
        path = Path(path)
        self._written = []
        if self.cache_key is None:
            return self._save(path, force)
        from .cache import artifact_key, copy_artifact

        akey = artifact_key(self.cache_key, path, self.format)
        got = None if self._mlmodel_handed_out else self._cache.get("artifacts", akey)
        t0 = time.perf_counter()
        if got is not None:
            if self.format != "mlpackage" or path.suffix == ".aimodel":
                self._check_coreai_options()
            d, meta = got
            try:
                outs = [copy_artifact(d / name, path.parent / name, force) for name in meta["outputs"]]
                self.timings["save"] = time.perf_counter() - t0
                return outs[0]
            except OutputExistsError:
                raise
            except (TlcError, OSError) as e:  # the entry went away mid-copy (evicted, cleared): build it
                print(f"tlc: cached artifact unusable ({type(e).__name__}: {e}); building it", file=sys.stderr)
        out = self._save(path, force)
        written = list(self._written)
        self._cache.put("artifacts", akey, lambda d: [shutil.copytree(p, d / p.name) for p in written],
                        {"outputs": [p.name for p in written]})
        return out

    def _save(self, path: Path, force: bool) -> Path:
        from .progress import stage

        with stage(f"writing {path.name} ({self.format})"):
            return self._save_unstaged(path, force)

    def _save_unstaged(self, path: Path, force: bool) -> Path:
        if self.format == "aimodel" or path.suffix == ".aimodel":
            return self._save_aimodel(self.coreai_output_path(path), force)
        path = self.output_path(path)
        if self.format == "both":
            aim = self.coreai_output_path(path)
            if aim.exists() and not force:
                raise OutputExistsError(f"{str(aim)!r} already exists; pass force=True (CLI: --force) to replace it")
            out = self._save_coreml(path, force)
            self._save_aimodel(aim, force)
            return out
        return self._save_coreml(path, force)

    def _save_coreml(self, path: Path, force: bool) -> Path:
        if path.suffix == ".tlc":
            from .compress import MODES

            if self.compress and MODES[self.compress].activations:
                raise InputError(f"compress={self.compress!r} calibrates activations on the whole model's inputs, which "
                                 f"a bundle's Core ML segments do not see (ops run in tlc's fallback runtime: see "
                                 f"report()); use a weight-only mode (int8, int4, palettize4/6/8) for bundles")
            t0 = time.perf_counter()
            out = write_bundle(path, self.emit_graph, self.segments, precision=self.precision,
                               minimum_deployment_target=self.minimum_deployment_target,
                               metadata=self._metadata(), force=force, compress=self.compress,
                               skip=tuple(self.islands))
            self.timings["save"] = time.perf_counter() - t0
            self._written.append(out)
            return out
        path = check_output_path(path, force)  # before spending time on emission
        mlm = self._emitted_mlmodel()
        t0 = time.perf_counter()
        out = save_atomic(mlm, path, force=force, check=lambda staged: check_package_io(staged, self.emit_graph))
        self.timings["save"] = time.perf_counter() - t0
        self._written.append(out)
        return out

    def _check_coreai_options(self) -> None:
        """Before writing Core AI: ``fallback=False`` with ops outside Core AI raises
        :class:`~tlc.errors.NotShippableError`; ``compress`` raises :class:`InputError` (Core AI
        assets are not compressed by tlc yet). Checked at save time, so a cached model, a later
        ``format`` and ``with_options`` are held to it too."""
        check_coreai_compress(self.compress)
        if not self.fallback and self.coreai_is_bundle:
            from .errors import NotShippableError

            raise NotShippableError(self.coreai_fallback_ops())

    def _save_aimodel(self, path: Path, force: bool) -> Path:
        """Write the model as Core AI (:mod:`tlc.coreai_emit`) at ``path``: the same optimized,
        precision-typed graph the ``.mlpackage`` is emitted from, as one ``.aimodel`` or, for a
        ``.tlc`` path, a bundle whose Core ML segments are ``.aimodel`` assets
        (:func:`tlc.artifact.write_bundle` with ``program="coreai"``). Raises
        :class:`~tlc.errors.EmitError` for an emission that fails, :class:`InputError` without
        coreai-core."""
        from .coreai_emit import save_aimodel

        self._check_coreai_options()
        t0 = time.perf_counter()
        if path.suffix == ".tlc":
            out = write_bundle(path, self.emit_graph, self.plan.coreai_segments, precision=self.precision,
                               minimum_deployment_target=self.minimum_deployment_target,
                               metadata=self._metadata(), force=force, program="coreai")
        else:
            out = save_aimodel(self.emit_graph, path, force=force, metadata=self._metadata())
        self.timings["save_aimodel"] = time.perf_counter() - t0
        self._written.append(out)
        return out

    def with_options(self, precision: str | None = None, minimum_deployment_target: str | None = None,
                     target: str | None = None, io_dtype: str | None = None,
                     fallback: bool | None = None, cost=None, compress: str | None = None) -> "CompiledModel":
        """A copy sharing the traced graph, with other build options (:class:`tlc.plan.BuildOptions`;
        no re-trace) and no plan yet. Raises :class:`~tlc.errors.InputError` for a bad precision,
        target or io_dtype (see :func:`check_io_dtype`), :class:`~tlc.errors.NotShippableError` for
        ``fallback=False`` when ops need the fallback runtime."""
        import copy
        import dataclasses

        o = self.options
        if precision is not None and precision not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        o = dataclasses.replace(
            o, precision=precision or o.precision,
            minimum_deployment_target=target_name(minimum_deployment_target) if minimum_deployment_target else
            o.minimum_deployment_target,
            target=check_target(target) if target is not None else o.target,
            io_dtype=io_dtype or o.io_dtype, fallback=o.fallback if fallback is None else bool(fallback),
            cost=o.cost if cost is None else cost, compress=o.compress if compress is None else compress or None)
        if not o.fallback:
            check_shippable(self.graph, o.target)
        check_io_dtype(o.io_dtype, o.minimum_deployment_target)
        check_compress(o.compress, o.target, o.minimum_deployment_target)
        cm = copy.copy(self)
        cm.options = o
        if self.cache_key is not None and o != self.options:  # same trace, another plan and artifacts
            from .cache import derived_key

            cm.cache_key = derived_key(self.cache_key, repr(o))
        cm._written = []
        cm.timings = {k: v for k, v in self.timings.items() if k in TRACE_STAGES}
        cm._plan = cm._mlmodel = cm._coreml = cm._torch = None
        cm._compressed = False
        return cm

    # --------------------------------------------------------------------------------- running

    def run(self, feeds: dict[str, Any], backend: str = "auto") -> dict[str, np.ndarray]:
        """Run on named inputs (NumPy arrays or torch tensors); returns ``{output_name: ndarray}``.

        ``backend``: ``"auto"`` picks by availability, Core ML (macOS) -> GPU (tlc's torch-device
        executor on ``mps``/``cuda``) -> NumPy; ``"coreml"`` (macOS only; raises
        :class:`~tlc.errors.TlcError` elsewhere); ``"torch"`` (the torch-device executor on the
        best device here, the CPU if there is no GPU); ``"numpy"`` (tlc's reference executor).
        The torch and NumPy backends run :attr:`graph` (the model's own dtypes); the executor is
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
        return self._run(feeds, backend)

    def _run(self, feeds, backend):
        from tlc.runtime import check_inputs, run_graph

        if backend == "auto":
            backend = "coreml" if coreml_available() else "torch" if gpu_available() else "numpy"
        if backend == "torch":
            if self._torch is None:
                from tlc.runtime.torch_executor import TorchExecutor

                self._torch = TorchExecutor(self.graph)
            out = self._torch.run(feeds)
        else:
            feeds = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
                     for k, v in feeds.items()}
            if backend == "coreml":
                return self._run_coreml(check_inputs(self.graph, feeds))
            out = run_graph(self.graph, feeds)
        if self.io_dtype == "float16":
            out = {k: v.astype(np.float16) if v.dtype.kind == "f" else v for k, v in out.items()}
        return out

    def _run_coreml(self, feeds):
        if not coreml_available():
            raise TlcError("backend 'coreml' needs macOS with Core ML; use backend='numpy' here")
        if self._coreml is None:  # pragma: no cover - macOS only
            import tempfile

            from tlc.runtime import load

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
        return self.as_model_output(self.run(dict(zip(self.input_names, tensors)), backend=backend), tensors)

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


def build(
    model_or_fn: Callable | torch.nn.Module,
    example_inputs,
    *,
    precision: str | None = None,
    minimum_deployment_target: str | None = None,
    target: str = "ane",
    profile: str | os.PathLike | None = None,
    strict: bool = False,
    calibration: list | None = None,
    calibration_inputs: list | None = None,
    passes: list[str] | None = None,
    skip_passes: list[str] | tuple = (),
    io_dtype: str = "float32",
    fallback: bool = True,
    progress: bool = False,
    compress: str | None = None,
    function_names: list[str] | None = None,
    default_function_name: str | None = None,
    paddable: dict | None = None,
    format: str = "mlpackage",
    cache: bool = False,
    cache_key: str | None = None,
    _cache_values: bool = True,
):
    """Trace ``model_or_fn`` on ``example_inputs``, lower it to tlc's IR and optimize it.

    ``example_inputs``: a tensor, a tuple/list of positional inputs, a dict of keyword inputs,
    or ``(args, kwargs)``; NumPy arrays are accepted. Integer inputs become int32 (Core ML has no
    int64 I/O), float64 becomes fp32. Shapes are static: the package accepts exactly these shapes.
    **Several shapes**: a ``list`` of two or more signatures (each a tuple, list or dict as above,
    :func:`tlc.multifunction.signatures`) traces one static function per signature and returns a
    :class:`tlc.multifunction.MultiFunctionModel`, saved as one multifunction ``.mlpackage``
    (iOS18+; weights stored once). ``function_names`` names the functions (default: from the
    shapes, ``input_ids_1x128``), ``default_function_name`` picks the default (the first), and
    ``paddable`` (``{input: axis or [axes]}``) declares axes along which a smaller input may be
    padded (with 0; ``{input: {"axes": [1], "value": v}}`` for another value) to fit a function at
    run time (:mod:`tlc.runtime.buckets`; recorded in the package).
    ``precision``: ``"mixed"`` (default for ``target="ane"``: fp16 with measured fp32 islands),
    ``"fp16"`` or ``"fp32"`` (default for ``target="gpu"``/``"cpu"``); ``target``: ``"ane"`` (default:
    every op Core ML can run goes into an mlprogram, the rest to tlc's fallback runtime, placed by
    :mod:`tlc.passes.partition`), ``"gpu"`` or ``"cpu"`` (everything in tlc's fallback runtime);
    ``profile``: a ``tlc profile`` file whose measured per-op costs replace the placement cost
    model's estimates (:func:`tlc.profile.cost_model`);
    ``calibration``: more inputs of the same structure as ``example_inputs`` (a list of samples)
    for ``mixed``: its range analysis and its closed loop, which runs the emitted program on every
    sample (the example inputs first) and moves what fails to fp32 (:mod:`tlc.calibrate`;
    ``calibration_inputs`` is the former name, still accepted); ``progress``: print the closed
    loop's rounds to stderr as they run (the CLI sets it); ``minimum_deployment_target``: ``"iOS17"``
    (default; = macOS14) or another ``coremltools.target`` name; ``strict``: torch.export mode;
    ``passes``: the pass pipeline (default :data:`tlc.passes.PIPELINE`), ``skip_passes``: names
    to leave out of it; ``io_dtype``: ``"float32"`` (default) or ``"float16"``, the dtype of the
    package's float inputs and outputs, as coremltools' ``ct.TensorType(dtype=np.float16)``
    (iOS16+; an fp16 first/last op then needs no cast; ``CompiledModel`` and tlc's runtimes
    accept fp32 arrays for fp16 inputs); ``fallback``: ``True`` (default) lets ops Core ML cannot run
    go to tlc's fallback runtime (the artifact is then a bundle ``NAME.tlc``, which needs tlc's Python
    runtime); ``False`` demands one shippable ``.mlpackage``: every op MIL can express is placed in
    Core ML whatever the cost model says, and any other op raises
    :class:`~tlc.errors.NotShippableError` listing it (op, reason, source line) before anything is
    written (CLI: ``--no-fallback``). ``compress``: ``"int8"``, ``"int4"`` (iOS18+),
    ``"palettize4"``, ``"palettize6"``, ``"palettize8"``, ``"w8a8"`` (iOS17+: int8 weights and int8
    activations calibrated on the calibration samples in tlc's MIL interpreter) or None: the
    weights of conv/linear/matmul in the package compressed by coremltools after precision
    (per-channel or per-tensor for ``target="ane"``; embeddings and fp32 islands untouched;
    :mod:`tlc.compress`; CLI: ``--compress``).

    ``format``: what :meth:`CompiledModel.save` writes: ``"mlpackage"`` (default; a bundle
    ``NAME.tlc`` when ops need tlc's fallback runtime), ``"aimodel"`` (Apple's Core AI asset,
    iOS/macOS 27, :mod:`tlc.coreai_emit`; needs the ``coreai`` extra; a bundle
    ``NAME.aimodel.tlc`` of ``.aimodel`` segments when ops need tlc's fallback runtime, including
    ops with no Core AI form: :meth:`CompiledModel.coreai_fallback_ops`) or ``"both"`` (the Core
    ML artifact and the Core AI one beside it); a path ending in ``.aimodel`` always writes Core
    AI. ``compress`` applies to the ``.mlpackage`` only (``InputError`` with another format).

    ``cache``: use the persistent compile cache (:mod:`tlc.cache`): a build whose key (versions,
    options, input signature and values, the model's weights and source files) is in the cache
    loads from it without tracing; its plan and the artifacts :meth:`CompiledModel.save` wrote are
    cached too. ``cache_key``: your own key for the model part (weights and code are then not
    hashed; implies ``cache``). ``$TLC_NO_CACHE=1`` turns the cache off. ``cm.cache_status`` is
    ``"hit"``, ``"miss"`` or None (not cached).

    Raises :class:`~tlc.errors.InputError` (bad inputs, precision or pass names, an unknown
    ``format`` or ``"aimodel"``/``"both"`` without coreai-core, several signatures
    with a deployment target before iOS18, repeated signature shapes, ``fallback=False``
    with a target other than ``"ane"``, an unknown ``compress`` mode or one the deployment target
    cannot hold), :class:`~tlc.errors.NotShippableError` (``fallback=False``),
    :class:`~tlc.errors.FrontendError` (incl. :class:`~tlc.errors.UnsupportedOpError` naming the
    op and its source line, for what not even a fallback op can hold; ops MIL cannot express become
    fallback nodes, :mod:`tlc.ops.fallback`), :class:`~tlc.errors.EmitError` (unknown deployment target),
    :class:`~tlc.errors.IRError` (a pass broke the IR contract: a tlc bug).
    """
    from .multifunction import build_multifunction, check_multifunction_target, signatures

    sigs = signatures(example_inputs)
    # the persistent compile cache, looked up before anything imports coremltools (seconds on its own)
    store = key = None
    from . import cache as _cache

    if sigs is None and _cache.enabled(cache or cache_key is not None) and (profile is None or os.path.isfile(profile)):
        store = _cache.Cache()
        opts = dict(precision=precision or ("mixed" if target == "ane" else "fp32"),
                    minimum_deployment_target=str(minimum_deployment_target or "iOS17"), target=target,
                    profile=_cache.file_key(profile) if profile is not None else None, strict=strict,
                    passes=passes, skip_passes=list(skip_passes), io_dtype=io_dtype, fallback=fallback,
                    compress=compress)
        key = _cache.source_key(getattr(model_or_fn, "__tlc_function__", model_or_fn), example_inputs, opts,
                                values=_cache_values, calibration=list(calibration or []) + list(calibration_inputs or []),
                                user_key=cache_key)
        cm = _cache.load_trace(store, key, progress=progress)
        if cm is not None:
            if format != "mlpackage":
                check_format(format)
            cm.format, cm.cache_key, cm._cache, cm.cache_status = format, key, store, "hit"
            return cm
    minimum_deployment_target = target_name(minimum_deployment_target or ("iOS18" if sigs else "iOS17"))
    if sigs is not None:
        check_multifunction_target(minimum_deployment_target)
        return build_multifunction(
            model_or_fn, sigs, function_names_=function_names, default_function_name=default_function_name,
            paddable=paddable, calibration=list(calibration or []) + list(calibration_inputs or []), build_one=build,
            precision=precision, minimum_deployment_target=minimum_deployment_target, target=target, profile=profile,
            strict=strict, passes=passes, skip_passes=skip_passes, io_dtype=io_dtype, fallback=fallback,
            progress=progress, compress=compress, cache=cache, cache_key=cache_key)
    if function_names is not None or default_function_name is not None or paddable is not None:
        raise InputError("function_names, default_function_name and paddable apply to several example input "
                         "signatures (example_inputs=[ex_a, ex_b, ...])")
    check_target(target)
    check_format(format)
    if format != "mlpackage":
        check_coreai_compress(compress)
    if not fallback and target != "ane":
        check_shippable(None, target)
    cost = None
    if profile is not None:
        from .profile import cost_model

        cost = cost_model(profile)
    if precision is None:
        precision = "mixed" if target == "ane" else "fp32"
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    check_io_dtype(io_dtype, minimum_deployment_target)
    check_compress(compress, target, minimum_deployment_target)
    # a @tlc.compile wrapper (tlc.specialize.CompiledFunction) builds what it wraps
    model_or_fn = getattr(model_or_fn, "__tlc_function__", model_or_fn)
    source = _source_of(model_or_fn)
    meta = {"tlc.source": source} if source else {}
    from .progress import stage

    with stage(f"tracing {_model_name(model_or_fn)} (torch.export, decompositions, lowering)"):
        g, info = trace(model_or_fn, example_inputs, strict=strict, meta=meta)
    from tlc.passes import PIPELINE, PASSES, run_pipeline

    names = list(PIPELINE if passes is None else passes)
    if target != "ane":  # the (B, C, 1, S) layout is for the Neural Engine; GPU/CPU runtimes want it as traced
        names = [n for n in names if n != "layout::ane_transformer"]
    unknown = [n for n in list(names) + list(skip_passes) if n not in PASSES]
    if unknown:
        raise InputError(f"unknown pass(es) {unknown}; registered: {', '.join(sorted(PASSES))}")
    t0 = time.perf_counter()
    with stage(f"optimizing ({len(names)} passes)"):
        g = run_pipeline(g, [n for n in names if n not in set(skip_passes)])
    t_passes = time.perf_counter() - t0
    args, kwargs = normalize_inputs(example_inputs)
    out_dtypes = info.extra["out_dtypes"]  # to hand back int64/float64 as the model itself would
    timings = {"export": info.export_s, "decompose": info.decompose_s, "lower": info.lower_s, "passes": t_passes}
    names = [v.name for v in g.inputs]
    feeds = []
    for k, ex in enumerate([example_inputs] + list(calibration or []) + list(calibration_inputs or [])):
        feeds.append(_calibration_feed(g, ex, k))
    if not fallback:
        check_shippable(g, target)
        if format != "mlpackage":
            check_shippable(g, target, program="coreai")
    kw = dict(precision=precision, minimum_deployment_target=str(minimum_deployment_target), out_spec=info.out_spec,
              kw_order=list(kwargs), out_torch_dtypes=out_dtypes, timings=timings, source=source, target=target,
              cost=cost, name=_model_name(model_or_fn), io_dtype=io_dtype, fallback=fallback, progress=progress,
              compress=compress)
    cm = CompiledModel(g, calibration=feeds, **kw)
    cm.format = format
    if store is not None:
        t0 = time.perf_counter()
        _cache.store_trace(store, key, cm, kw)
        cm.timings["cache_store"] = time.perf_counter() - t0
        cm.cache_key, cm._cache, cm.cache_status = key, store, "miss"
    return cm


FORMATS = ("mlpackage", "aimodel", "both")


def check_coreai_compress(compress: str | None) -> None:
    """Raise :class:`InputError` when ``compress`` is set for a Core AI artifact: tlc compresses
    ``.mlpackage`` weights with coremltools.optimize only (issue 17: not yet for Core AI)."""
    if compress:
        raise InputError(f"compress={compress!r} applies to the .mlpackage (coremltools.optimize); Core AI assets "
                         f"are not compressed by tlc yet")


def check_format(format: str) -> str:
    """``format`` if it is one of :data:`FORMATS` (and coreai-core is installed for the Core AI
    ones), else :class:`InputError`."""
    if format not in FORMATS:
        raise InputError(f"format must be one of {FORMATS}, got {format!r}")
    if format != "mlpackage":
        from .coreai_emit import coreai

        coreai()
    return format


def _calibration_feed(g: Graph, ex, k: int) -> dict:
    """Sample ``k`` of the calibration inputs as ``{graph input name: ndarray}`` (complex inputs as
    their package form, :mod:`tlc.boundary`): a dict keyed by
    exactly the graph's input names is taken by name (``tlc build --calibration FILE.npz``), any
    other value is structured like ``example_inputs``. Raises :class:`InputError` naming the
    sample for a wrong tensor count or shape."""
    names = [v.name for v in g.inputs]
    if isinstance(ex, dict) and set(ex) == set(names):
        arrays = {n: np.asarray(ex[n].detach().cpu().numpy() if isinstance(ex[n], torch.Tensor) else ex[n]) for n in names}
    else:
        a2, k2 = normalize_inputs(ex)
        leaves = [x for x in pytree.tree_leaves((a2, k2)) if isinstance(x, torch.Tensor)]
        if len(leaves) != len(names):
            raise InputError(f"calibration sample {k} has {len(leaves)} tensors; the model takes {len(names)} "
                             f"({', '.join(names)})")
        arrays = {n: t.detach().cpu().numpy() for n, t in zip(names, leaves)}
    arrays = _complex_boundary(g).to_package(arrays)
    for v in g.inputs:
        shape = tuple(arrays[v.name].shape)
        if shape != tuple(v.type.shape) and v.type.is_static:
            raise InputError(f"calibration sample {k}: input {v.name} has shape {list(shape)}; the model was traced "
                             f"with {list(v.type.shape)} (shapes are static)")
    return arrays
