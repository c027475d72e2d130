"""MIL emission: tlc IR -> coremltools MIL program -> coremltools' graph passes and milproto
backend -> ``.mlpackage`` (the steps of ``ct.convert``, called directly: :func:`convert`).

Each IR node becomes the MIL op(s) of its table row (``emit_mil``), named after the node so a Core
ML profile maps back to tlc's IR and the user's source. The IR arrives already typed per
value: tlc's ``precision::mixed`` / ``precision::fp16`` passes (tlc.passes.precision) decide
which ops compute in fp16 and insert the casts, so the program is emitted exactly as typed and
coremltools' ``common::add_fp16_cast`` never runs (it would cast everything, islands included;
``ct.convert`` with ``compute_precision=FLOAT32`` would give the same program).

**Pass pipeline (deliberate choice).** tlc optimizes its own IR, so coremltools' default
95-pass pipeline is redundant and slow, and it would undo tlc's decisions (its fp16 cast ignores
fp32 islands). ``PassPipeline.EMPTY`` would also work now that precision is tlc's; the few
passes in :data:`TLC_PIPELINE` only tidy what emission leaves (constants of folded casts, dead
ops, cast chains at fp16/fp32 boundaries).
"""
from __future__ import annotations

import contextlib
import io
import tempfile
import time
import warnings
from dataclasses import dataclass

import numpy as np

from tlc import dtypes
from tlc.boundary import of_graph
from tlc.errors import EmitError, TlcError
from tlc.ir import Graph, node_context
from tlc.ops import get_op
from tlc.ops.linalg import MASK_FILL
from tlc.serialize import SOURCE_LINES_KEY, source_lines
from tlc.util.coreml import quiet_coremltools as _ct, resolve_target
from tlc.version import __version__

#: coremltools passes run by ``ct.convert`` on tlc's programs (see module docstring for why).
TLC_PIPELINE = [
    "common::dead_code_elimination",
    "common::const_elimination",  # folds ops on constants emission may create (e.g. mask casts)
    "common::cast_optimization",  # merges cast chains at fp16/fp32 island boundaries
    "common::dead_code_elimination",  # must follow cast_optimization
]

class _TypedBuilder:
    """The MIL Builder, with float literals typed like the op's ``x``.

    MIL requires scalar parameters (``epsilon``, ``alpha``, ``beta``, ``constant_val``, a scalar
    ``y``) to have the dtype of ``x``; op rows write them as Python/fp32 numbers, and this proxy
    casts them to fp16 when ``x`` is fp16 (what coremltools' ``add_fp16_cast`` did before tlc
    took over precision)."""

    def __init__(self, mb):
        self._mb = mb

    def __getattr__(self, name):
        from coremltools.converters.mil.mil import types

        fn = getattr(self._mb, name)
        if name == "const":
            return fn

        def call(**kw):
            x = kw.get("x")
            dt = getattr(x, "dtype", None)
            if dt is types.fp16:
                for k, v in list(kw.items()):
                    if isinstance(v, (float, np.floating)) and not isinstance(v, bool):
                        kw[k] = np.float16(v)
                    elif isinstance(v, np.ndarray) and v.dtype == np.float32:
                        kw[k] = v.astype(np.float16)
            return fn(**kw)

        return call


class EmitContext:
    """What an op's ``emit_mil`` may use: ``mb`` (the MIL Builder, float literals typed like
    ``x``), ``opset`` (ct.target), ``has_sdpa`` (iOS18+ has ``scaled_dot_product_attention``),
    ``node`` (the IR node being emitted), and shared helpers."""

    def __init__(self, opset):
        from coremltools.converters.mil import Builder as mb

        ct = _ct()
        self.mb = _TypedBuilder(mb)
        self.opset = opset
        self.has_sdpa = opset >= ct.target.iOS18
        self._masks: dict = {}
        self.node = None  #: the IR node being emitted (its output types are the contract)

    def additive_mask(self, mask, dtype: str = "fp32"):
        """A bool attention mask as an additive mask (0 / MASK_FILL) of ``dtype`` (``"fp32"`` or
        ``"fp16"``), built once per mask and dtype."""
        from coremltools.converters.mil.mil import types

        if mask.dtype != types.bool:
            return mask
        key = (id(mask), dtype)
        npdt = np.float16 if dtype == "fp16" else np.float32
        if key not in self._masks:
            if mask.val is not None:
                add = np.where(mask.val, 0, MASK_FILL).astype(npdt)
                self._masks[key] = self.mb.const(val=add, name=f"{mask.name}_additive_{dtype}")
            else:
                # (not mask) * MASK_FILL; MIL `select` with scalar branches mis-infers its shape
                inv = self.mb.logical_not(x=mask, name=f"{mask.name}_inv_{dtype}")
                f = self.mb.cast(x=inv, dtype=dtype, name=f"{mask.name}_invf_{dtype}")
                self._masks[key] = self.mb.mul(x=f, y=npdt(MASK_FILL), name=f"{mask.name}_additive_{dtype}")
        return self._masks[key]


