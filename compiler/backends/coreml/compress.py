"""Weight compression of the MIL program tlc emits: ``compress="int8" | "int4" | "palettize4" |
"palettize6" | "palettize8" | "w8a8"`` (``tlc.build``, ``tlc build --compress``).

Compression is coremltools' (``coremltools.optimize.coreml.linear_quantize_weights`` /
``palettize_weights``), applied to the program after tlc's precision and closed loop, to the
weights of ``conv``, ``conv_transpose``, ``linear`` and ``matmul`` only: embeddings (``gather``
tables) and every op ``precision="mixed"`` kept in fp32 stay uncompressed. The Neural Engine takes
per-channel (int8/int4) and per-tensor / per-grouped-channel palettized weights; per-block int4 is
for the GPU and is known to give wrong output on the ANE (apple/coreai-models#279; ExecuTorch's
Core ML llama example: "the ANE requires channelwise"), so tlc uses only the per-channel forms
(its Core ML programs are for ``target="ane"``; gpu/cpu builds run in tlc's fallback runtime and
have nothing to compress).
The MIL interpreter runs every ``constexpr_*`` op these produce, so compressed packages verify on
Linux. Weights below coremltools' ``weight_threshold`` (2048 elements) are left as they are.
From iOS18, 4-bit tables are per 16 output channels (:data:`GROUP_SIZE`).

``w8a8`` adds int8 activations: coremltools' activation-quantization passes, with the ranges they
need measured by tlc's MIL interpreter on the calibration samples (:func:`activation_stats`;
coremltools' own ``linear_quantize_activations`` measures them with Core ML predict, i.e. only on
macOS), and outlier-dominated tensors left float (:func:`int8_snr_db`).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from dataclasses import dataclass

import numpy as np

from tlc.util.progress import enabled as progress_enabled, note
from tlc.util.coreml import SPEC_VERSIONS

from .weights import WeightConfig, palettize_params

#: MIL op types whose constant weights are compressed.
WEIGHT_OPS = ("conv", "conv_transpose", "linear", "matmul")

#: Core ML specification versions of iOS17 / iOS18 (coremltools ``_SPECIFICATION_VERSION_IOS_17``/``18``)
_IOS17_SPEC = SPEC_VERSIONS["iOS17"]
_IOS18_SPEC = SPEC_VERSIONS["iOS18"]


@dataclass(frozen=True)
class Mode:
    """One ``compress=`` mode: ``kind`` (``"quantize"``/``"palettize"``), ``nbits``, the oldest
    ``minimum_deployment_target`` whose opset holds its ``constexpr_*`` form (coremltools:
    int8 per-channel and per-tensor LUTs from iOS16, int4 from iOS18), and a description."""

    kind: str
    nbits: int
    min_target: str
    about: str
    activations: bool = False


MODES = {
    "int8": Mode("quantize", 8, "iOS16", "8-bit symmetric linear quantization, one scale per output channel"),
    "int4": Mode("quantize", 4, "iOS18", "4-bit symmetric linear quantization, one scale per output channel (the "
                                         "ANE's form: per-block int4 gives wrong output there, apple/coreai-models#279)"),
    "palettize4": Mode("palettize", 4, "iOS16", "16-entry k-means look-up table per tensor; from iOS18 "
                                                  "one per 16 output channels"),
    "palettize6": Mode("palettize", 6, "iOS16", "64-entry k-means look-up table per tensor"),
    "palettize8": Mode("palettize", 8, "iOS16", "256-entry k-means look-up table per tensor"),
    "w8a8": Mode("quantize", 8, "iOS17", "int8 weights per output channel and int8 activations (quantize/dequantize "
                                         "pairs) whose ranges come from the calibration inputs", activations=True),
}


#: channels sharing one look-up table in 4-bit palettization from iOS18 (coremltools'
#: ``per_grouped_channel``; the ANE runs it: Apple's compression guide). Measured on the real
#: all-MiniLM-L6-v2 embedding: 19.8 dB PSNR against 18.7 dB with one table per tensor
#: (benchmarks/bench_compress.py), for 0.4% more bytes.
GROUP_SIZE = 16


def mode_config(compress: str, ios18: bool = False) -> WeightConfig:
    """The :class:`~tlc.backends.coreml.weights.WeightConfig` a uniform mode gives every weight:
    per-channel quantization, or per-tensor palettization (4-bit tables per :data:`GROUP_SIZE`
    output channels when ``ios18``)."""
    m = MODES[compress]
    if m.kind == "quantize":
        return WeightConfig("quantize", m.nbits, "per_channel")
    if m.nbits == 4 and ios18:
        return WeightConfig("palettize", 4, "per_grouped_channel", GROUP_SIZE)
    return WeightConfig("palettize", m.nbits)


#: coremltools' default ``weight_threshold``: smaller weights are not worth a constexpr op.
WEIGHT_THRESHOLD = 2048


def _large_consts(prog, skip: tuple[str, ...]):
    """``(const op name, readers reading it as a weight, readers gathering rows of it, other
    readers)`` for every ``const`` of at least :data:`WEIGHT_THRESHOLD` elements read by no op in
    ``skip``: a weight reader is a :data:`WEIGHT_OPS` op reading it as ``weight`` (``x``/``y`` for
    ``matmul``), never as ``bias``; a gather reads it as ``x``."""
    for f in prog.functions.values():
        for op in f.operations:
            if op.op_type != "const" or np.size(op.outputs[0].val) < WEIGHT_THRESHOLD:
                continue
            var = op.outputs[0]
            readers = var.child_ops
            if not readers or any(r.name in skip for r in readers):
                continue
            weights = [r for r in readers if r.op_type in WEIGHT_OPS and r.inputs.get("bias") is not var
                       and any(v is var for k, v in r.inputs.items() if k in ("weight", "x", "y"))]
            gathers = [r for r in readers if r.op_type == "gather" and r.inputs.get("x") is var]
            yield op.name, weights, gathers, len(readers) - len(weights) - len(gathers)


def weight_consts(prog, skip: tuple[str, ...] = ()) -> list[str]:
    """Names of the ``const`` ops of a MIL program that are weights of :data:`WEIGHT_OPS` only
    (every reader is one of them, reads it as its ``weight`` — ``x``/``y`` for ``matmul`` — and is
    not in ``skip``) with at least :data:`WEIGHT_THRESHOLD` elements: what tlc compresses. A
    constant also read by another op (a shared scalar, a layer-norm gamma), a bias (a linear
    without one gets a zero vector; a 1.1B LM had 111 of 2048+ elements) or one read by an fp32
    island stays as it is."""
    return [n for n, weights, gathers, others in _large_consts(prog, skip) if weights and not gathers and not others]


def const_bytes(prog) -> int:
    """Bytes of every ``const`` op value of a MIL program as stored (what the weight file holds
    before compression, without its 64-byte alignment)."""
    import numpy as np

    return sum(np.asarray(op.outputs[0].val).nbytes for f in prog.functions.values() for op in f.operations
               if op.op_type == "const" and op.outputs[0].val is not None and np.size(op.outputs[0].val) >= 2)


def activation_stats(mlmodel, calibration: list[dict]) -> dict[str, dict[str, float]]:
    """``{MIL tensor name: {"rmin", "rmax"}}`` over the calibration samples (``{input: array}``),
    the ranges ``coremltools.optimize.coreml.linear_quantize_activations`` calibrates from — measured
    by running the program in tlc's MIL interpreter (coremltools measures them with Core ML predict,
    which needs macOS), inputs and every float op output included, then adjusted around ``concat``
    ops as coremltools does (``_adjust_concat_surrounding_activation_stats``)."""
    import numpy as np
    from coremltools.optimize.coreml.experimental._model_debugger import ModelDebugger
    from coremltools.optimize.coreml.experimental._post_training_quantization import (
        _adjust_concat_surrounding_activation_stats,
    )

    from tlc.runtime import MILInterpreter

    interp = MILInterpreter(mlmodel.package_path, mlmodel=mlmodel)
    stats: dict[str, dict[str, float]] = {}

    def record(name, value):
        a = np.asarray(value)
        if a.dtype.kind != "f" or not a.size:
            return
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        s = stats.setdefault(name, {"rmin": lo, "rmax": hi, "sumsq": 0.0, "n": 0})
        s["rmin"], s["rmax"] = min(s["rmin"], lo), max(s["rmax"], hi)
        s["sumsq"] += float(np.nansum(np.square(a, dtype=np.float64)))
        s["n"] += a.size

    def observer(op, outs):
        for var, value in zip(op.outputs, outs):
            record(var.name, value)

    for feed in calibration:
        for k, v in feed.items():
            record(k, v)
        interp.run(feed, observer=observer)
    for name in interp.outputs:  # coremltools keeps no range for the model's outputs
        stats.pop(name, None)
    _adjust_concat_surrounding_activation_stats(ModelDebugger(mlmodel)._get_concat_op_info(), stats)
    return stats


#: activations whose int8 quantization would have an estimated SNR below this stay float (dB)
MIN_ACTIVATION_SNR_DB = 30.0


def int8_snr_db(stat: dict) -> float:
    """Estimated SNR (dB) of per-tensor symmetric int8 quantization of a tensor with these
    :func:`activation_stats`: signal rms over the uniform-rounding noise ``step / sqrt(12)``,
    ``step = peak / 127``: 20 log10(127 sqrt(12) rms / peak) = 52.9 - 20 log10(peak / rms).
    Outlier channels (BERT's residual stream peaks ~100x its rms: Dettmers et al. 2022,
    "LLM.int8()") put it near 12 dB; the conv nets measured here stay above 33 dB."""
    import math

    peak = max(abs(stat["rmin"]), abs(stat["rmax"]))
    rms = math.sqrt(stat["sumsq"] / stat["n"]) if stat.get("n") else 0.0
    if peak == 0 or rms == 0:
        return float("inf")
    return 20 * math.log10(127 * math.sqrt(12) * rms / peak)


def quantize_activations(mlmodel, calibration: list[dict], skip: tuple[str, ...] = ()):
    """``mlmodel`` with int8 ``quantize``/``dequantize`` pairs inserted where coremltools'
    activation-quantization passes place them (``compression::insert_prefix_quantize_dequantize_pair``,
    ``insert_suffix_quantize_dequantize_pair``, then ``common::dequantize_quantize_pair_elimination``:
    the steps of ``linear_quantize_activations``), from :func:`activation_stats`; ops in ``skip``
    (fp32 islands) keep float activations, and so does every op that reads or writes a tensor whose
    int8 SNR estimate (:func:`int8_snr_db`) is below :data:`MIN_ACTIVATION_SNR_DB`: per-tensor int8
    destroys outlier-dominated activations (MiniLM: 9.9 dB output PSNR with them quantized).
    Returns ``(mlmodel, number of ops kept float for outliers)``. iOS17 opset (coremltools'
    ``quantize`` op)."""
    import coremltools.optimize.coreml as cto
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.converters.mil.frontend.milproto import load as milproto_load
    from coremltools.models import utils as model_utils

    stats = activation_stats(mlmodel, calibration)
    outliers = {k for k, v in stats.items() if int8_snr_db(v) < MIN_ACTIVATION_SNR_DB}
    keep = set(skip)
    for f in mlmodel._mil_program.functions.values():
        for op in f.operations:
            names = {o.name for o in op.outputs}
            for v in op.inputs.values():
                names.update(x.name for x in (v if isinstance(v, (list, tuple)) else [v]))
            if names & outliers:
                keep.add(op.name)
    config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric"),
                                    op_name_configs={n: None for n in keep})
    passes = []
    for name in ("compression::insert_prefix_quantize_dequantize_pair",
                 "compression::insert_suffix_quantize_dequantize_pair"):
        p = PASS_REGISTRY[name]
        p.set_options([PassOption("config", config)])
        p.set_options([PassOption("activation_stats", stats)])
        passes.append(p)
    passes.append(PASS_REGISTRY["common::dequantize_quantize_pair_elimination"])
    out = model_utils._apply_graph_pass(mlmodel, passes, spec_version=_IOS17_SPEC, pymil_load_func=milproto_load.load,
                                        skip_model_load=True)
    return out, len(keep) - len(set(skip))


def embedding_consts(prog, skip: tuple[str, ...] = ()) -> list[str]:
    """Names of the ``const`` ops of at least :data:`WEIGHT_THRESHOLD` elements that are embedding
    tables: read as the ``x`` of a ``gather`` (rows looked up by token id), and otherwise only as a
    :data:`WEIGHT_OPS` weight (an LM head tied to its embedding), by no op in ``skip``. Uniform
    modes leave them dense; compression by target may give them int8 (one scale per row)."""
    return [n for n, _, gathers, others in _large_consts(prog, skip) if gathers and not others]


@dataclass
class Compressed:
    """What :func:`compress_mlmodel` made: the new ``mlmodel``, the MIL const ops whose weights
    were compressed (``weights``, with their ``configs``) and, for ``w8a8``, the ops left with
    float activations because a tensor they touch is outlier-dominated (``float_activation_ops``)."""

    mlmodel: object
    weights: list
    float_activation_ops: int = 0
    configs: dict = dataclasses.field(default_factory=dict)


def compress_mlmodel(mlmodel, compress, skip: tuple[str, ...] = (), calibration: list[dict] | None = None,
                     progress: bool = False, metadata: dict | None = None) -> Compressed:
    """``mlmodel`` (an mlprogram ``MLModel`` tlc emitted: it keeps its MIL program) with weights
    compressed; returns a new ``MLModel`` (``mlmodel`` itself when nothing is compressed) in a
    :class:`Compressed`. ``compress``: a uniform mode (a :data:`MODES` key: every weight
    :func:`weight_consts` selects, outside the ops ``skip`` (fp32 islands), gets
    :func:`mode_config`) or a recipe ``{const op name: WeightConfig}`` (the caller checked the names).
    A mode with ``activations`` (``w8a8``) first quantizes the activations with ranges measured on
    ``calibration`` (:func:`quantize_activations`), as coremltools' docs order it. ``metadata``:
    user-defined keys set on the result (``tlc.compress``). Quiet: coremltools' progress bars and
    warnings are suppressed; ``progress`` prints tlc's own line to stderr every 10% of the weights
    (a 1.1B-parameter palettization runs for minutes)."""
    import io
    import sys
    import warnings

    stderr = sys.stderr

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        kept = 0
        if isinstance(compress, str):
            if MODES[compress].activations:
                mlmodel, kept = quantize_activations(mlmodel, list(calibration or []), skip)
            ios18 = mlmodel.get_spec().specificationVersion >= _IOS18_SPEC
            configs = {n: mode_config(compress, ios18) for n in weight_consts(mlmodel._mil_program, skip)}
        else:
            configs = dict(compress)
        out = mlmodel
        if configs:
            label = compress if isinstance(compress, str) else "recipe"
            tick = _Progress(len(configs), label, stderr) if progress and progress_enabled(stderr) else None
            out = _compress_in_memory(mlmodel, configs, tick)
        for k, v in (metadata or {}).items():  # also when every weight stays dense: a recipe rebuild writes the same
            out.user_defined_metadata[k] = v
        return Compressed(out, list(configs), kept, configs)


class _Progress:
    """``  ... compressing N weights (MODE): P% (k/N, S s)`` every 10% of the weights."""

    def __init__(self, total: int, mode: str, stream):
        import time

        self.total, self.mode, self.stream, self.done, self.t0, self.shown = total, mode, stream, 0, time.perf_counter(), 0

    def __call__(self) -> None:
        import time

        self.done += 1
        pct = 100 * self.done // max(self.total, 1)
        if pct >= self.shown + 10 or self.done == self.total:
            self.shown = pct - pct % 10
            note(f"compressing {self.total} weights ({self.mode}): {pct}% ({self.done}/{self.total}, "
                 f"{time.perf_counter() - self.t0:.0f} s)", self.stream)


#: while :func:`shared_compression` is active: ``{(WeightConfig, weight identity): (weight, constexpr op
#: type, its inputs, its name)}``, what the first program that compressed a weight made of it
_SHARED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("tlc_shared_compression", default=None)


@contextlib.contextmanager
def shared_compression():
    """Within this block, a weight that several programs read (the same model tensor in every
    function of a multifunction build: ``tlc.frontend.lower.shared_weights``) is clustered or
    quantized once: the first program runs coremltools' pass on it, the others get the same
    ``constexpr_*`` op built from the same arrays (no second k-means, no second copy of the
    indices; the package stores them once, :func:`tlc.backends.coreml.multifunction.share_weights`). Keyed by the
    weight's memory (address, shape, dtype, strides) and its config; the record keeps the weight
    alive, so an address is never reused while it is recorded."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def array_identity(a: np.ndarray) -> tuple:
    """``(address, shape, dtype, strides)``: arrays with equal keys are the same memory read the
    same way (views of one model weight in several programs)."""
    return (a.__array_interface__["data"][0], a.shape, a.dtype.str, a.strides)


