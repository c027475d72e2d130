"""The op table: one row per op, every fact about an op in one place.

A row (:class:`OpDef`) holds:

* ``infer(in_types, attrs) -> [TensorType, ...]`` — shape/dtype rule; raises :class:`IRError`.
* ``numpy(attrs, *arrays) -> array | tuple`` — the reference kernel. The same kernel executes tlc's
  IR (:mod:`tlc.runtime`) and, where MIL semantics agree, loaded MIL programs.
* ``emit_mil(ctx, attrs, inputs, name) -> Var | tuple`` — coremltools MIL Builder emission, or
  ``None`` when MIL cannot express the op (it can then only run in a fallback runtime).
* ``ane(in_types, out_types, attrs) -> str | None`` — ``None`` if the op is predicted to run on the
  Apple Neural Engine, else the reason (rules and sources: ../shared/ane-rules.md).
* ``ane_efficiency(in_types, out_types, attrs) -> [reason, ...]`` — the layout rules an op that
  runs on the ANE still breaks (misaligned last axis, Linear on (B, S, C), fused SDPA, rank-5
  tensors; Apple's neural_engine_rules.md). ``ane`` answers *eligibility*, this *efficiency*; both
  return :class:`Reason` strings naming a rule of :data:`ANE_RULES` (``tlc lint``,
  :mod:`tlc.check.lint`, groups by it).
* ``emit_coreai(ctx, attrs, inputs, node) -> Value | list`` — the same op for Apple's Core AI
  (``coreai.authoring`` ops on ``ctx.ca``, :mod:`tlc.backends.coreai.emit`), or ``None`` when tlc has no
  Core AI form for it yet (the build then names the op); ``coreai_limit(in_types, out_types,
  attrs) -> str | None`` says why one instance has none (a scatter mode Core AI lacks, ...);
  :func:`coreai_reason` combines the two.
* ``flops(in_types, out_types, attrs) -> int`` — estimated floating-point operations (a multiply
  and an add count as 2).
* ``mil_inputs`` / ``from_mil`` — how a loaded MIL op of the same name maps onto this row: the MIL
  input names that are tensor inputs of the kernel (in order), and an optional adapter
  ``from_mil(vals) -> (arrays, attrs)`` for MIL attributes that need translating (``pad_type``,
  slice masks, ...). The MIL interpreter (:mod:`tlc.runtime.mil_interpreter`) runs loaded programs
  with the same kernels through this mapping.
* ``torch(attrs, *tensors) -> tensor | tuple`` — the same semantics as ``numpy`` with torch ops, run
  by the torch-device executor (:mod:`tlc.runtime.torch_executor`) on ``cuda`` / ``mps`` / CPU.
  Inputs are tensors of the IR dtypes on one device; the result has the declared output dtype on the
  same device. A torch kernel never reads host data while running (no ``.item()``, no tensors built
  from NumPy), so a run can be captured as a CUDA graph. fp16 inputs are computed as torch computes
  them on the device, not with the NumPy kernels' "widen, compute, round once" rule (see
  :func:`run_kernel`): elementwise ops agree (torch's CUDA kernels widen fp16 to fp32 internally),
  matmul/conv/attention may differ by a few fp16 ulps (tensor cores, fp16 partial reductions).
  ``host_only`` (a reason) marks a row with no torch kernel; every row has one or the other.
* ``nondeterministic`` — the op draws random values (``random_*``): passes never merge (cse) or
  fold it, and numeric checks compare its distribution, not its values.
* ``half_attrs`` — ``{attr: kind}`` for float attributes an fp16 program holds in fp16 (the MIL
  op takes them in the input's dtype) and how ``precision`` may change one that fp16 cannot hold
  (:func:`tlc.passes.fp16_program.fp16_attr_fix`): ``"epsilon"`` (a norm/rsqrt/log epsilon: raised
  to fp16's smallest normal), ``"bound"`` (a clamp bound: saturated to +/-65504). Any other float
  attribute that over- or underflows in fp16 keeps its op in fp32.
* ``scale`` — how the op treats a positive power-of-two scale on its float tensors
  (:class:`PositiveScale`: ``commutes`` / ``product`` / ``invariant``, or None: it does not
  commute); ``precision::rescale`` (:mod:`tlc.passes.rescale`) reads it.
* ``interpreter_only`` — a MIL op only tlc's MIL interpreter meets (other converters' packages):
  the IR never holds it, so it has no ``infer`` rule, emission or device kernel
  (:mod:`tlc.ops.mil_only`); ``emit_mil is None`` does not make it a fallback op.

Op names and attribute names follow coremltools' MIL op definitions
(coremltools/converters/mil/mil/ops/defs/iOS15..iOS18) wherever MIL has the op.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
from typing import Any, Callable, Mapping, Sequence

from ..errors import IRError
from ..dtypes import TensorType
from .scale import COMMUTES, PositiveScale  # noqa: F401  (re-exported: tlc.ops.PositiveScale)

Infer = Callable[[Sequence[TensorType], Mapping[str, Any]], list]
Rule = Callable[[Sequence[TensorType], Sequence[TensorType], Mapping[str, Any]], Any]

#: ANE limits shared by all ops (../shared/ane-rules.md): rank <= 5 (Apple neural_engine_rules.md
#: L7-9; apple/coremltools#2536), dimension sizes (FluidInference/FluidAudio#121,
#: microsoft/onnxruntime#19543).
ANE_MAX_RANK = 5
ANE_MAX_DIM = 65536
ANE_MAX_SPATIAL = 16384
#: The ANE wants the last axis of a tensor aligned to 64 bytes (Apple neural_engine_rules.md L23):
#: 32 fp16 values.
ANE_ALIGN_BYTES = 64

#: Where Apple's Neural Engine authoring rules live; ``L..`` references below are its lines, as
#: quoted in ../shared/ane-rules.md.
APPLE_RULES = "apple/coreai-models skills/skills/model-authoring/references/neural_engine_rules.md"
APPLE = "Apple neural_engine_rules.md"  # short form, in reason strings


#: How much a rule's source can be trusted, strongest first (../shared/ane-rules.md): ``documented``
#: (Apple's own documentation or code, or a fact of the format: mlprogram has no complex dtype),
#: ``observed`` (an Apple engineer or a maintainer reporting what a device did, a runtime log),
#: ``unverified`` (a third-party page, some of which warn they may be wrong).
EVIDENCE = ("documented", "observed", "unverified")


@dataclass(frozen=True)
class AneRule:
    """One named ANE rule: ``kind`` is ``"eligibility"`` (an op breaking it does not run on the
    ANE: Core ML places it on the GPU/CPU) or ``"efficiency"`` (it runs, but breaks a layout rule
    that costs speed or memory); ``summary`` says what the rule is, ``source`` where it comes from
    (../shared/ane-rules.md gives the full list), ``evidence`` how far that source can be trusted
    (one of :data:`EVIDENCE`; the placement report gives residency under each level)."""

    id: str
    kind: str
    summary: str
    source: str
    evidence: str = "documented"


#: Every rule an ``ane`` or ``ane_efficiency`` reason can name (:attr:`Reason.rule`). Apple's own
#: document wins where sources disagree (../shared/ane-rules.md, "Apple's own rules").
ANE_RULES: dict[str, AneRule] = {r.id: r for r in (
    AneRule("dtype", "eligibility", "tensors must be float16 (int8/int16 for some weights); fp32 falls back to GPU/CPU",
            f"{APPLE_RULES} L7-9; hollance/neural-engine docs/16-bit.md"),
    AneRule("rank", "eligibility", f"tensor rank <= {ANE_MAX_RANK}", f"{APPLE_RULES} L7-9; apple/coremltools#2536"),
    AneRule("static_shape", "eligibility", "fully static shapes (one function per shape)",
            f"{APPLE_RULES} L7-9, L23; Apple Developer Forums thread 724930"),
    AneRule("size", "eligibility", f"dimensions <= {ANE_MAX_DIM}, the two last <= {ANE_MAX_SPATIAL}",
            "FluidInference/FluidAudio#121; microsoft/onnxruntime#19543", "observed"),
    AneRule("complex", "eligibility", "no complex values", "hollance/neural-engine docs/16-bit.md"),
    AneRule("op", "eligibility", "the op has no Core ML (MIL) form in tlc: it runs in tlc's fallback runtime",
            "the op's row (emit_mil is None); docs/coverage.md"),
    AneRule("dilated_conv", "eligibility", "no dilated convolution", "hollance/neural-engine docs/unsupported-layers.md "
            "(marked \"possibly wrong\")", "unverified"),
    AneRule("pool_window", "eligibility", "pooling kernel <= 13 and stride <= 2", "hollance/neural-engine issues #1, "
            "#2 and docs/unsupported-layers.md (marked \"possibly wrong\")", "unverified"),
    AneRule("upsample_scale", "eligibility", "upsampling by at most 2x", "hollance/neural-engine "
            "docs/unsupported-layers.md (marked \"possibly wrong\")", "unverified"),
    AneRule("gather", "eligibility", "no gather / scatter (indexed memory access)", "hollance/neural-engine "
            "docs/unsupported-layers.md (marked \"possibly wrong\")", "unverified"),
    AneRule("undocumented", "eligibility", "an op no source documents on the ANE (sort, scan, random sampling) is "
            "predicted off it", "absence of evidence: ../shared/ane-rules.md lists none", "unverified"),
    AneRule("last_axis_alignment", "efficiency", f"the last axis spans a multiple of {ANE_ALIGN_BYTES} bytes",
            f"{APPLE_RULES} L23"),
    AneRule("rank5", "efficiency", "no rank-5 tensors (ANE tensors are (B, C, H, W); 5-D attention tensors "
            "are split or folded)", "pytorch/executorch#15833, PR #16144 (SDPA decomposed to avoid 5-D tensors)",
            "observed"),
    AneRule("linear_bsc", "efficiency", "a projection over channels is a 1x1 Conv2d on (B, C, 1, S), not a "
            "Linear on (B, S, C)", f"{APPLE_RULES} L353; apple/ml-ane-transformers"),
    AneRule("fused_sdpa", "efficiency", "attention is computed per head (no fused SDPA path on the ANE)",
            f"{APPLE_RULES} L366-370"),
    AneRule("head_batched_matmul", "efficiency", "attention matmuls per head on (B, C/h, 1, S) slices, not "
            "batched over a (B, h, S, d) head axis", f"{APPLE_RULES} L366-370; apple/ml-ane-transformers"),
)}


class Reason(str):
    """A reason string (what ``ane`` / ``ane_efficiency`` rules return) that also names its rule:
    ``rule`` is a key of :data:`ANE_RULES`. A plain ``str`` reason from an op's own ``ane`` rule
    counts as rule ``"op"`` (:func:`rule_of`)."""

    rule: str

    def __new__(cls, text: str, rule: str = "op"):
        if rule not in ANE_RULES:
            raise IRError(f"unknown ANE rule {rule!r}")
        s = super().__new__(cls, text)
        s.rule = rule
        return s

    def __reduce__(self):  # copy / deepcopy / pickle keep the rule
        return (Reason, (str(self), self.rule))


def rule_of(reason: str) -> AneRule:
    """The :class:`AneRule` a reason string names (``"op"`` for a plain string)."""
    return ANE_RULES[getattr(reason, "rule", "op")]


def ane_common(in_types: Sequence[TensorType], out_types: Sequence[TensorType], attrs) -> str | None:
    """Eligibility limits every op shares (sources: ../shared/ane-rules.md): no complex values (the
    ANE computes in float16), fully static shapes (Apple L7-9; unbounded dynamic shapes stay off
    the ANE), rank <= 5 (Apple L7-9), dimension limits. Returns the first :class:`Reason` or None
    (:func:`ane_common_all` gives every one)."""
    return next(ane_common_all(in_types, out_types), None)


def ane_common_all(in_types: Sequence[TensorType], out_types: Sequence[TensorType]):
    """Every shared limit (:func:`ane_common`) the tensors break, one :class:`Reason` per rule, in
    the order :func:`ane_common` checks them."""
    ts = list(in_types) + list(out_types)
    seen: set[str] = set()
    for t in ts:
        if t.dtype == "complex64" and "complex" not in seen:
            seen.add("complex")
            yield Reason("complex64 tensor: ANE computes in float16 (int8 for some weights) and Core ML mlprogram "
                         "has no complex dtype (hollance/neural-engine docs/16-bit.md)", "complex")
        if not t.is_static and "static_shape" not in seen:
            seen.add("static_shape")
            yield Reason(f"data-dependent shape [{', '.join(map(str, t.shape))}]; the ANE needs fully static shapes "
                         f"({APPLE} L7-9; Apple Developer Forums thread 724930)", "static_shape")
    for t in ts if "static_shape" not in seen else ():
        if t.rank > ANE_MAX_RANK and "rank" not in seen:
            seen.add("rank")
            yield Reason(f"rank {t.rank} > {ANE_MAX_RANK} (ANE tensors have rank <= 5: {APPLE} L7-9; "
                         f"apple/coremltools#2536)", "rank")
        if "size" in seen:
            continue
        if t.shape and max(t.shape) > ANE_MAX_DIM:
            seen.add("size")
            yield Reason(f"dimension {max(t.shape)} > {ANE_MAX_DIM} (ANE size limit; FluidInference/FluidAudio#121)",
                         "size")
        elif t.rank >= 3 and max(t.shape[-2:]) > ANE_MAX_SPATIAL:
            seen.add("size")
            yield Reason(f"spatial size {max(t.shape[-2:])} > {ANE_MAX_SPATIAL} (ANE size limit; "
                         f"microsoft/onnxruntime#19543)", "size")


def ane_dtype(in_types: Sequence[TensorType], out_types: Sequence[TensorType]) -> str | None:
    """The ANE computes in float16 (int8/int16 for some weights; Apple neural_engine_rules.md
    L7-9): any other tensor dtype keeps an op off it (fp32 falls back to the GPU/CPU). Also
    hollance/neural-engine docs/16-bit.md; int32 tensors force casts on the CPU
    (apple/coremltools#2365). Returns a :class:`Reason` (rule ``dtype``) or None."""
    for t in list(in_types) + list(out_types):
        if t.dtype != "fp16":
            why = ("int32 tensors force casts on the CPU (apple/coremltools#2365)" if t.dtype == "int32"
                   else f"the ANE computes in float16 ({APPLE} L7-9)")
            return Reason(f"{t.dtype} tensor: {why}; Core ML runs this op on the GPU/CPU", "dtype")
    return None


def ane_layout(in_types: Sequence[TensorType], out_types: Sequence[TensorType], attrs) -> list[str]:
    """Efficiency rules every op shares (it runs on the ANE but wastes time or memory), as
    :class:`Reason` strings: an output whose last axis does not span a multiple of 64 bytes
    (Apple neural_engine_rules.md L23; rank >= 2 outputs), a rank-5 tensor (ANE tensors are
    (B, C, H, W): pytorch/executorch#15833)."""
    out = []
    for t in out_types:
        if t.rank >= 2 and t.is_static and t.dtype in ("fp16", "fp32"):
            nbytes = t.shape[-1] * (2 if t.dtype == "fp16" else 4)
            if nbytes % ANE_ALIGN_BYTES:
                per = ANE_ALIGN_BYTES // (2 if t.dtype == "fp16" else 4)
                out.append(Reason(f"last axis {t.shape[-1]} ({nbytes} B) is not a multiple of {ANE_ALIGN_BYTES} B "
                                  f"({APPLE} L23): pad it to {-(-t.shape[-1] // per) * per}",
                                  "last_axis_alignment"))
                break
    if any(t.rank == 5 for t in list(in_types) + list(out_types)):
        out.append(Reason("rank-5 tensor: ANE tensors are (B, C, H, W); fold or split the extra axis "
                          "(pytorch/executorch#15833)", "rank5"))
    return out


def flops_elementwise(in_types, out_types, attrs) -> int:
    """One operation per output element."""
    return sum(t.size for t in out_types)


def flops_none(in_types, out_types, attrs) -> int:
    """No arithmetic (data movement and constants)."""
    return 0


@dataclass(frozen=True)
class OpDef:
    """One row of the op table (see module docstring for each field's contract)."""

    name: str
    infer: Infer
    numpy: Callable[..., Any]
    emit_mil: Callable[..., Any] | None
    ane: Rule
    flops: Rule
    doc: str = ""
    mil_inputs: tuple[str, ...] = ("x",)
    from_mil: Callable[[dict], tuple[list, dict]] | None = None
    torch: Callable[..., Any] | None = None
    host_only: str | None = None
    nondeterministic: bool = False
    half_attrs: Mapping[str, str] = field(default_factory=dict)
    interpreter_only: bool = False
    is_noop: Callable[[Mapping, Sequence[TensorType]], bool] | None = None
    elementwise: str | None = None
    ane_efficiency: Callable[[Sequence[TensorType], Sequence[TensorType], Mapping[str, Any]], list] = \
        lambda i, o, a: []
    emit_coreai: Callable[..., Any] | None = None
    coreai_limit: Rule | None = None
    scale: PositiveScale | None = None
    ane_reasons: Callable[[Sequence[TensorType], Sequence[TensorType], Mapping[str, Any]], list] = \
        lambda i, o, a: []


OPS: dict[str, OpDef] = {}


def register(
    name: str,
    *,
    infer: Infer,
    numpy: Callable[..., Any],
    emit_mil: Callable[..., Any] | None,
    ane: Rule | None = None,
    flops: Rule = flops_elementwise,
    doc: str = "",
    mil_inputs: tuple[str, ...] = ("x",),
    from_mil: Callable[[dict], tuple[list, dict]] | None = None,
    ane_dtype_exempt: tuple[int, ...] = (),
    torch: Callable[..., Any] | None = None,
    host_only: str | None = None,
    nondeterministic: bool = False,
    half_attrs: Mapping[str, str] | None = None,
    interpreter_only: bool = False,
    is_noop: Callable[[Mapping, Sequence[TensorType]], bool] | None = None,
    elementwise: str | None = None,
    efficiency: Rule | None = None,
    emit_coreai: Callable[..., Any] | None = None,
    coreai_limit: Rule | None = None,
    scale: PositiveScale | None = None,
) -> OpDef:
    """Add a row to :data:`OPS` (built by :func:`make_row`); raises :class:`IRError` for a name
    registered twice. Every row should give a ``torch`` kernel or a ``host_only`` reason
    (tests/test_gpu_runtime.py checks)."""
    if name in OPS:
        raise IRError(f"op {name!r} registered twice")
    OPS[name] = d = make_row(name, infer=infer, numpy=numpy, emit_mil=emit_mil, ane=ane, flops=flops, doc=doc,
                             mil_inputs=mil_inputs, from_mil=from_mil, ane_dtype_exempt=ane_dtype_exempt,
                             torch=torch, host_only=host_only, nondeterministic=nondeterministic,
                             half_attrs=half_attrs, interpreter_only=interpreter_only, is_noop=is_noop,
                             elementwise=elementwise, efficiency=efficiency, emit_coreai=emit_coreai,
                             coreai_limit=coreai_limit, scale=scale)
    return d


def make_row(name: str, *, infer: Infer, numpy: Callable[..., Any], emit_mil: Callable[..., Any] | None,
             ane: Rule | None = None, flops: Rule = flops_elementwise, doc: str = "",
             mil_inputs: tuple[str, ...] = ("x",), from_mil: Callable[[dict], tuple[list, dict]] | None = None,
             ane_dtype_exempt: tuple[int, ...] = (), torch: Callable[..., Any] | None = None,
             host_only: str | None = None, nondeterministic: bool = False,
             half_attrs: Mapping[str, str] | None = None, interpreter_only: bool = False,
             is_noop: Callable[[Mapping, Sequence[TensorType]], bool] | None = None,
             elementwise: str | None = None, efficiency: Rule | None = None,
             emit_coreai: Callable[..., Any] | None = None, coreai_limit: Rule | None = None,
             scale: PositiveScale | None = None) -> OpDef:
    """An :class:`OpDef` (not added to :data:`OPS`). Its ``ane`` rule is :func:`ane_common`, then
    the op's own ``ane`` rule (the more specific reason), then :func:`ane_dtype` over the tensors
    except the inputs at positions ``ane_dtype_exempt`` (inputs that emission turns into fp16,
    e.g. a bool mask); its ``ane_reasons`` every eligibility rule broken, not only the first (the
    placement report weighs them by evidence). Its ``ane_efficiency`` rule is :func:`ane_layout`
    plus the op's own ``efficiency`` rule (a reason, a list of them, or None)."""

    def ane_rule(i, o, a, _extra=ane):
        return (ane_common(i, o, a) or (_extra(i, o, a) if _extra else None)
                or ane_dtype([t for k, t in enumerate(i) if k not in ane_dtype_exempt], o))

    def ane_reasons(i, o, a, _extra=ane):
        out = list(ane_common_all(i, o))
        static = all(t.is_static for t in list(i) + list(o))
        for r in ((_extra(i, o, a) if _extra and static else None),
                  ane_dtype([t for k, t in enumerate(i) if k not in ane_dtype_exempt], o)):
            if r:
                out.append(r)
        return out

    def efficiency_rule(i, o, a, _extra=efficiency):
        own = _extra(i, o, a) if _extra else None
        return ([own] if isinstance(own, str) else list(own or [])) + ane_layout(i, o, a)

    return OpDef(name, infer, numpy, emit_mil, ane_rule, flops, doc or (numpy.__doc__ or ""), tuple(mil_inputs), from_mil,
                 torch, host_only, nondeterministic, dict(half_attrs or {}), interpreter_only, is_noop,
                 elementwise, efficiency_rule, emit_coreai, coreai_limit, scale, ane_reasons)


def mil_attr(v: Any) -> Any:
    """A MIL attribute value as an IR attribute: int/bool arrays -> tuples, 0-d -> Python scalars."""
    if isinstance(v, np.ndarray):
        if v.ndim == 0:
            return v.item()
        if v.dtype.kind in "iub":
            return tuple(v.tolist())
        return v
    if isinstance(v, np.generic):
        return v.item()
    return v


def args_from_mil(row: "OpDef", vals: dict) -> tuple[list, dict]:
    """Kernel arguments for a loaded MIL op: ``row.from_mil`` if the row has one, else tensor
    inputs named by ``row.mil_inputs`` (absent optional ones skipped) and the rest as attrs."""
    if row.from_mil is not None:
        return row.from_mil(vals)
    arrays = [vals[n] for n in row.mil_inputs if vals.get(n) is not None]
    attrs = {k: mil_attr(v) for k, v in vals.items() if k not in row.mil_inputs and v is not None}
    return arrays, attrs


def bind_kernel(row: OpDef, attrs, in_dtypes, out_dtypes) -> Callable[[Sequence[np.ndarray]], tuple]:
    """:func:`run_kernel` resolved once for inputs of ``in_dtypes`` (NumPy dtypes): returns
    ``call(arrays) -> tuple of arrays`` that applies the same fp16 rule without re-deciding it per
    call (executors bind each node once per graph). ``call`` does not set ``np.errstate``: the
    caller ignores floating-point errors around its loop, as :func:`run_kernel` does."""
    fn = row.numpy
    out_dtypes = tuple(out_dtypes)
    widen = any(np.dtype(d) == np.float16 for d in in_dtypes)

    def call(arrays):
        if widen:
            arrays = [a.astype(np.float32) if a.dtype == np.float16 else a for a in arrays]
        res = fn(attrs, *arrays)
        if not isinstance(res, tuple):
            res = (res,)
        return tuple(np.asarray(r).astype(dt, copy=False) for r, dt in zip(res, out_dtypes))

    return call


def to_float16(a: np.ndarray) -> np.ndarray:
    """``a.astype(np.float16)``, bit for bit (``a`` itself when it is fp16 already); through torch's vectorized conversion when torch is
    already imported (never imported for this): 25M values in 18 ms instead of NumPy 2.4's 67 ms
    (f32->f16; measured side by side on this machine, quiet)."""
    t = sys.modules.get("torch")
    a = np.asarray(a)
    if a.dtype == np.float16:
        return a  # already fp16: no copy (an fp16 model's weights are read as they are)
    if t is not None and a.dtype == np.float32 and a.size >= 1 << 16:
        return t.from_numpy(np.ascontiguousarray(a)).half().numpy().reshape(a.shape)
    with np.errstate(over="ignore"):
        return a.astype(np.float16)


def to_float32(h: np.ndarray) -> np.ndarray:
    """``h.astype(np.float32)`` (exact). NumPy on purpose: torch's conversion is faster alone
    (25M values: 30 vs 50 ms) but inside the MIL interpreter's first run, widening ResNet-50's
    weights took 0.42 s through torch and 0.18 s through NumPy (measured side by side)."""
    return np.asarray(h).astype(np.float32)


def round_fp16(x: np.ndarray) -> np.ndarray:
    """``x`` (float32) rounded to the nearest fp16 value, kept in float32: the same values as
    ``x.astype(np.float16).astype(np.float32)`` (round to nearest even; +/-inf above 65504; fp16
    subnormals; NaN), bit for bit (tests/test_precision_loop.py). Normal-range values are rounded
    on their float32 bits (add half an fp16 ulp, ties to even, clear the 13 low bits); the few
    outside fp16's normal range (|x| < 2^-14, |x| > 65504, inf, NaN) go through NumPy's own
    conversion. Split over threads (:func:`tlc.ops.parallel.parallel_for`). NumPy 2.4 converts
    f32->f16 at ~2.5 ns and f16->f32 at ~1.6 ns per element; this takes ~1.4 ns on one thread
    (4M values, measured). Returns a new array."""
    from .parallel import NUM_THREADS, TILE, parallel_for

    x = np.asarray(x, dtype=np.float32)
    if x.size < 8 * TILE or NUM_THREADS == 1:
        return _round_fp16_block(x).reshape(x.shape)
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty_like(flat)

    def work(a, b):
        out[a:b] = _round_fp16_block(flat[a:b])

    parallel_for(work, flat.size, grain=4 * TILE)  # one range per thread: per-call overhead, not cache, dominates
    return out.reshape(x.shape)


def _round_fp16_block(x: np.ndarray) -> np.ndarray:
    """:func:`round_fp16` of one flat block. Non-zero values below fp16's normal range are rounded
    one by one when they are few, else in bulk to multiples of 2^-24 (exact float32 arithmetic);
    values above 65504, inf and NaN one by one (zeros need nothing: half of a ReLU's output)."""
    x = np.ascontiguousarray(x).reshape(-1)
    u = x.view(np.uint32)
    r = u >> np.uint32(13)
    r &= np.uint32(1)
    r += np.uint32(0xFFF)
    r += u
    r &= np.uint32(0xFFFFE000)
    out = r.view(np.float32)
    mag = u & np.uint32(0x7FFFFFFF)
    big = mag > np.uint32(0x477FEFFF)  # rounds past 65504, or inf / NaN
    mag -= np.uint32(1)  # zeros wrap around: the bit rounding already gives +/-0 for them
    tiny = mag < np.uint32(0x38800000 - 1)  # 0 < |x| < 2^-14
    with np.errstate(over="ignore", invalid="ignore"):
        if tiny.any():
            if np.count_nonzero(tiny) * 16 < x.size:
                idx = np.flatnonzero(tiny)
                out[idx] = x[idx].astype(np.float16).astype(np.float32)
            else:
                alt = x * np.float32(2.0 ** 24)
                np.rint(alt, out=alt)
                alt *= np.float32(2.0 ** -24)
                np.copyto(out, alt, where=tiny)
        if big.any():
            idx = np.flatnonzero(big)
            out[idx] = x[idx].astype(np.float16).astype(np.float32)
    return out


def run_kernel(row: OpDef, attrs, arrays, out_dtypes) -> tuple:
    """Call ``row``'s NumPy kernel with tlc's fp16 rule, shared by every executor.

    fp16 inputs are widened to fp32, the kernel computes in fp32, and each result is rounded once
    to its declared dtype (``out_dtypes``, NumPy dtypes). Elementwise ops are then exactly a
    correctly rounded fp16 unit; matmul/conv/reductions accumulate in fp32 before rounding; values
    above 65504 become +/-inf as on device. (Rationale and sources: runtime/mil_interpreter.py.)
    """
    with np.errstate(all="ignore"):  # inf/NaN are results here (fp16 overflow shows as on device)
        return bind_kernel(row, attrs, [a.dtype for a in arrays], out_dtypes)(arrays)


def elementwise_ops(kind: str | None = None) -> frozenset[str]:
    """Names of the rows whose ``elementwise`` trait is ``kind`` (``"unary"``: one tensor input,
    ``"binary"``: two broadcasting inputs, ``"ternary"``: ``select``), or any of them when None.
    Passes that treat every elementwise op alike derive their op sets from this."""
    return frozenset(n for n, r in OPS.items() if r.elementwise and (kind is None or r.elementwise == kind))


__all__ = ['EVIDENCE', 'PositiveScale', 'COMMUTES', 'ane_common_all', 'Infer', 'Rule', 'ANE_MAX_RANK', 'ANE_MAX_DIM', 'ANE_MAX_SPATIAL', 'ANE_ALIGN_BYTES', 'APPLE_RULES', 'APPLE', 'AneRule', 'ANE_RULES', 'Reason', 'rule_of', 'ane_common', 'ane_dtype', 'ane_layout', 'flops_elementwise', 'flops_none', 'OpDef', 'OPS', 'register', 'make_row', 'mil_attr', 'args_from_mil', 'bind_kernel', 'to_float16', 'to_float32', 'round_fp16', 'run_kernel', 'elementwise_ops']
