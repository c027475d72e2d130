"""Precision passes: cast the graph to fp16, keeping fp32 islands where fp16 is unsafe.

coremltools' fp16 conversion only checks constants (apple/coremltools#2110, #2603; PR #2669
shows transformers turning into NaN), so activations that overflow fp16 surface on device. tlc
measures instead:

1. **Range analysis** runs the fp32 graph in the NumPy runtime on the calibration inputs (the
   example inputs plus any the user adds) and records max |x| of every value.
2. **Local fp16 error**: each op is re-run on its fp16-rounded inputs under the device's fp16 rule
   (:func:`tlc.ops.run_kernel`) and compared with its fp32 result; for ``conv`` / ``linear``
   with a constant weight the input/weight part of that error is estimated from per-channel
   statistics instead (:func:`_weighted_sum_error_sq`; 0.85-1.3x of the re-run on the spine
   models, one ConvNeXt op 3.2x; tests/test_precision.py), which halves the analysis on conv nets.
3. **Rescaling** (:mod:`tlc.passes.rescale`): regions of positively homogeneous ops whose values
   lie outside fp16's safe range are held as x * 2^-e, the scale folded into the constants that
   feed them and undone where that is exact (a normalization, or one multiply at a graph output).
4. **Islands, proposed and required** (:func:`propose_islands`): an op fp16 cannot compute at all
   (a value beyond 65504, an integer result that fp16 rounding changes, an output below fp16's
   normal range) is *required* in fp32; an op with a value above :data:`SAFE_MAX` (half of
   fp16's 65504: a value may double once more before it overflows) or an fp16 error (judged
   against the scale of what it flows into, see :func:`analyze`) over :data:`ERROR_FACTOR` times
   the graph's median and over :data:`ERROR_FLOOR` is *proposed*: the closed loop of
   ``tlc.build`` (:mod:`tlc.check.calibrate`) starts without the proposals and keeps one only
   where the whole program needs it. Each island carries its reason.

Before that, ``precision::clamp_sentinels`` replaces constants at or beyond +/-1e30 (attention
masks built from ``torch.finfo(torch.float32).min``, apple/coremltools PR #2669) with
+/-``MASK_FILL`` (30000): finite in fp16, and exp(-30000 - m) is exactly 0 in both precisions, so
the masked softmax is unchanged.

The fp16 program itself — casts where fp16 and fp32 meet, constants converted, and the check of
the attributes and constants it holds — is built by :mod:`tlc.passes.fp16_program`.

``precision::mixed`` run as a pass takes its calibration inputs from
its ``calibration`` option (a list of feed dicts); :func:`plan_mixed` +
:func:`apply_plan` are the same steps for callers that hold the inputs themselves and may add
islands (``tlc.check.calibrate``'s closed loop). The decisions are recorded in
``graph.meta["tlc.islands"]`` (``{node name: reason}``).
"""
from __future__ import annotations

import types
import warnings
from dataclasses import dataclass, field

import numpy as np

from tlc.errors import IRError
from tlc.ir import DTYPES, Graph, Node, Value, replace
from tlc.ops import get_op, round_fp16, run_kernel, to_float16, to_float32
from tlc.ops.linalg import MASK_FILL

from .fp16_program import FLOAT, FP16_MAX, fallback_only, plan_fp16_constants, to_half
from .partition import node_flops
from .registry import register_pass
from .rescale import FP16_NORMAL_MIN, SAFE_MAX, rescale

ERROR_FACTOR = 50.0
ERROR_FLOOR = 1e-3
SENTINEL = 1e30


def _has_sentinel(v: np.ndarray) -> bool:
    """Whether ``v`` holds a value with |x| >= :data:`SENTINEL` (in fp16 only +/-inf can), read
    in chunks of 1M values with no temporary the size of a weight (NumPy's fp16 max/min is ~10x
    slower than an integer test on the bits: 2.6 s for a 0.2B-parameter model, measured)."""
    flat = v.reshape(-1)
    step = 1 << 20
    if v.dtype == np.float16:
        bits = flat.view(np.uint16)
        return any(bool(((bits[i:i + step] & 0x7FFF) == 0x7C00).any()) for i in range(0, bits.size, step))
    return any(max(float(flat[i:i + step].max()), -float(flat[i:i + step].min())) >= SENTINEL
               for i in range(0, flat.size, step))


