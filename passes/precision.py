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
3. An op stays fp32 (an *island*) when one of its float inputs or outputs exceeds
   :data:`SAFE_MAX` (half of fp16's 65504: a value may double once more before it overflows), or
   when its fp16 error (judged against the scale of what it flows into, see :func:`analyze`) is
   over :data:`ERROR_FACTOR` times the graph's median and over :data:`ERROR_FLOOR`. Each island
   carries its reason.

Before that, ``precision::clamp_sentinels`` replaces constants at or beyond +/-1e30 (attention
masks built from ``torch.finfo(torch.float32).min``, apple/coremltools PR #2669) with
+/-``MASK_FILL`` (30000): finite in fp16, and exp(-30000 - m) is exactly 0 in both precisions, so
the masked softmax is unchanged.

**The program that ships.** An fp16 op holds its float attributes in fp16 (MIL's iOS15/16
``layer_norm``/``batch_norm`` take ``epsilon`` in the input's dtype; ../shared/ane-rules.md), and
its constants are converted to fp16. :func:`plan_fp16_constants` judges those values:
an epsilon that is 0 in fp16 (a 1e-12 ``layer_norm_eps``; a zero-variance row then divides by
zero) is raised to 2^-24, fp16's smallest positive value (:func:`fp16_attr_fix`, error bound
there), a clamp bound beyond 65504 saturates to 65504, and any other attribute or constant
that over- or underflows keeps its op in fp32. Each change is listed in
``meta["tlc.fp16_constants"]`` (``{node name: note}``).

``precision::mixed`` run as a pass takes its calibration inputs from
its ``calibration`` option (a list of feed dicts); :func:`plan_mixed` +
:func:`apply_plan` are the same steps for callers that hold the inputs themselves and may add
islands (``tlc.calibrate``'s closed loop). The decisions are recorded in
``graph.meta["tlc.islands"]`` (``{node name: reason}``).
"""
from __future__ import annotations

import types
import warnings
from dataclasses import dataclass, field

import numpy as np

from tlc.errors import IRError
from tlc.ir import DTYPES, Graph, GraphBuilder, Node, TensorType, Value, dtype_of, replace
from tlc.ops import get_op, round_fp16, run_kernel, to_float16, to_float32
from tlc.ops.linalg import MASK_FILL

from . import register_pass

SAFE_MAX = 32768.0
ERROR_FACTOR = 50.0
ERROR_FLOOR = 1e-3
SENTINEL = 1e30
FLOAT = ("fp32", "fp16")
FP16_MAX = 65504.0
#: fp16's smallest positive (subnormal) number, 2^-24 = 5.96e-8: what an epsilon that is 0 in fp16
#: is raised to. Subnormal epsilons are what fp16 Core ML models ship with anyway: PyTorch's
#: default 1e-5 and the common 1e-6 are subnormal in fp16 (below 2^-14 = 6.1e-5), and fp16
#: layer norms with them run correctly on device (every coremltools fp16 conversion of a
#: transformer holds one); 0 is what breaks. The smallest normal 2^-14 was measured first: it
#: changes the DeiT class-token rows after attention (variance ~1e-4) by 0.83 absolute, rel-L2
#: 0.11 of the output, where 2^-24 gives 6.7e-4 (tests/test_precision_loop.py).
FP16_TINY = 2.0 ** -24


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


def _fallback_only(n: Node) -> bool:
    """Ops MIL cannot express (``emit_mil is None``: FFT, complex, data-dependent shapes, custom
    ops; tlc.ops.fallback) run in a fallback runtime in the precision the model wrote: they are
    never cast to fp16 nor analyzed (an fp16-rounded input may even change their output shape)."""
    return get_op(n.op).emit_mil is None


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
    the analysis rounded, so :func:`to_half` reuses them (converting ResNet-50's 25M weights to
    fp16 is a third of the analysis; measured in docs/benchmarks.md). Each float value is rounded
    once and each value's RMS computed once per feed.
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
            if n.op == "const" or _fallback_only(n) or not any(v.type.dtype in FLOAT for v in n.inputs):
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
    """``{node name: reason}`` for the ops that must stay fp32 (rules in the module docstring).
    An op whose integer/bool result fp16 would change also keeps in fp32 the float ops feeding
    it whose values fp16 cannot hold exactly (``inexact``), transitively."""
    islands: dict[str, str] = {}
    errs = [e for e in err.values() if 0 < e < float("inf")]
    median = float(np.median(errs)) if errs else 0.0
    for n in g.nodes:
        if n.op == "const":
            continue
        vals = [v for v in list(n.inputs) + list(n.outputs) if v.type.dtype in FLOAT]
        big = max((maxabs.get(v, 0.0) for v in vals), default=0.0)
        if big > SAFE_MAX:
            islands[n.name] = f"values reach |x| = {big:.3g} > {SAFE_MAX:g} (half of fp16's max 65504)"
        elif err.get(n) == float("inf") and not any(v.type.dtype in FLOAT for v in n.outputs):
            islands[n.name] = "rounding its float inputs to fp16 changes its integer/bool result"
        elif n in err and err[n] > ERROR_FLOOR and err[n] > ERROR_FACTOR * median:
            islands[n.name] = f"fp16 error {err[n]:.2g} is {err[n] / max(median, 1e-30):.0f}x the graph's median {median:.2g}"
    producer = g.producers()
    todo = [n for n in g.nodes if islands.get(n.name, "").startswith("rounding")]
    while todo:
        n = todo.pop()
        for v in n.inputs:
            p = producer.get(v)
            if p is not None and p.op != "const" and v in inexact and p.name not in islands:
                islands[p.name] = f"feeds the integer result of {n.name} with values fp16 cannot hold exactly"
                todo.append(p)
    return islands


def to_half(g: Graph, keep_fp32: set[str], io_dtype: str = "fp32", half_consts: dict | None = None,
            attr_fixes: dict[str, dict] | None = None) -> Graph:
    """Rewrite float values to fp16 except in nodes named in ``keep_fp32``; casts are inserted
    where the two meet, constants are converted (one copy per dtype, made where first read;
    ``half_consts`` maps const values to fp16 arrays already made, see :func:`analyze`).
    ``attr_fixes``: ``{node name: attrs}`` replacing the attributes of fp16 nodes
    (:func:`plan_fp16_constants`).

    ``io_dtype`` (``"fp32"`` or ``"fp16"``) is the dtype of the float graph inputs and outputs
    (the package's I/O, coremltools' ``ct.TensorType(dtype=np.float16)`` semantics): with
    ``"fp16"`` an fp16 first/last op needs no cast at the boundary. Raises :class:`IRError` for
    another ``io_dtype``."""
    if io_dtype not in FLOAT:
        raise IRError(f"io_dtype must be 'fp32' or 'fp16', got {io_dtype!r}")
    b = GraphBuilder(dict(g.meta))
    env: dict[Value, Value] = {}
    versions: dict[tuple[Value, str], Value] = {}
    consts: dict[Value, Node] = {}
    halves = half_consts or {}
    for v in g.inputs:
        b.add_input(v.name, TensorType(io_dtype, v.type.shape) if v.type.dtype in FLOAT else v.type)
        env[v] = b.inputs[-1]

    def get(v: Value, want: str | None) -> Value:
        if v in consts:
            c = consts[v]
            arr = c.attrs["val"]
            own = dtype_of(arr)
            dt = want if (want and own in FLOAT) else own
            if (v, dt) not in versions:
                name = c.name if dt == own else f"{c.name}_{dt}"
                with np.errstate(over="ignore"):
                    conv = (halves[v] if v in halves else to_float16(arr)) if dt == "fp16" else arr.astype(DTYPES[dt], copy=False)
                versions[(v, dt)] = b.add("const", [], {"val": conv}, name=name, loc=c.loc).outputs[0]
            return versions[(v, dt)]
        nv = env[v]
        if not want or nv.type.dtype not in FLOAT or nv.type.dtype == want:
            return nv
        if (v, want) not in versions:
            versions[(v, want)] = b.add("cast", [nv], {"dtype": want}, name=f"{v.name}_to_{want}").outputs[0]
        return versions[(v, want)]

    for n in g.nodes:
        if n.op == "const":
            consts[n.out] = n
            continue
        floats = any(v.type.dtype in FLOAT for v in list(n.inputs) + list(n.outputs))
        cd = ("fp32" if n.name in keep_fp32 else "fp16") if floats else None
        attrs = dict((attr_fixes or {}).get(n.name, n.attrs) if cd == "fp16" else n.attrs)
        if n.op == "cast" and attrs["dtype"] in FLOAT and cd:
            attrs["dtype"] = cd
        if _fallback_only(n):  # its inputs keep the dtypes the front-end gave them
            ins = [get(v, v.type.dtype if v.type.dtype in FLOAT else None) for v in n.inputs]
        else:
            ins = [get(v, cd) for v in n.inputs]
        new = b.add(n.op, ins, attrs, name=n.name, loc=n.loc)
        for old, nv in zip(n.outputs, new.outputs):
            env[old] = nv
    outs = [get(v, io_dtype if v.type.dtype in FLOAT else None) for v in g.outputs]
    return b.build(outs, g.output_names)

def fp16_attr_fix(n: Node) -> tuple[dict | None, str | None, str | None]:
    """Judge ``n``'s float scalar attributes as an fp16 program holds them (rounded to fp16).
    Returns ``(new attrs or None, note or None, blocker or None)``:

    * an ``"epsilon"`` attribute (the row's ``half_attrs``) that is 0 in fp16 (0 < eps < 2^-25,
      e.g. HF's ``layer_norm_eps=1e-12``) becomes :data:`FP16_TINY` = 2^-24, the smallest value
      that keeps ``rsqrt(var + eps)`` finite (rsqrt(2^-24) = 4096; rsqrt(0) is inf). Error bound:
      for a row of variance v, ``rsqrt(v + eps)`` changes by the factor
      sqrt((v + eps) / (v + 2^-24)), a relative change <= 2^-25 / (v + eps): below fp16's unit
      roundoff 2^-11 whenever v >= 2^-14, and a zero-variance row (x - mean = 0) gives the same
      output either way.
    * a ``"bound"`` attribute (a clamp limit) beyond +/-65504 saturates to +/-65504: every finite
      fp16 value lies inside it, so the clamp is unchanged.
    * any other float attribute that overflows (finite -> inf) or underflows (non-zero -> 0) in
      fp16 is a *blocker*: the op must stay fp32 (its reason).
    """
    kinds = get_op(n.op).half_attrs
    new, notes, blockers = {}, [], []
    for k, v in n.attrs.items():
        if isinstance(v, (bool, int, np.integer)) or not isinstance(v, (float, np.floating, np.ndarray)):
            continue
        if isinstance(v, np.ndarray) and (v.ndim != 0 or v.dtype.kind != "f"):
            continue
        x = float(v)
        with np.errstate(over="ignore"):
            h = float(np.float16(x))
        kind = kinds.get(k)
        if kind == "epsilon" and x > 0 and h == 0:
            new[k] = FP16_TINY
            notes.append(f"{k} {x:.3g} -> {FP16_TINY:.3g} ({x:.3g} is 0 in fp16 and rsqrt(var + 0) is inf on a "
                         f"zero-variance row; 2^-24 is fp16's smallest positive value)")
        elif kind == "bound" and np.isfinite(x) and abs(x) > FP16_MAX:
            new[k] = float(np.sign(x)) * FP16_MAX
            notes.append(f"{k} {x:.3g} -> {new[k]:.6g} (fp16's largest finite value: the clamp is unchanged)")
        elif np.isfinite(x) and not np.isfinite(h):
            blockers.append(f"attribute {k} = {x:.3g} overflows fp16 (max 65504)")
        elif x != 0 and h == 0:
            blockers.append(f"attribute {k} = {x:.3g} is 0 in fp16")
    attrs = {**dict(n.attrs), **new} if new else None
    return attrs, ("; ".join(notes) or None), ("; ".join(blockers) or None)


def plan_fp16_constants(g: Graph, keep_fp32: set[str]) -> tuple[dict[str, dict], dict[str, str], dict[str, str]]:
    """What the fp16 program would hold for every op not in ``keep_fp32``: ``(attr fixes
    {node: attrs}, notes {node: what changed}, blockers {node: why it must stay fp32})``.
    Attributes are judged by :func:`fp16_attr_fix`; a float constant read by an fp16 op is a
    blocker when it overflows fp16 (finite -> inf). A constant that underflows is judged by its
    effect instead: range analysis re-runs the op on the fp16-rounded constant, and the closed
    loop runs the program (a MobileNetV2 conv whose folded weights are all below 3e-8 is 0 in
    fp16 and harmless next to the residual it feeds; a rule on the constant alone moved it to
    fp32)."""
    producer = g.producers()
    fixes, notes, blockers = {}, {}, {}
    for n in g.nodes:
        if n.op == "const" or n.name in keep_fp32 or _fallback_only(n):
            continue
        if not any(v.type.dtype in FLOAT for v in list(n.inputs) + list(n.outputs)):
            continue
        attrs, note, block = fp16_attr_fix(n)
        why = [block] if block else []
        for v in n.inputs:
            p = producer.get(v)
            if p is None or p.op != "const" or v.type.dtype not in FLOAT:
                continue
            c = np.asarray(p.attrs["val"])
            if not c.size:
                continue
            if c.dtype.kind != "f" or c.dtype == np.float16:  # an fp16 constant cannot overflow fp16
                continue
            hi, lo = float(c.max()), float(c.min())  # a finite value from 65520 up rounds to inf in fp16
            over = hi >= 65520 or lo <= -65520
            if over and not (np.isfinite(hi) and np.isfinite(lo)):  # inf/NaN there already: only finite ones count
                fin = c[np.isfinite(c)]
                over = bool(fin.size) and float(np.abs(fin).max()) >= 65520
            if over:
                why.append(f"constant {p.name} (max |c| = {np.abs(c).max():.3g}) overflows fp16 (max 65504)")
        if why:
            blockers[n.name] = "; ".join(why)
        elif attrs is not None:
            fixes[n.name] = attrs
            notes[n.name] = note
    return fixes, notes, blockers


@dataclass
class MixedPlan:
    """What :func:`plan_mixed` measured once, reused by every :func:`apply_plan` round: the graph
    (sentinels clamped), the analysis (:func:`analyze`), the islands it chose, the fp16 constant
    arrays made, and the fp32 reference outputs per calibration feed."""

    graph: Graph
    maxabs: dict
    err: dict
    inexact: set
    islands: dict[str, str]
    halves: dict = field(default_factory=dict)
    reference: list[dict] = field(default_factory=list)


def plan_mixed(g: Graph, feeds_list: list[dict]) -> MixedPlan:
    """Range analysis and island choice for ``precision::mixed`` on ``feeds_list`` (feed dicts
    by input name). Raises :class:`IRError` for an empty list."""
    if not feeds_list:
        raise IRError("precision::mixed needs at least one calibration input (tlc.build passes the example inputs)")
    g = clamp_sentinels(g)
    halves: dict = {}
    ref: list[dict] = []
    maxabs, err, inexact = analyze(g, list(feeds_list), halves, outputs=ref)
    return MixedPlan(g, maxabs, err, inexact, choose_islands(g, maxabs, err, inexact), halves, ref)


def apply_plan(plan: MixedPlan, io_dtype: str = "fp32", extra: dict[str, str] | None = None) -> Graph:
    """The fp16 graph of ``plan`` with ``extra`` islands (``{node name: reason}``) added; fp16
    constants judged by :func:`plan_fp16_constants` (blockers become islands too).
    ``meta["tlc.islands"]`` and ``meta["tlc.fp16_constants"]`` record every decision."""
    islands = {**plan.islands, **(extra or {})}
    fixes, notes, blockers = plan_fp16_constants(plan.graph, set(islands))
    islands.update(blockers)
    out = to_half(plan.graph, set(islands), io_dtype, plan.halves, fixes)
    return replace(out, meta={**dict(out.meta), "tlc.islands": islands, "tlc.fp16_constants": notes})


@register_pass("precision::mixed")
def mixed(g: Graph, *, calibration: list, io_dtype: str = "fp32") -> Graph:
    """fp16 everywhere range analysis allows on the ``calibration`` feeds (a list of
    ``{input name: array}``); fp32 islands elsewhere (reasons in ``meta["tlc.islands"]``); float
    inputs/outputs in ``io_dtype`` (``"fp32"``/``"fp16"``). Without the closed loop
    (``tlc.build`` runs :func:`tlc.calibrate.verified_mixed`, which uses the same plan).

    Given:  %h = mul(%x, 1e3); %n = layer_norm(%h)      with |%h| reaching 1e5 on the calibration inputs
    Result: %x16 = cast(%x, fp16) ... %h, %n computed in fp32, the rest in fp16
    """
    if not calibration:
        raise IRError("precision::mixed needs calibration inputs (at least the example inputs)")
    return apply_plan(plan_mixed(g, list(calibration)), io_dtype)


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