def to_mil_program(g: Graph, minimum_deployment_target="iOS17"):
    """Build the coremltools MIL ``Program`` for ``g`` (function ``main``).

    Inputs keep the graph's names; bool inputs are taken as int32 and cast (Core ML has no bool
    I/O); bool outputs are cast to int32; 0-d inputs and outputs are ``[1]`` at the boundary
    (squeezed / expanded inside; recorded in the metadata by :func:`convert`, :mod:`tlc.boundary`). Raises :class:`EmitError` naming the node whose
    emission failed.
    """
    from coremltools.converters.mil.mil import Function, Program
    from coremltools.converters.mil import Builder as mb

    opset = resolve_target(minimum_deployment_target)
    placeholders = {}
    for v in g.inputs:
        dt = "int32" if v.type.dtype == "bool" else v.type.dtype
        # Core ML I/O needs rank >= 1: a 0-d input is [1] at the boundary (tlc.boundary)
        placeholders[v.name] = mb.placeholder(shape=v.type.shape or (1,), dtype=dtypes.to_mil(dt))
    out_names = set(g.output_names)
    with Function(placeholders, opset_version=opset) as func:
        ctx = EmitContext(opset)
        env = {}
        for v in g.inputs:
            x = func.inputs[v.name]
            if v.type.rank == 0:  # [1] at the boundary (tlc.boundary)
                x = mb.squeeze(x=x, axes=[0], name=f"{v.name}_scalar")
            env[v] = mb.cast(x=x, dtype="bool", name=f"{v.name}_bool") if v.type.dtype == "bool" else x
        for n in g.nodes:
            row = get_op(n.op)
            if row.emit_mil is None:
                raise EmitError(f"op {n.op} (node {n.name}) has no MIL form; it needs the fallback runtime", loc=n.loc,
                                context=node_context(g, n))
            name = n.name if n.name not in out_names else f"{n.name}_"
            ctx.node = n
            try:
                res = row.emit_mil(ctx, n.attrs, [env[i] for i in n.inputs], name)
            except TlcError:
                raise
            except Exception as e:
                raise EmitError(f"MIL emission of {n.op} (node {n.name}) failed: {type(e).__name__}: {e}", loc=n.loc,
                                context=node_context(g, n)) from e
            outs = res if isinstance(res, (tuple, list)) else (res,)
            for v, mv in zip(n.outputs, outs):
                env[v] = mv
        outputs = []
        for name, v in zip(g.output_names, g.outputs):
            x = env[v]
            if v.type.dtype == "bool":
                x = mb.cast(x=x, dtype="int32", name=f"{name}_int")
            if v.type.rank == 0:  # widened to [1] at the boundary (tlc.boundary)
                x = mb.expand_dims(x=x, axes=[0], name=name)
            elif x.op is None or x.op.op_type == "const" or x in outputs:
                x = mb.identity(x=x, name=name)
            else:
                x.name = name
            outputs.append(x)
        func.set_outputs(outputs)
    prog = Program()
    prog.add_function("main", func)
    return prog


@dataclass
class EmitInfo:
    """Timings (seconds) of one emission: building the MIL program, coremltools' graph passes,
    milproto serialization (weights written) + package creation; ``convert_s`` is the last two."""

    build_mil_s: float = 0.0
    mil_passes_s: float = 0.0
    serialize_s: float = 0.0

    @property
    def convert_s(self) -> float:
        return self.mil_passes_s + self.serialize_s


def run_mil_passes(prog, minimum_deployment_target) -> None:
    """Run on ``prog`` (in place) exactly the coremltools graph passes ``ct.convert`` runs for a
    MIL program with ``pass_pipeline`` = :data:`TLC_PIPELINE`: coremltools' own frontend/backend
    pipelines for ``milinternal`` -> ``mlprogram`` (``_construct_other_pipelines``: name
    sanitizing, I/O dtype adjustment, dedup of names, ...), around tlc's pipeline.

    Unlike ``ct.convert`` (coremltools/converters/_converters_entry.py, converter.py), the program
    is validated once at the end instead of before and after every pass, no debug string of the
    whole program is built, and no ``gc.collect()`` runs (ResNet-50: those took 0.5 s of 0.7 s,
    measured with cProfile; docs/benchmarks.md). Raises :class:`EmitError` naming the pass that
    failed or an op newer than the target.
    """
    from coremltools.converters.mil.converter import _construct_other_pipelines
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    ct = _ct()
    opset = resolve_target(minimum_deployment_target)
    newest, op = prog._get_max_opset_version_and_op()
    if newest is not None and newest > opset:
        raise EmitError(f"MIL op {op.op_type} needs minimum_deployment_target {newest.name} or newer")
    main = ct.PassPipeline(pass_names=list(TLC_PIPELINE), pipeline_name="tlc")
    front, back = _construct_other_pipelines(main, "milinternal", "mlprogram")
    for pipe in (front, main, back):
        for name in pipe.passes:
            graph_pass = PASS_REGISTRY[name]
            graph_pass.set_options(pipe.get_options(name))
            try:
                graph_pass(prog)
            except Exception as e:
                raise EmitError(f"coremltools pass {name} failed on tlc's MIL program: {type(e).__name__}: {e}") from e
    try:
        prog.validate()
        prog._check_early_error_out_for_invalid_program()  # rank > 5 tensors, ...
    except (ValueError, AssertionError) as e:
        raise EmitError(f"coremltools rejects tlc's MIL program: {e}") from e