@register_pass("precision::clamp_sentinels")
def clamp_sentinels(g: Graph) -> Graph:
    """Replace mask sentinels (|c| >= 1e30, e.g. torch.finfo(float32).min) in float constants by
    +/-MASK_FILL.

    Given:  %m = const([0, -3.4e38]); %s = add(%scores, %m)
    Result: %m = const([0, -30000]);  %s = add(%scores, %m)
    """
    nodes, changed = [], False
    for n in g.nodes:
        v = n.attrs.get("val") if n.op == "const" else None
        if v is not None and v.dtype.kind == "f" and v.size and _has_sentinel(v):
            nv = np.where(v >= SENTINEL, -MASK_FILL, np.where(v <= -SENTINEL, MASK_FILL, v)).astype(v.dtype)
            nv.flags.writeable = False
            n = Node("const", (), n.outputs, types.MappingProxyType({"val": nv}), n.name, n.loc)
            changed = True
        nodes.append(n)
    return replace(g, nodes=tuple(nodes)) if changed else g


def _rms(a: np.ndarray) -> float:
    """Root mean square (a BLAS dot product in fp32: ~3x faster than squaring in float64, and
    its ~1e-4 relative error is far below what the island thresholds distinguish)."""
    f = np.ravel(np.asarray(a, dtype=np.float32))
    return float(np.sqrt(max(float(np.dot(f, f)), 0.0) / f.size)) if f.size else 0.0


#: Mean relative variance of rounding a float32 value to fp16: round-to-nearest leaves an error
#: uniform on +/- half an ulp (ulp = 2^(e-10) for |x| in [2^e, 2^(e+1))), variance ulp^2 / 12;
#: averaged over log-uniformly distributed mantissas E[1 / (1+f)^2] = 0.375 / ln 2, so
#: E[(r(x) - x)^2] / x^2 = 2^-20 / 12 * 0.541 = 4.3e-8.
KAPPA_FP16 = 2.0 ** -20 / 12 * (0.375 / np.log(2))