def _pass(base, tick):
    """coremltools' pass class ``base`` whose ``blockwise_compress`` ticks the progress line and,
    for k-means palettization, takes a weight's tables from :func:`tlc.backends.coreml.weights.kmeans_memo`
    (computed while measuring sensitivity) or computes them on every core
    (:func:`~tlc.backends.coreml.weights.palettize_params`): the same bytes as coremltools' own."""
    from coremltools.optimize.coreml import _quantization_passes as Q

    if base is Q.palettize_weights:
        def blockwise_compress(data, mode, nbits, block_sizes, lut_function=None, cluster_dim=1, channel_axis=None,
                               num_kmeans_workers=1):
            if tick is not None:
                tick()
            if str(mode).upper() == "KMEANS":
                return palettize_params(data, nbits, block_sizes, cluster_dim, channel_axis, take=True)
            return base.blockwise_compress(data, mode, nbits, block_sizes, lut_function, cluster_dim,
                                           channel_axis=channel_axis, num_kmeans_workers=num_kmeans_workers)

        return type("tlc_palettize_weights", (base,), {"blockwise_compress": staticmethod(blockwise_compress)})
    if tick is None:
        return base
    inner = base.blockwise_compress_by_dtype

    def by_dtype(cls, *args, **kw):
        tick()
        return inner(*args, **kw)

    return type("tlc_linear_quantize_weights", (base,), {"blockwise_compress_by_dtype": classmethod(by_dtype)})