def serialize(prog, minimum_deployment_target, model_description=None, classifier_config=None):
    """A MIL ``Program`` (passes already run) -> ``ct.models.MLModel`` backed by a temporary
    package: coremltools' milproto backend (``backend.mil.load.load``: spec + weight blob file;
    ``model_description``: the ``ModelDescription`` of a multifunction program;
    ``classifier_config``: a ``ct.ClassifierConfig``, for which the backend adds the ``classify``
    op to ``prog`` and writes Core ML's classifier description), then
    ``models.utils._create_mlpackage``. Raises :class:`EmitError` with the tail of
    coremltools' log when serialization fails."""
    ct = _ct()
    from coremltools.converters.mil.backend.mil.load import load as milproto_export
    from coremltools.models.utils import _create_mlpackage

    opset = resolve_target(minimum_deployment_target)
    log = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), \
                tempfile.TemporaryDirectory(prefix="tlc-weights-") as weights:
            warnings.simplefilter("ignore")
            extra = {"model_description": model_description} if model_description is not None else {}
            if classifier_config is not None:
                extra["classifier_config"] = classifier_config
            proto = milproto_export(prog, weights_dir=weights, specification_version=opset.value,
                                    convert_from="milinternal", convert_to="mlprogram", **extra)
            package = _create_mlpackage(proto, weights)
            return ct.models.MLModel(package, is_temp_package=True, mil_program=prog, skip_model_load=True)
    except Exception as e:
        tail = "\n".join(log.getvalue().strip().splitlines()[-5:])
        raise EmitError(f"coremltools could not serialize the MIL program: {type(e).__name__}: {e}", context=tail) from e


def copy_metadata(spec, mlmodel) -> None:
    """Copy a spec's metadata (user-defined keys, version, short description, author) onto
    ``mlmodel``: a program rewritten after emission (compressed, made stateful) keeps tlc's and
    coremltools' records."""
    md = spec.description.metadata
    for k, v in md.userDefined.items():
        mlmodel.user_defined_metadata[k] = v
    mlmodel.version = md.versionString
    mlmodel.short_description = md.shortDescription
    mlmodel.author = md.author


def convert(g: Graph, precision: str = "mixed", minimum_deployment_target="iOS17", metadata: dict | None = None):
    """IR graph (already typed by the precision passes) -> ``ct.models.MLModel`` (mlprogram, not
    loaded, backed by a temporary package). Returns ``(mlmodel, EmitInfo)``. ``precision`` is
    recorded in the metadata. Raises :class:`EmitError`.

    The steps ``ct.convert(prog, convert_to="mlprogram", compute_precision=FLOAT32,
    pass_pipeline=TLC_PIPELINE)`` takes, through the same coremltools functions, minus its
    per-pass validation and ``gc.collect`` (see :func:`run_mil_passes`): MIL program ->
    coremltools' milproto backend (``backend.mil.load.load``: spec + weight blob file) ->
    ``models.utils._create_mlpackage`` -> ``MLModel``, with coremltools' build metadata
    (``_record_build_metadata``) and tlc's. tests/test_emit.py checks the resulting spec equals
    ``ct.convert``'s.
    """
    from coremltools.converters._converters_entry import _record_build_metadata
    from coremltools.converters.mil.converter import _reset_conversion_state

    t0 = time.perf_counter()
    prog = to_mil_program(g, minimum_deployment_target)
    t1 = time.perf_counter()
    opset = resolve_target(minimum_deployment_target)
    try:
        run_mil_passes(prog, opset)
    finally:
        _reset_conversion_state()
    t2 = time.perf_counter()
    mlmodel = serialize(prog, opset)
    _record_build_metadata(mlmodel, "milinternal")
    t3 = time.perf_counter()
    md = {"tlc.version": __version__, "tlc.precision": precision,
          "tlc.minimum_deployment_target": str(minimum_deployment_target)}
    md.update({k: str(v) for k, v in (metadata or {}).items()})
    md.update(of_graph(g).metadata())  # 0-d and complex model I/O, for tlc's runtimes (tlc.boundary)
    md[SOURCE_LINES_KEY] = source_lines(g)
    for k, v in md.items():
        mlmodel.user_defined_metadata[k] = v
    mlmodel.version = __version__
    mlmodel.short_description = f"Built by tlc {__version__} ({precision})" + (
        f" from {metadata['tlc.source']}" if metadata and "tlc.source" in metadata else "")
    return mlmodel, EmitInfo(t1 - t0, t2 - t1, t3 - t2)