def _weighted_sum_error_sq(n: Node, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> float:
    """Estimated mean squared error that rounding the input and the const weight (and bias) to
    fp16 adds to a ``conv`` / ``linear`` output, without re-running it: y_o = sum_c W[o,c] x_c
    gets sum_c W[o,c]^2 (var dx_c + x_c^2 var dW/W) = 2 KAPPA sum_c W[o,c]^2 mean(x_c^2)
    (independent rounding errors; per input channel, kernel taps summed; conv groups respected).
    Cancellation (y small next to its terms) shows up as it does in a re-run. Mean over outputs."""
    if n.op == "linear":
        m = np.mean(np.square(x.reshape(-1, x.shape[-1]), dtype=np.float32), axis=0)  # [C]
        per_out = np.square(w, dtype=np.float32) @ m  # [O]
    else:
        g = n.attrs.get("groups", 1)
        m = np.mean(np.square(x, dtype=np.float32), axis=(0,) + tuple(range(2, x.ndim)))  # [C]
        s = np.square(w, dtype=np.float32).reshape(w.shape[0], w.shape[1], -1).sum(-1)  # [O, C/g]
        per_out = np.einsum("goc,gc->go", s.reshape(g, -1, s.shape[1]), m.reshape(g, -1)).ravel()
    e2 = 2.0 * KAPPA_FP16 * float(np.mean(per_out))
    return e2 + (KAPPA_FP16 * float(np.mean(np.square(b, dtype=np.float32))) if b is not None else 0.0)


#: Ops whose fp16 error :func:`analyze` estimates (:func:`_weighted_sum_error_sq`) instead of
#: re-running: the heavy ones with a const weight (ResNet-50's convs were 40% of the analysis).
ESTIMATED = ("conv", "linear")


def _feeds_integer_results(g: Graph) -> set[Value]:
    """Float values upstream (through float ops) of an op with float inputs and an integer/bool
    result: the only values whose fp16 exactness :func:`choose_islands` can ask about."""
    producer = g.producers()
    todo = [v for n in g.nodes if not any(o.type.dtype in FLOAT for o in n.outputs)
            for v in n.inputs if v.type.dtype in FLOAT]
    seen: set[Value] = set()
    while todo:
        v = todo.pop()
        if v in seen:
            continue
        seen.add(v)
        p = producer.get(v)
        if p is not None and p.op != "const":
            todo.extend(i for i in p.inputs if i.type.dtype in FLOAT)
    return seen


def analyze(g: Graph, feeds_list: list[dict], half_consts: dict | None = None, outputs: list | None = None
            ) -> tuple[dict[Value, float], dict[Node, float], set[Value]]:
    """Max |x| per float value over all calibration feeds, and each op's local fp16 error: the
    op re-run on its fp16-rounded inputs (:func:`tlc.ops.run_kernel`; estimated for the
    :data:`ESTIMATED` ops with a const weight) against its fp32 result —
    for float results the RMS of the difference over the RMS of the larger of its result and the
    largest float result reading it (an error is judged against what it flows into), ``inf`` when
    an integer/bool result changes (e.g. a float->int cast of 2049); the worst over feeds. Also
    the float values fp16 cannot hold exactly among those integer results depend on
    (:func:`_feeds_integer_results`). Values come from the reference executor's observer.

    ``half_consts``: if given, filled with ``{const value: fp16 array}`` for the float constants
    the analysis rounded, so :func:`~tlc.passes.fp16_program.to_half` reuses them (converting
    ResNet-50's 25M weights to fp16 is a third of the analysis; measured in docs/benchmarks.md).
    Each float value is rounded once and each value's RMS computed once per feed.
    """
    from tlc.runtime import check_inputs, run_graph

    maxabs: dict[Value, float] = {}
    err: dict[Node, float] = {}
    inexact: set[Value] = set()
    readers = g.users()
    const_nodes = {n.out: n for n in g.nodes if n.op == "const"}
    check_exact = _feeds_integer_results(g)
    halves = half_consts if half_consts is not None else {}
    for feeds in feeds_list:
        vals: dict[Value, np.ndarray] = dict(zip(g.inputs, (check_inputs(g, feeds)[v.name] for v in g.inputs)))
        run_graph(g, feeds, observer=lambda n, outs: vals.update(zip(n.outputs, outs)))
        if outputs is not None:
            outputs.append({name: vals[v] for name, v in zip(g.output_names, g.outputs)})
        for v, a in vals.items():
            if v.type.dtype in FLOAT and a.size:
                m = max(float(a.max()), -float(a.min()))  # NaN propagates, so non-finite -> inf below
                maxabs[v] = max(maxabs.get(v, 0.0), m if np.isfinite(m) else float("inf"))
        rounded: dict[Value, np.ndarray] = {}
        rms: dict[Value, float] = {}

        def rms_of(v: Value) -> float:
            if v not in rms:
                rms[v] = _rms(vals[v])
            return rms[v]

        def scale_of_readers(n: Node) -> float:
            """RMS of the largest float result that reads ``n``'s output: an error that is
            small next to what it is added into (a 1e-6 layer scale on a residual) is harmless."""
            return max((rms_of(o) for r in readers.get(n.outputs[0], ()) for o in r.outputs
                        if o.type.dtype in FLOAT and o in vals), default=0.0)

        def r16(v: Value) -> np.ndarray:
            """``v``'s values rounded to fp16 and held in fp32 (once per value; run_kernel then
            computes exactly as on fp16 inputs, without converting again)."""
            if v not in rounded:
                a = vals[v]
                with np.errstate(all="ignore"):
                    if v in const_nodes:  # constants: the fp16 array itself, which to_half reuses
                        h = halves[v] if v in halves else to_float16(a)
                        halves[v] = h  # (constants never need the exactness check: the upstream walk stops at them)
                        rounded[v] = to_float32(h)
                    else:  # activations: rounded in float32 (round_fp16: 3x faster than two float16 casts)
                        rounded[v] = round_fp16(a)
                if v not in const_nodes and v in check_exact and not np.array_equal(rounded[v], a, equal_nan=True):
                    inexact.add(v)
            return rounded[v]

        for n in g.nodes:
            if n.op == "const" or fallback_only(n) or not any(v.type.dtype in FLOAT for v in n.inputs):
                continue
            if (n.op in ESTIMATED and all(v in const_nodes for v in n.inputs[1:])
                    and all(v.type.dtype in FLOAT for v in list(n.inputs) + list(n.outputs))):
                y = vals[n.outputs[0]]
                with np.errstate(all="ignore"):
                    e2 = _weighted_sum_error_sq(n, vals[n.inputs[0]], vals[n.inputs[1]],
                                                vals[n.inputs[2]] if len(n.inputs) > 2 else None)
                    e2 += _rms(np.subtract(r16(n.outputs[0]), y)) ** 2  # its own result's rounding, exactly
                e = float(np.sqrt(e2) / max(rms_of(n.outputs[0]), scale_of_readers(n), 1e-30))
                err[n] = max(err.get(n, 0.0), e if np.isfinite(e) else float("inf"))
                continue
            ins16 = [r16(v) if v.type.dtype in FLOAT else vals[v] for v in n.inputs]
            out_dt = [np.float32 if v.type.dtype in FLOAT else DTYPES[v.type.dtype] for v in n.outputs]
            o16 = run_kernel(get_op(n.op), n.attrs, ins16, out_dt)[0]
            if n.outputs[0].type.dtype in FLOAT:  # the fp16 result, held in float32 (tlc.ops.round_fp16)
                o16 = round_fp16(o16)
            ref = vals[n.outputs[0]]
            if ref.dtype.kind == "f":
                with np.errstate(all="ignore"):
                    diff = np.subtract(o16, ref, dtype=np.float32)
                    if not np.isfinite(diff).all():
                        diff = np.nan_to_num(diff, nan=1e30, posinf=1e30, neginf=1e30)
                    e = float(_rms(diff) / max(rms_of(n.outputs[0]), scale_of_readers(n), 1e-30))
            else:
                e = 0.0 if np.array_equal(o16, ref) else float("inf")
            err[n] = max(err.get(n, 0.0), e)
    return maxabs, err, inexact


def choose_islands(g: Graph, maxabs: dict[Value, float], err: dict[Node, float],
                   inexact: set[Value] = frozenset()) -> dict[str, str]:
    """``{node name: reason}`` for the ops the local rules (module docstring) keep in fp32: what
    :func:`propose_islands` requires and proposes, together (``precision::mixed`` run as a pass,
    with no closed loop to decide)."""
    required, proposed = propose_islands(g, maxabs, err, inexact)
    return {n.name: required.get(n.name) or proposed[n.name] for n in g.nodes
            if n.name in required or n.name in proposed}


def propose_islands(g: Graph, maxabs: dict[Value, float], err: dict[Node, float],
                    inexact: set[Value] = frozenset()) -> tuple[dict[str, str], dict[str, str]]:
    """``(required, proposed)``, each ``{node name: reason}``.

    *Required* are the ops fp16 cannot compute at all on the calibration data: a float input or
    output beyond fp16's largest value 65504 (inf in fp16), an integer/bool result that rounding
    its float inputs to fp16 changes (and, transitively, the float ops feeding it whose values
    fp16 cannot hold exactly: ``inexact``), and a graph output whose every value lies below
    fp16's smallest normal 2^-14 (its producer computes in fp32: the output tail). *Proposed*
    are the local rules' guesses, which the closed loop (:mod:`tlc.check.calibrate`) tries
    without and keeps only where the whole program needs them: values above :data:`SAFE_MAX`
    (one doubling from overflow) and fp16 errors over :data:`ERROR_FACTOR` times the graph's
    median and over :data:`ERROR_FLOOR`."""
    required: dict[str, str] = {}
    proposed: dict[str, str] = {}
    errs = [e for e in err.values() if 0 < e < float("inf")]
    median = float(np.median(errs)) if errs else 0.0
    producer = g.producers()
    tails = {producer[v].name: maxabs.get(v, 0.0) for v in g.outputs
             if v in producer and v.type.dtype in FLOAT and 0.0 < maxabs.get(v, 0.0) < FP16_NORMAL_MIN}
    for n in g.nodes:
        if n.op == "const":
            continue
        vals = [v for v in list(n.inputs) + list(n.outputs) if v.type.dtype in FLOAT]
        big = max((maxabs.get(v, 0.0) for v in vals), default=0.0)
        if big > FP16_MAX:
            required[n.name] = f"values reach |x| = {big:.3g} > 65504: inf in fp16"
        elif big > SAFE_MAX:
            proposed[n.name] = f"values reach |x| = {big:.3g} > {SAFE_MAX:g} (half of fp16's max 65504)"
        elif err.get(n) == float("inf") and not any(v.type.dtype in FLOAT for v in n.outputs):
            required[n.name] = "rounding its float inputs to fp16 changes its integer/bool result"
        elif n.name in tails:
            required[n.name] = (f"its output never exceeds |x| = {tails[n.name]:.3g}, below fp16's smallest normal "
                                f"6.1e-05: the output tail computes in fp32")
        elif n in err and err[n] > ERROR_FLOOR and err[n] > ERROR_FACTOR * median:
            proposed[n.name] = (f"fp16 error {err[n]:.2g} is {err[n] / max(median, 1e-30):.0f}x the graph's median "
                                f"{median:.2g}")
    todo = [n for n in g.nodes if required.get(n.name, "").startswith("rounding")]
    while todo:
        n = todo.pop()
        for v in n.inputs:
            p = producer.get(v)
            if p is not None and p.op != "const" and v in inexact and p.name not in required:
                required[p.name] = f"feeds the integer result of {n.name} with values fp16 cannot hold exactly"
                proposed.pop(p.name, None)
                todo.append(p)
    return required, proposed


def island_groups(g: Graph, names) -> list[tuple[frozenset, int, int]]:
    """The islands ``names`` as groups of ops joined by a value (one fp32 stretch of the program):
    ``(names, FLOPs, transitions)`` per group, most FLOPs first. FLOPs are the op table's
    estimates; transitions count the float values that cross between the group and fp16 ops or
    the graph's I/O (a cast each, and a device change when Core ML moves the stretch off the ANE)."""
    names = set(names)
    nodes = [n for n in g.nodes if n.name in names]
    parent = {n.name: n.name for n in nodes}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    producer = g.producers()
    for n in nodes:
        for v in n.inputs:
            p = producer.get(v)
            if p is not None and p.name in names:
                parent[find(p.name)] = find(n.name)
    groups: dict[str, list[Node]] = {}
    for n in nodes:
        groups.setdefault(find(n.name), []).append(n)
    users = g.users()
    outs = set(g.outputs)
    result = []
    for members in groups.values():
        inside = {n.name for n in members}
        flops = sum(node_flops(n) for n in members)
        cross = 0
        for n in members:
            cross += sum(1 for v in n.inputs if v.type.dtype in FLOAT and (producer.get(v) is None or (
                producer[v].op != "const" and producer[v].name not in inside)))
            cross += sum(1 for v in n.outputs if v.type.dtype in FLOAT and (
                v in outs or any(u.name not in inside for u in users.get(v, ()))))
        result.append((frozenset(inside), flops, cross))
    return sorted(result, key=lambda r: (-r[1], -r[2], sorted(r[0])))


@dataclass
class MixedPlan:
    """What :func:`plan_mixed` measured once, reused by every :func:`apply_plan` round: the graph
    (sentinels clamped, out-of-range regions rescaled), the analysis (:func:`analyze`) of that
    graph, the islands the local rules require and propose (:func:`propose_islands`), the fp16
    constant arrays made, the fp32 reference outputs per calibration feed (of the graph as
    traced), and the rescaled regions (``meta["tlc.rescaled"]``, :mod:`tlc.passes.rescale`)."""

    graph: Graph
    maxabs: dict
    err: dict
    inexact: set
    required: dict[str, str]
    proposed: dict[str, str]
    halves: dict = field(default_factory=dict)
    reference: list[dict] = field(default_factory=list)
    rescaled: list[dict] = field(default_factory=list)

    @property
    def islands(self) -> dict[str, str]:
        """Required and proposed islands together (the local rules alone)."""
        return {**self.proposed, **self.required}


def plan_mixed(g: Graph, feeds_list: list[dict], io_dtype: str = "fp32") -> MixedPlan:
    """Range analysis, rescaling (:func:`tlc.passes.rescale.rescale`: out-of-range regions moved
    into fp16's range by exact power-of-two scales; analysed again when it changes the graph) and
    the island proposals for ``precision::mixed`` on ``feeds_list`` (feed dicts by input name).
    Raises :class:`IRError` for an empty list."""
    if not feeds_list:
        raise IRError("precision::mixed needs at least one calibration input (tlc.build passes the example inputs)")
    g = clamp_sentinels(g)
    halves: dict = {}
    ref: list[dict] = []
    maxabs, err, inexact = analyze(g, list(feeds_list), halves, outputs=ref)
    scaled = rescale(g, maxabs, io_dtype)
    if scaled is not g:
        if any(r.get("exponent") for r in scaled.meta.get("tlc.rescaled", ())):
            halves = {}
            maxabs, err, inexact = analyze(scaled, list(feeds_list), halves)
        g = scaled
    required, proposed = propose_islands(g, maxabs, err, inexact)
    return MixedPlan(g, maxabs, err, inexact, required, proposed, halves, ref, list(g.meta.get("tlc.rescaled", ())))


def apply_plan(plan: MixedPlan, io_dtype: str = "fp32", islands: dict[str, str] | None = None) -> Graph:
    """The fp16 graph of ``plan`` with its required islands plus ``islands`` (``{node name:
    reason}``; None: the proposed ones, i.e. :attr:`MixedPlan.islands`); fp16 constants judged by
    :func:`~tlc.passes.fp16_program.plan_fp16_constants` (blockers become islands too).
    ``meta["tlc.islands"]`` and ``meta["tlc.fp16_constants"]`` record every decision."""
    islands = {**plan.required, **(plan.proposed if islands is None else islands)}
    fixes, notes, blockers = plan_fp16_constants(plan.graph, set(islands))
    islands.update(blockers)
    out = to_half(plan.graph, set(islands), io_dtype, plan.halves, fixes)
    return replace(out, meta={**dict(out.meta), "tlc.islands": islands, "tlc.fp16_constants": notes})


@register_pass("precision::mixed")
def mixed(g: Graph, *, calibration: list, io_dtype: str = "fp32") -> Graph:
    """fp16 everywhere range analysis allows on the ``calibration`` feeds (a list of
    ``{input name: array}``), after rescaling what can be; fp32 islands where the local rules
    require or propose them (reasons in ``meta["tlc.islands"]``); float inputs/outputs in
    ``io_dtype`` (``"fp32"``/``"fp16"``). Without the closed loop (``tlc.build`` runs
    :func:`tlc.check.calibrate.verified_mixed`, which uses the same plan and decides the proposals).

    Given:  %s = matmul(%q, %kt); %p = softmax(%s)      with |%s| reaching 1e5 on the calibration inputs
    Result: %q16 = cast(%q, fp16) ... %s, %p computed in fp32 (softmax needs the true scores), the rest in fp16
    """
    if not calibration:
        raise IRError("precision::mixed needs calibration inputs (at least the example inputs)")
    return apply_plan(plan_mixed(g, list(calibration), io_dtype), io_dtype)


@register_pass("precision::fp16")
def all_fp16(g: Graph, *, io_dtype: str = "fp32") -> Graph:
    """Every float op in fp16 (no range analysis); float inputs/outputs in ``io_dtype``.

    Given:  %y = linear(%x: fp32, W: fp32)
    Result: %x16 = cast(%x, fp16); %y16 = linear(%x16, W16); %y = cast(%y16, fp32)
    """
    g = clamp_sentinels(g)
    fixes, notes, blockers = plan_fp16_constants(g, set())
    for name, why in blockers.items():
        warnings.warn(f"precision='fp16': {name} stays fp16 although {why}; precision='mixed' keeps it in fp32",
                      stacklevel=2)
    out = to_half(g, set(), io_dtype, attr_fixes=fixes)
    return replace(out, meta={**dict(out.meta), "tlc.islands": {}, "tlc.fp16_constants": notes})


@register_pass("precision::fp32")
def all_fp32(g: Graph, *, io_dtype: str = "fp32") -> Graph:
    """Every op in fp32; float inputs/outputs in ``io_dtype``: with fp16 I/O, casts at the
    boundary (a no-op for fp32 I/O).

    Given:  %y = linear(%x, W)                                   with io_dtype="fp16"
    Result: %x32 = cast(%x: fp16, fp32); %y32 = linear(%x32, W); %y = cast(%y32, fp16)
    """
    if io_dtype == "fp32":
        return g
    out = to_half(g, {n.name for n in g.nodes}, io_dtype)
    return replace(out, meta={**dict(out.meta), "tlc.islands": {}})