def _compress_in_memory(mlmodel, configs: dict, tick=None):
    """Apply coremltools' compression graph passes (``compression::palettize_weights`` and
    ``compression::linear_quantize_weights``, what ``cto.palettize_weights`` /
    ``cto.linear_quantize_weights`` apply), each once with per-op-name configs
    (``OptimizationConfig(op_name_configs=...)``), to the const ops ``configs`` names in
    ``mlmodel``'s program in memory, and serialize it. The public functions first reload the
    program from the package (a second copy of every weight: a 1.1B-parameter LM held three) and
    rerun coremltools' whole pass pipeline; here the program tlc emitted, whose constants are views
    of the model's weights, is compressed in place, and weights another program already compressed
    the same way are taken from it (:func:`shared_compression`). The caller replaces ``mlmodel`` by
    the result: its program is the compressed one afterwards."""
    import coremltools.optimize.coreml as cto
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil._deployment_compatibility import AvailableTarget
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.optimize.coreml import _quantization_passes as Q

    # emission, like coremltools, is imported when weights are compressed, not when MODES (the
    # compress= vocabulary, which tlc's CLI reads for its choices) is
    from .emit import copy_metadata, run_mil_passes, serialize

    prog = mlmodel._mil_program
    func = prog.functions["main"]
    shared = _SHARED.get()
    consts = {op.name: op for op in func.operations if op.op_type == "const" and op.name in configs}
    todo = [n for n in configs if n not in consts]  # (in nested blocks: the pass finds them)
    with func:
        for name, op in consts.items():
            val = op.outputs[0].val
            rec = shared.get((configs[name], array_identity(val))) if shared is not None and isinstance(val, np.ndarray) else None
            if rec is None:
                todo.append(name)
                continue
            _, op_type, inputs, new_name = rec
            new = getattr(mb, op_type)(**inputs, name=new_name, before_op=op)
            func.replace_uses_of_var_after_op(anchor_op=op, old_var=op.outputs[0], new_var=new)
            func.remove_ops([op])
            if tick is not None:
                tick()
    # who reads each weight: after the pass, their input is what replaced it
    readers = {n: next(((c, k) for c in consts[n].outputs[0].child_ops for k, v in c.inputs.items()
                        if v is consts[n].outputs[0]), None) for n in todo if n in consts}
    sources = {n: consts[n].outputs[0].val for n in readers}
    for base, kind in ((Q.palettize_weights, "palettize"), (Q.linear_quantize_weights, "quantize")):
        names = {n: configs[n].op_config() for n in todo if configs[n].kind == kind}
        if names:
            graph_pass = _pass(base, tick)()
            graph_pass.set_options([PassOption("config", cto.OptimizationConfig(op_name_configs=names)),
                                    PassOption("joint_compression", False)])
            graph_pass.apply(prog)
    if shared is not None:
        for n, reader in readers.items():
            if reader is None or not isinstance(sources[n], np.ndarray):
                continue
            new = reader[0].inputs[reader[1]].op
            if new is not None and new.op_type.startswith("constexpr_") and all(
                    v.op is None or v.op.op_type == "const" for v in new.inputs.values()):
                shared[(configs[n], array_identity(sources[n]))] = (
                    sources[n], new.op_type, {k: v.val for k, v in new.inputs.items()}, new.name)
    spec = mlmodel.get_spec()
    target = AvailableTarget(spec.specificationVersion)
    run_mil_passes(prog, target)  # tidy what the pass leaves (dead consts), validate
    out = serialize(prog, target)
    copy_metadata(spec, out)
    return out


__all__ = ["MODES", "WEIGHT_OPS", "WEIGHT_THRESHOLD", "Mode", "weight_consts", "embedding_consts", "mode_config",
           "const_bytes", "activation_stats", "int8_snr_db", "quantize_activations", "Compressed",
           "compress_mlmodel", "shared_compression", "array_identity", "MIN_ACTIVATION_SNR_DB", "GROUP_SIZE"]
